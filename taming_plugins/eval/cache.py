"""On-disk cache of FID reference statistics, keyed so a stale entry is never used.

Computing Inception statistics of a reference set is the slow part of FID. They are
cached per *key*: the data set's identity (:func:`dataset_identity`: the spec, the
dataset's settings, and a digest of its files' paths, sizes and modification times, or
of its in-memory images), the image resolution, the number of images and the
feature network's identity (its file hash and preprocessing). The file name is a hash
of the key and the full key is stored inside the file and compared on load, so a
changed folder, another resolution, count or network always misses.

Files are safetensors (``mu``, ``sigma`` in float64) with the key as JSON metadata,
written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from taming_core.errors import CheckpointError
from taming_core.io import load_tensors, safetensors_metadata, save_tensors

from .fid import FeatureStats

log = logging.getLogger(__name__)

#: Bump when the cached content or key layout changes; old entries then miss.
CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = Path("~/.cache/taming/fid")
ENV_CACHE_DIR = "TAMING_FID_CACHE"
#: Dataset attributes that change which images it yields.
_SETTING_ATTRS = ("size", "split", "seed", "length", "crop_scale", "random_crop", "flip", "rgb",
                  "names", "epoch", "crops_per_image", "held_out")
_KEY_DIGEST_CHARS = 24


def default_cache_dir() -> Path:
    """``$TAMING_FID_CACHE`` or ``~/.cache/taming/fid``."""
    return Path(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR).expanduser()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(Path(value).resolve())
    return repr(value)


def _files_digest(files: list[Path]) -> str:
    """Digest of relative order, path, size and mtime of every file."""
    digest = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        digest.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _array_digest(array: Any) -> str:
    data = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def dataset_identity(dataset: Any, spec: Optional[str] = None) -> Optional[dict[str, Any]]:
    """A JSON-ready identity of ``dataset``, or None when it cannot be identified.

    Recognised: a ``fingerprint()`` method (used as is), a ``files`` list (image
    folders: path/size/mtime digest), an ``images`` array (content digest), and the
    bundled photos (scikit-image version). Without any of these no cache is used.
    """
    custom = getattr(dataset, "fingerprint", None)
    if callable(custom):
        return {"spec": spec, "custom": _jsonable(custom())}
    fp: dict[str, Any] = {"spec": spec, "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
                          "length": len(dataset)}
    for attr in _SETTING_ATTRS:
        if hasattr(dataset, attr):
            fp[attr] = _jsonable(getattr(dataset, attr))
    files = getattr(dataset, "files", None)
    images = getattr(dataset, "images", None)
    if files is not None:
        fp["files"] = _files_digest(list(files))
    elif images is not None:
        fp["images"] = _array_digest(images)
    elif type(dataset).__name__ == "BundledPhotos":
        import skimage

        fp["scikit-image"] = skimage.__version__
    else:
        return None
    from taming_core import __version__

    fp["taming"] = __version__  # the transforms that turn files into tensors
    return fp


def cache_key(dataset_id: dict[str, Any], feature_id: dict[str, Any], num_images: int) -> dict[str, Any]:
    """Everything the cached statistics depend on."""
    return {"format": CACHE_FORMAT, "dataset": dataset_id, "features": feature_id,
            "num_images": int(num_images)}


def _canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


class ReferenceStatsCache:
    """Reference statistics on disk under ``directory`` (default :func:`default_cache_dir`).

    ``hits``/``misses`` count look-ups, for logs and tests.
    """

    def __init__(self, directory: Union[str, os.PathLike, None] = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def path_for(self, key: dict[str, Any]) -> Path:
        name = hashlib.sha256(_canonical(key).encode()).hexdigest()[:_KEY_DIGEST_CHARS]
        return self.directory / f"ref-{name}.safetensors"

    def load(self, key: dict[str, Any]) -> Optional[FeatureStats]:
        """The cached statistics for ``key``, or None (missing, other key, unreadable)."""
        path = self.path_for(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensors = load_tensors(path)  # raises CheckpointError for corrupt files
            meta = safetensors_metadata(path)
        except (CheckpointError, OSError, ValueError) as exc:
            log.warning("ignoring unreadable FID cache entry %s: %s", path, exc)
            self.misses += 1
            return None
        if meta.get("key") != _canonical(key) or set(tensors) != {"mu", "sigma"}:
            log.warning("ignoring FID cache entry %s: it was made for other data", path)
            self.misses += 1
            return None
        self.hits += 1
        log.info("using cached FID reference statistics %s", path)
        return FeatureStats.from_tensors(tensors, int(meta.get("count", key["num_images"])))

    def save(self, key: dict[str, Any], stats: FeatureStats) -> Path:
        """Store ``stats`` under ``key`` (atomic write); returns the file path."""
        path = self.path_for(key)
        save_tensors(path, stats.to_tensors(), metadata={"key": _canonical(key), "count": str(stats.count)})
        log.info("saved FID reference statistics to %s", path)
        return path

    def get_or_compute(self, key: Optional[dict[str, Any]],
                       compute: Callable[[], FeatureStats]) -> FeatureStats:
        """Cached statistics for ``key``, else ``compute()`` and store (key None: no caching)."""
        if key is not None:
            stats = self.load(key)
            if stats is not None:
                return stats
        stats = compute()
        if key is not None:
            self.save(key, stats)
        return stats

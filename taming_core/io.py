"""Safe, atomic reading and writing of weights and configs.

* Weights are stored as safetensors (no pickle); configs and metadata as JSON.
* Every write goes to a temporary file in the target directory, is flushed and
  fsynced, then renamed over the target: a crash leaves either the old or the new
  file, never a truncated one.
* :func:`torch_load_safe` is the only place that reads ``.pt``/``.ckpt`` files, with
  ``weights_only=True`` and an error message that says what the file was expected to be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch

from .errors import CheckpointError

_HASH_CHUNK = 1 << 20


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


PathLike = Union[str, os.PathLike]


#: Permissions of a new file before the umask is applied (what open() would use).
_DEFAULT_MODE = 0o666


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask is process-wide and not thread-safe


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _DEFAULT_MODE & ~_UMASK)  # mkstemp makes 0600 files
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _DEFAULT_MODE & ~_UMASK)  # again: writers that recreate the file (safetensors)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: PathLike) -> Any:
    """Read a JSON file with a clear error for missing or malformed files."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); expected a "
                              "JSON file") from None


def save_tensors(path: PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors as safetensors (shared storage is copied)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; corrupt or foreign files raise :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    try:
        return load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from None


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


#: First bytes of the two formats torch.save writes: a zip archive or a legacy pickle.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (the unpickler's, when present)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln:
            return ln.split("WeightsUnpickler error:", 1)[1].strip()
    return lines[0] if lines else type(exc).__name__


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def refused_pickle_message(path: PathLike, what: str, reason: str) -> str:
    """One line: which pickled object was refused, and how to convert a trusted file."""
    found = _GLOBAL.search(reason)
    refused = f"the pickled Python object {found.group(1)}" if found else \
        f"pickled content ({reason.rstrip('.')})"
    out = Path(str(path)).with_suffix(".tensors.ckpt")
    convert = (f"python -c \"import torch; c = torch.load('{path}', weights_only=False); "
               "torch.save(c.get('state_dict', c) if isinstance(c, dict) else c.state_dict(), "
               f"'{out}')\"")
    return (f"{path}: refused to load {refused} (expected {what}; only tensors and plain "
            f"containers are loaded, since unpickling objects can run code); if you trust the "
            f"file, convert it once to plain tensors with: {convert}")


def torch_load_safe(path: PathLike, what: str = "a PyTorch checkpoint", *,
                    safe_globals: Sequence[type] = ()) -> Any:
    """``torch.load(..., weights_only=True)`` with readable errors.

    Anything that is not a plain tensor/container file (a pickled class, a truncated
    zip, a text file) raises :class:`CheckpointError` naming ``what`` was expected.
    ``safe_globals`` names the few extra plain-data classes the caller allows (through
    ``torch.serialization.safe_globals``), e.g. ``argparse.Namespace`` for the ``args``
    entry of LlamaGen training checkpoints; nothing else is unpickled.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found (expected {what})")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(f"{p}: not {what} (the file is not in a format torch.save writes)")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(refused_pickle_message(p, what, _reason(exc))) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail anywhere in unpickling
        raise CheckpointError(f"{p}: corrupt or not {what} ({_reason(exc)})") from None

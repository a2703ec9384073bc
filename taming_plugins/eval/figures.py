"""The figures a demo picture is judged by: colours, border frames, sample FID.

:func:`picture_figures` takes held-out images, their reconstructions, samples and a
large (sliding-window) sample and returns:

* ``colour_err`` — mean per-channel colour shift of the reconstructions
  (:func:`~.metrics.channel_mean_error`, [0, 1] scale; 0 = colours kept);
* ``border_ratio`` — outer-ring / interior reconstruction error (1-pixel ring; a frame
  shows as a ratio above 1.5); ``worst_edge_ratio`` — the same for the worst single
  edge (a line along one edge);
* ``samples_edge_ratio`` / ``sliding_edge_ratio`` — ring / interior deviation of the
  samples from their own mean (:func:`~.metrics.edge_interior_ratio`; ring of one
  token, ``ring`` pixels): a lighter or darker frame around a sample shows above 1.5;
  ``samples_worst_edge_shift`` / ``sliding_worst_edge_shift`` — the largest shift of
  one edge band's mean brightness from the interior's, in interior standard deviations
  (:func:`~.metrics.worst_edge_shift`): a light line along one edge shows here;
* ``reference_edge_ratio`` / ``reference_worst_edge_shift`` — the same two statistics
  of the real held-out crops (same ring): photos' edges differ from their interiors by
  chance too (the max over four edges of a per-image shift is never 0), so a sample's
  figure means "frame" only when it is clearly above the real crops' level;
* ``sample_fid`` — FID of the samples against the held-out images (when the ``eval``
  extra is installed), with ``sample_fid_note`` saying how many images it rests on: at
  a few dozen images FID is strongly biased upwards, so compare it only at equal counts;
  ``train_crops_fid`` — the same for as many real *training* images, the yardstick at
  that count (samples near it are as close to the held-out photo as real crops are).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .metrics import (border_error_ratio, channel_mean_error, edge_interior_ratio, worst_edge_error_ratio,
                      worst_edge_shift)

#: FID below this many images is reported with the small-sample caveat.
FID_RELIABLE_COUNT = 2048


@torch.no_grad()
def picture_figures(inputs: Tensor, reconstructions: Tensor, samples: Tensor, sliding: Optional[Tensor], *,
                    ring: int, fid: bool = True, device: Any = "cpu", fid_count: Optional[int] = None,
                    train_crops: Optional[Tensor] = None) -> dict[str, Any]:
    """Figures of a demo run (see the module docstring); every tensor is float in [-1, 1].
    The FIDs use the first ``fid_count`` held-out images (default all; equal counts on both
    sides make the small-sample bias the same). ``train_crops`` (real training images) add
    ``train_crops_fid``, their FID against those held-out images: the level samples are
    compared with at that count."""
    x, y = inputs.float().cpu(), reconstructions.float().cpu()
    out: dict[str, Any] = {
        "colour_err": round(float(channel_mean_error(y, x).mean()), 4),
        "border_ratio": round(float(border_error_ratio(y, x, ring=1).mean()), 3),
        "worst_edge_ratio": round(float(worst_edge_error_ratio(y, x).mean()), 3),
        "samples_edge_ratio": round(float(edge_interior_ratio(samples.float().cpu(), ring=ring).mean()), 3),
    }
    out["samples_worst_edge_shift"] = round(float(worst_edge_shift(samples.float().cpu(), ring=ring).mean()), 3)
    out["reference_edge_ratio"] = round(float(edge_interior_ratio(x, ring=ring).mean()), 3)
    out["reference_worst_edge_shift"] = round(float(worst_edge_shift(x, ring=ring).mean()), 3)
    if sliding is not None:
        out["sliding_edge_ratio"] = round(float(edge_interior_ratio(sliding.float().cpu(), ring=ring).mean()), 3)
        out["sliding_worst_edge_shift"] = round(float(worst_edge_shift(sliding.float().cpu(), ring=ring).mean()), 3)
    if fid:
        out.update(sample_fid(x[:fid_count], samples.float().cpu(), device=device,
                              train_crops=None if train_crops is None else train_crops.float().cpu()))
    else:
        out["sample_fid_note"] = "not computed: disabled in the config"
    return out


def sample_fid(reference: Tensor, samples: Tensor, *, device: Any = "cpu",
               train_crops: Optional[Tensor] = None) -> dict[str, Any]:
    """``{"sample_fid": value, "sample_fid_note": ...}`` or ``{"sample_fid_note": why not}``;
    with ``train_crops`` also ``train_crops_fid`` (theirs against the same ``reference``)."""
    from .fid import DEFAULT_FEATURE_NET, FidFeatureExtractor, fid_available

    n_ref, n = reference.shape[0], samples.shape[0]
    if min(n_ref, n) < 2:
        return {"sample_fid_note": "not computed: FID needs at least 2 images on each side"}
    if reference.shape[-2:] != samples.shape[-2:]:
        return {"sample_fid_note": f"not computed: samples {tuple(samples.shape[-2:])} and references "
                                   f"{tuple(reference.shape[-2:])} differ in size"}
    ok, reason = fid_available()
    if not ok:
        return {"sample_fid_note": f"not computed: {reason}"}
    extractor = FidFeatureExtractor(DEFAULT_FEATURE_NET, device=device)
    from .fid import stats_of

    ref = stats_of(extractor, [reference], "ref")
    value = extractor.fid(ref, stats_of(extractor, [samples], "eval"))
    note = (f"{n} samples against {n_ref} held-out crops; FID from so few images is biased upwards "
            f"(it falls as the counts grow), so compare it only at the same counts"
            if min(n, n_ref) < FID_RELIABLE_COUNT else f"{n} samples against {n_ref} held-out images")
    out = {"sample_fid": round(float(value), 2), "sample_fid_note": note}
    if train_crops is not None and train_crops.shape[0] >= 2 and train_crops.shape[-2:] == reference.shape[-2:]:
        out["train_crops_fid"] = round(float(extractor.fid(ref, stats_of(extractor, [train_crops], "eval"))), 2)
        out["sample_fid_note"] += (f"; {train_crops.shape[0]} real training crops score train_crops_fid "
                                   "against the same held-out crops")
    return out

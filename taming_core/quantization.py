"""Public helpers for writing a :class:`~taming_core.Quantizer`: the input check, the
straight-through estimator, and the codebook usage and perplexity tracking that
:class:`~taming_core.QuantizerOutput` ``metrics`` must report.

* :func:`check_latent` -- the input check (float B×C×H×W, finite), so a NaN from a
  diverging encoder raises instead of silently corrupting a codebook.
* :func:`to_rows` / :func:`from_rows` -- B×C×H×W <-> (B·H·W)×C layout changes.
* :func:`straight_through` -- the straight-through estimator: value of ``z_q``,
  gradient of the identity to ``z``.
* :func:`code_counts`, :func:`usage_metrics` -- per-batch code histogram, ``usage``
  (fraction of codes used) and ``perplexity`` (exp of the entropy of code frequencies).
* :class:`UsageTracker` -- running usage over a window of training batches
  (``usage_window``); :func:`finalize_metrics` turns counts + tracker into the float
  metrics dict with one device sync.

A quantizer's ``forward`` typically ends with::

    counts = code_counts(indices, self.codebook_size)
    metrics = finalize_metrics(counts, self.tracker, self.training)
    return QuantizerOutput(straight_through(z, z_q), indices, loss, metrics)

These helpers know no implementation: they use only torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .validation import check_positive, check_tensor

__all__ = ["DEFAULT_USAGE_WINDOW", "UsageTracker", "check_latent", "code_counts", "finalize_metrics",
           "from_rows", "straight_through", "to_rows", "usage_metrics"]

#: Batches over which :class:`UsageTracker` reports the running usage by default.
DEFAULT_USAGE_WINDOW = 100
#: Marks a code that was never used in :class:`UsageTracker`.
_NEVER = -1


# --------------------------------------------------------------------------- layout
def check_latent(z: object, name: str, channels: Optional[int] = None) -> dict[str, int]:
    """Validate a quantizer input: float B×C×H×W (C = ``channels`` if given), all finite."""
    return check_tensor(z, name, dims=("B", channels if channels is not None else "C", "H", "W"),
                        dtype="float", finite=True)


def to_rows(z: Tensor) -> Tensor:
    """B×C×H×W -> (B·H·W)×C, rows in B, H, W order."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def from_rows(rows: Tensor, batch: int, height: int, width: int) -> Tensor:
    """(B·H·W)×C rows -> B×C×H×W (inverse of :func:`to_rows`)."""
    return rows.reshape(batch, height, width, rows.shape[-1]).permute(0, 3, 1, 2).contiguous()


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """Value of ``z_q``, gradient of the identity to ``z`` (Bengio et al. 2013)."""
    return z + (z_q - z).detach()


# --------------------------------------------------------------------------- usage
def code_counts(indices: Tensor, codebook_size: int) -> Tensor:
    """Float32 histogram (length ``codebook_size``) of the code ids in ``indices``."""
    return torch.bincount(indices.reshape(-1), minlength=codebook_size).to(torch.float32)


def usage_metrics(counts: Tensor) -> dict[str, Tensor]:
    """``usage`` (fraction of codes with a non-zero count) and ``perplexity``
    (exp of the entropy of the code frequencies) as 0-d tensors."""
    total = counts.sum().clamp_min(1.0)
    probs = counts / total
    entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum()
    return {"usage": (counts > 0).float().mean(), "perplexity": torch.exp(entropy)}


class UsageTracker(nn.Module):
    """Running codebook usage over the last ``window`` training batches.

    It remembers, per code, the last batch that used it; ``window_usage`` is the
    fraction of codes used in any of the last ``window`` batches. Its buffers are
    not saved in state dicts: monitoring state must not change checkpoint keys
    (original checkpoints load strictly).
    """

    def __init__(self, codebook_size: int, window: int = DEFAULT_USAGE_WINDOW) -> None:
        super().__init__()
        check_positive(codebook_size, "UsageTracker(codebook_size)")
        check_positive(window, "UsageTracker(window)")
        self.window = window
        self.register_buffer("last_used", torch.full((codebook_size,), _NEVER, dtype=torch.long),
                             persistent=False)
        self.register_buffer("batches", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def update(self, counts: Tensor) -> None:
        """Record one batch given its per-code counts."""
        self.last_used[counts > 0] = self.batches
        self.batches += 1

    def window_usage(self) -> Tensor:
        """Fraction of codes used within the last ``window`` recorded batches (0-d)."""
        oldest = self.batches - self.window
        return ((self.last_used >= oldest) & (self.last_used != _NEVER)).float().mean()

    def reset(self) -> None:
        """Forget all recorded batches."""
        self.last_used.fill_(_NEVER)
        self.batches.zero_()


def finalize_metrics(counts: Tensor, tracker: UsageTracker, training: bool,
                     extra: Optional[Mapping[str, Union[Tensor, float]]] = None) -> dict[str, float]:
    """Usage/perplexity (+ ``extra`` scalars) as floats with one device sync.

    The running window is advanced only in training mode, so evaluation passes do
    not distort the training statistics.
    """
    if training:
        tracker.update(counts)
    values = usage_metrics(counts)
    values["usage_window"] = tracker.window_usage()
    plain: dict[str, float] = {}
    for key, value in (extra or {}).items():
        if isinstance(value, Tensor):
            values[key] = value
        else:
            plain[key] = float(value)
    names = list(values)
    floats = torch.stack([v.detach().float().reshape(()).to(counts.device)
                          for v in values.values()]).tolist()
    return {**dict(zip(names, floats)), **plain}

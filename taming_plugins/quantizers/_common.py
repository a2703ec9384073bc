"""Helpers shared by the built-in quantizers (private: not auto-imported as a plugin).

* :func:`check_latent` - the public input check (float B×C×H×W, finite), so a NaN
  from a diverging encoder raises instead of silently corrupting a codebook.
* :func:`to_rows` / :func:`from_rows` - B×C×H×W <-> (B·H·W)×C layout changes.
* :func:`straight_through` - the straight-through estimator.
* :func:`code_counts`, :func:`usage_metrics` and :class:`UsageTracker` - per-batch
  usage/perplexity and a running usage over a window of batches.
* :func:`all_reduce_sum_` / :func:`broadcast_` - no-ops unless ``torch.distributed``
  is initialised, so the same code runs in one process and under DDP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from taming_core.errors import ValidationError
from taming_core.validation import check_positive, check_tensor

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


def log2_int(value: int, name: str) -> int:
    """Exact base-2 logarithm of a power of two, or a clear error."""
    check_positive(value, name)
    bits = int(value).bit_length() - 1
    if 1 << bits != value:
        raise ValidationError(f"{name}: expected a power of two, got {value}")
    return bits


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


# --------------------------------------------------------------------------- distributed
def distributed_active() -> bool:
    """True when ``torch.distributed`` is available and initialised (world size > 1 or not)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` in place over all processes (no-op in a single process)."""
    if distributed_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s copy (no-op in one process)."""
    if distributed_active():
        dist.broadcast(tensor, src=src)
    return tensor


def is_rank_zero() -> bool:
    """True in a single process and on rank 0."""
    return not distributed_active() or dist.get_rank() == 0


# --------------------------------------------------------------------------- projections
class ChannelProjection(nn.Module):
    """Optional 1×1 projections between the latent width and the code width.

    Identity in both directions when the widths agree, so a quantizer without a
    projection keeps exactly its original parameter names.
    """

    def __init__(self, dim: int, code_dim: int) -> None:
        super().__init__()
        check_positive(dim, "dim")
        check_positive(code_dim, "code_dim")
        self.enabled = dim != code_dim
        self.project_in: nn.Module = nn.Linear(dim, code_dim) if self.enabled else nn.Identity()
        self.project_out: nn.Module = nn.Linear(code_dim, dim) if self.enabled else nn.Identity()

    def reset_parameters(self) -> None:
        """Re-draw the projection weights (no-op without projections)."""
        for layer in (self.project_in, self.project_out):
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

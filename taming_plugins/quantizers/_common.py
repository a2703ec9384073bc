"""Helpers shared by the built-in quantizers (private: not auto-imported as a plugin).

The input check, straight-through estimator and usage/perplexity tracking are public
API in :mod:`taming_core.quantization` (plugin quantizers use them too); they are
re-exported here for the built-in modules.

* :func:`log2_int` - exact base-2 logarithm of a power of two.
* :class:`ChannelProjection` - optional 1×1 projections between latent and code width.
* :func:`all_reduce_sum_` / :func:`broadcast_` - no-ops unless ``torch.distributed``
  is initialised, so the same code runs in one process and under DDP.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn

from taming_core.errors import ValidationError
from taming_core.quantization import (DEFAULT_USAGE_WINDOW, UsageTracker,  # noqa: F401
                                      check_latent, code_counts, finalize_metrics, from_rows,
                                      straight_through, to_rows, usage_metrics)
from taming_core.validation import check_positive


# --------------------------------------------------------------------------- sizes
def log2_int(value: int, name: str) -> int:
    """Exact base-2 logarithm of a power of two, or a clear error."""
    check_positive(value, name)
    bits = int(value).bit_length() - 1
    if 1 << bits != value:
        raise ValidationError(f"{name}: expected a power of two, got {value}")
    return bits


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

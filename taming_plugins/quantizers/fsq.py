"""``fsq``: finite scalar quantization (Mentzer et al. 2023, "Finite Scalar
Quantization: VQ-VAE Made Simple") - each channel is bounded and rounded to one of
a few levels; the implicit codebook is the grid of all level combinations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from taming_core import Quantizer, QuantizerOutput, register
from taming_core.validation import check_int_sequence, check_positive, check_tensor

from ._common import (DEFAULT_USAGE_WINDOW, ChannelProjection, UsageTracker, check_latent,
                      code_counts, finalize_metrics, from_rows, straight_through, to_rows)

#: The paper's recommendation for a ~2^10 codebook.
DEFAULT_LEVELS = (8, 5, 5, 5)
#: Shrinks the tanh bound slightly so that rounding never reaches a level outside the grid.
BOUND_EPS = 1e-3
MIN_LEVELS = 2


@register("quantizer", "fsq")
class FSQuantizer(Quantizer):
    """Finite scalar quantizer with ``prod(levels)`` implicit codes and no auxiliary loss.

    Channel ``i`` is squashed by ``tanh`` into ``levels[i]`` integer bins, rounded with a
    straight-through gradient and rescaled to [-1, 1]. When ``dim != len(levels)``,
    1×1 projections map ``dim -> len(levels) -> dim`` around the quantizer. Indices
    are the mixed-radix numbers of the per-channel bins (channel 0 is the least
    significant digit), a bijection with the grid of codes.
    """

    def __init__(self, levels: Sequence[int] = DEFAULT_LEVELS, dim: Optional[int] = None, *,
                 usage_window: int = DEFAULT_USAGE_WINDOW) -> None:
        super().__init__()
        levels = check_int_sequence(levels, "fsq(levels)", minimum=MIN_LEVELS, nonempty=True)
        self.levels = levels
        self.dim = len(levels) if dim is None else dim
        check_positive(self.dim, "fsq(dim)")
        self._codebook_size = math.prod(levels)
        self.projection = ChannelProjection(self.dim, len(levels))
        level_t = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("_levels", level_t, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_half_width", torch.floor(level_t / 2), persistent=False)
        self.usage_tracker = UsageTracker(self._codebook_size, usage_window)

    def reset_parameters(self) -> None:
        """Re-draw the projections (the grid itself has no parameters)."""
        self.projection.reset_parameters()

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    def bound(self, rows: Tensor) -> Tensor:
        """Squash rows (N×len(levels)) so that rounding gives exactly ``levels[i]`` values."""
        half = (self._levels - 1) * (1 + BOUND_EPS) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(rows + shift) * half - offset

    def quantize_rows(self, rows: Tensor) -> Tensor:
        """Rows -> codes in [-1, 1] (straight-through rounding)."""
        bounded = self.bound(rows)
        return straight_through(bounded, torch.round(bounded)) / self._half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Codes N×len(levels) on the grid -> Long N ids."""
        digits = torch.round(codes * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Long ids (any shape) -> codes (same shape + len(levels)) in [-1, 1]."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels.long()
        return (digits.float() - self._half_width) / self._half_width

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize float B×dim×H×W ``z``; indices Long B×H×W; zero loss."""
        check_latent(z, "fsq(z)", self.dim)
        batch, _, height, width = z.shape
        codes = self.quantize_rows(self.projection.project_in(to_rows(z)).float())
        indices = self.codes_to_indices(codes.detach()).reshape(batch, height, width)
        z_q = from_rows(self.projection.project_out(codes.to(z.dtype)), batch, height, width)
        metrics = finalize_metrics(code_counts(indices, self._codebook_size), self.usage_tracker,
                                   self.training)
        return QuantizerOutput(z_q=z_q, indices=indices, loss=z.new_zeros(()), metrics=metrics)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Long B×H×W ids -> B×dim×H×W latent."""
        check_tensor(indices, "fsq.decode_indices(indices)", dims=("B", "H", "W"), dtype="long",
                     value_range=(0, self._codebook_size - 1))
        batch, height, width = indices.shape
        rows = self.projection.project_out(self.indices_to_codes(indices.reshape(-1)))
        return from_rows(rows, batch, height, width)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, codebook_size={self._codebook_size}"

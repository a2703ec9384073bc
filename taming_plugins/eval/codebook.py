"""Codebook statistics over a data set: usage %, perplexity and a per-code histogram.

The per-batch ``usage``/``perplexity`` a quantizer logs during training only see one
batch; these statistics accumulate code counts over every evaluated image, which is
what "codebook usage" in a results table means.
"""

from __future__ import annotations

import os
from typing import Any, Union

import torch
from torch import Tensor

from taming_core.errors import ValidationError
from taming_core.validation import check_positive, check_tensor

#: Size of the histogram figure in inches and its resolution.
HISTOGRAM_FIGSIZE = (8.0, 3.0)
HISTOGRAM_DPI = 100


class CodebookStats:
    """Accumulates how often each code id is chosen.

    Args:
        codebook_size: number of ids per level (ids lie in ``[0, codebook_size)``).
        num_levels: ids per latent position (1, or L for multi-level quantizers whose
            indices are B×h×w×L); statistics are computed per level.
    """

    def __init__(self, codebook_size: int, num_levels: int = 1) -> None:
        check_positive(codebook_size, "CodebookStats(codebook_size)")
        check_positive(num_levels, "CodebookStats(num_levels)")
        self.codebook_size, self.num_levels = codebook_size, num_levels
        self.counts = torch.zeros(num_levels, codebook_size, dtype=torch.long)

    def update(self, indices: Tensor) -> None:
        """Count Long ids of shape B×h×w (one level) or B×h×w×L."""
        if self.num_levels == 1:
            check_tensor(indices, "CodebookStats.update(indices)", dims=("B", "h", "w"), dtype="integer")
            per_level = indices.reshape(1, -1)
        else:
            check_tensor(indices, "CodebookStats.update(indices)", dims=("B", "h", "w", self.num_levels),
                         dtype="integer")
            per_level = indices.reshape(-1, self.num_levels).t()
        per_level = per_level.detach().long().cpu()
        lo, hi = int(per_level.min()), int(per_level.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValidationError(f"CodebookStats.update(indices): ids must lie in "
                                  f"[0, {self.codebook_size}), got min {lo}, max {hi}")
        for level, ids in enumerate(per_level):
            self.counts[level] += torch.bincount(ids, minlength=self.codebook_size)

    @property
    def total(self) -> int:
        """Number of ids counted per level."""
        return int(self.counts[0].sum())

    def usage(self) -> float:
        """Fraction of codes chosen at least once (mean over levels), in [0, 1]."""
        return float((self.counts > 0).double().mean())

    def perplexity(self) -> float:
        """exp(entropy) of the code frequencies (mean over levels); K for uniform use of K codes."""
        probs = self.counts.double() / self.counts.sum(dim=1, keepdim=True).clamp_min(1)
        entropy = -(probs * probs.clamp_min(torch.finfo(torch.float64).tiny).log()).sum(dim=1)
        return float(entropy.exp().mean())

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics: usage, perplexity, dead codes and per-level values."""
        used = (self.counts > 0).sum(dim=1)
        return {
            "usage": self.usage(),
            "perplexity": self.perplexity(),
            "codebook_size": self.codebook_size,
            "num_levels": self.num_levels,
            "codes_used": used.tolist(),
            "dead_codes": (self.codebook_size - used).tolist(),
            "tokens_counted": self.total,
        }

    def save_histogram(self, path: Union[str, os.PathLike], title: str = "code usage") -> None:
        """Write a PNG bar plot of per-code counts (one panel per level)."""
        import matplotlib

        matplotlib.use("Agg")  # headless: no display needed
        import matplotlib.pyplot as plt

        from taming_core.io import atomic_path

        width, height = HISTOGRAM_FIGSIZE
        fig, axes = plt.subplots(self.num_levels, 1, squeeze=False,
                                 figsize=(width, height * self.num_levels))
        ids = torch.arange(self.codebook_size).numpy()
        for level, ax in enumerate(axes[:, 0]):
            ax.bar(ids, self.counts[level].numpy(), width=1.0)
            suffix = f" (level {level})" if self.num_levels > 1 else ""
            ax.set_title(f"{title}{suffix}: {int((self.counts[level] > 0).sum())}/"
                         f"{self.codebook_size} codes used")
            ax.set_xlabel("code id")
            ax.set_ylabel("count")
            ax.set_xlim(-0.5, self.codebook_size - 0.5)
        fig.tight_layout()
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=HISTOGRAM_DPI)
        finally:
            plt.close(fig)

"""``quantizer/frozen_random``: nearest code in a fixed random Gaussian codebook."""

import torch

import taming_core
from taming_core.ops import nearest_code
from taming_core.quantization import (UsageTracker, check_latent, code_counts, finalize_metrics,
                                      from_rows, straight_through, to_rows)


@taming_core.register("quantizer", "frozen_random")
class FrozenRandomQuantizer(taming_core.Quantizer):
    """Nearest code in a fixed random Gaussian codebook (no learned codes, no loss)."""

    def __init__(self, codebook_size: int = 256, dim: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("codebook", torch.randn(codebook_size, dim, generator=g))
        self.tracker = UsageTracker(codebook_size)  # running usage, not saved in checkpoints

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def forward(self, z):
        check_latent(z, "frozen_random(z)", channels=self.codebook.shape[1])
        b, _, h, w = z.shape
        idx = nearest_code(to_rows(z).detach(), self.codebook)
        z_q = from_rows(self.codebook[idx], b, h, w)
        metrics = finalize_metrics(code_counts(idx, self.codebook_size), self.tracker, self.training)
        return taming_core.QuantizerOutput(straight_through(z, z_q), idx.view(b, h, w),
                                           z.new_zeros(()), metrics)

    def decode_indices(self, indices):
        return self.codebook[indices].permute(0, 3, 1, 2)

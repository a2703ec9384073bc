"""A third-party taming plugin: a quantizer with a frozen random codebook.

Importing this module registers ``quantizer/frozen_random``; the ``taming.plugins``
entry point in pyproject.toml makes taming import it automatically.
"""

import torch

import taming_core
from taming_core.ops import nearest_code
from taming_core.validation import check_tensor


@taming_core.register("quantizer", "frozen_random")
class FrozenRandomQuantizer(taming_core.Quantizer):
    """Nearest code in a fixed random Gaussian codebook (no learned codes, no loss)."""

    def __init__(self, codebook_size: int = 256, dim: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("codebook", torch.randn(codebook_size, dim, generator=g))

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def forward(self, z):
        check_tensor(z, "frozen_random(z)", dims=("B", self.codebook.shape[1], "H", "W"),
                     dtype="float", finite=True)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = nearest_code(flat.detach(), self.codebook)
        z_q = self.decode_indices(idx.view(z.shape[0], *z.shape[2:]))
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        p = counts / counts.sum()
        metrics = {"usage": float((counts > 0).float().mean()),
                   "perplexity": float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))}
        return taming_core.QuantizerOutput(z + (z_q - z).detach(), idx.view(z.shape[0], *z.shape[2:]),
                                           z.new_zeros(()), metrics)

    def decode_indices(self, indices):
        return self.codebook[indices].permute(0, 3, 1, 2)

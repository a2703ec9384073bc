"""Activation normalisation (Glow's ActNorm), as used by the original PatchGAN option.

Per-channel affine ``scale * (x + loc)``. The first forward pass in training mode sets
``loc = -mean`` and ``scale = 1 / (std + eps)`` from the batch, so the output starts with
zero mean and unit variance per channel; the ``initialized`` buffer (uint8, as in the
original checkpoints) records that this happened and travels with the state dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Added to the batch standard deviation in the data-dependent initialisation.
ACTNORM_EPS = 1e-6


class ActNorm(nn.Module):
    """Per-channel affine normalisation with data-dependent initialisation.

    Parameters ``loc`` and ``scale`` have shape 1×C×1×1 (the original layout).
    Accepts B×C×H×W or B×C input.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc``/``scale`` from the per-channel mean and std of ``x`` (B×C×H×W)."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.loc.copy_(-flat.mean(dim=1).view_as(self.loc))
        self.scale.copy_((1.0 / (flat.std(dim=1) + ACTNORM_EPS)).view_as(self.scale))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        squeeze = x.dim() == 2
        if squeeze:
            x = x[:, :, None, None]
        if self.training and int(self.initialized.item()) == 0:
            self.initialize(x)
        h = self.scale * (x + self.loc)
        return h.flatten(1) if squeeze else h

    def extra_repr(self) -> str:
        return f"{self.num_features}"

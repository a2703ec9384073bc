"""Adversarial objectives on discriminator logits (registered as kind ``gan``).

``hinge`` and ``vanilla`` follow the original taming-transformers code exactly: the
discriminator loss is the average of the real and fake terms, and the generator loss is
``-mean(logits_fake)`` for both (the original uses that generator term whatever
``disc_loss`` says). ``non_saturating`` is the classic non-saturating GAN: the vanilla
discriminator loss with the generator minimising ``softplus(-logits_fake)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from taming_core.interfaces import GANObjective
from taming_core.registry import register

#: The discriminator loss averages its real and fake terms (as in the original).
_HALF = 0.5


class _MeanLogitGenerator(GANObjective):
    """Generator term of the original code: ``-mean(logits_fake)``."""

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return -torch.mean(logits_fake)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register("gan", "hinge")
class HingeLoss(_MeanLogitGenerator):
    """Hinge GAN loss: D minimises ½(mean relu(1-real) + mean relu(1+fake))."""

    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        return _HALF * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


@register("gan", "vanilla")
class VanillaLoss(_MeanLogitGenerator):
    """Vanilla (logistic) GAN loss: D minimises ½(mean softplus(-real) + mean softplus(fake))."""

    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        return _HALF * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


@register("gan", "non_saturating")
class NonSaturatingLoss(VanillaLoss):
    """Non-saturating GAN loss: vanilla D loss; G minimises mean softplus(-fake)."""

    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        return torch.mean(F.softplus(-logits_fake))

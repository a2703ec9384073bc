"""``gumbel``: the original GumbelQuantize (Gumbel-softmax over a 1×1-conv's logits)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core import Quantizer, QuantizerOutput, register
from taming_core.validation import check_choice, check_positive, check_tensor

from ._common import (DEFAULT_USAGE_WINDOW, UsageTracker, check_latent, code_counts, finalize_metrics,
                      from_rows, to_rows)

#: Weight of the KL-to-uniform loss in the original GumbelQuantize.
DEFAULT_KL_WEIGHT = 5e-4
#: Keeps ``log(q·K)`` finite for zero probabilities (same constant as the original).
KL_EPS = 1e-10
ANNEAL_KINDS = ("constant", "linear", "exponential", "cosine")


@dataclass(frozen=True)
class TemperatureSchedule:
    """Gumbel-softmax temperature from ``start`` to ``end`` over ``steps`` training steps.

    ``kind`` is ``constant`` (always ``start``), ``linear``, ``exponential``
    (geometric interpolation) or ``cosine``; after ``steps`` it stays at ``end``.
    """

    start: float = 1.0
    end: float = 1.0
    steps: int = 0
    kind: str = "constant"

    def __post_init__(self) -> None:
        check_positive(self.start, "temperature", integer=False)
        check_positive(self.end, "min_temperature", integer=False)
        check_positive(self.steps, "anneal_steps", allow_zero=True)
        check_choice(self.kind, "anneal", ANNEAL_KINDS)

    def __call__(self, step: int) -> float:
        if self.kind == "constant" or self.steps == 0:
            return self.start if self.kind == "constant" else self.end
        t = min(max(step, 0), self.steps) / self.steps
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        if self.kind == "exponential":
            return self.start * (self.end / self.start) ** t
        return self.end + 0.5 * (self.start - self.end) * (1.0 + math.cos(math.pi * t))


@register("quantizer", "gumbel")
class GumbelQuantizer(Quantizer):
    """Gumbel-softmax quantizer with the original GumbelQuantize semantics.

    A 1×1 conv ``proj`` maps the input (``in_channels``) to K logits; in training a
    (hard, straight-through if ``straight_through``) Gumbel-softmax sample selects a
    mix of the codes ``embed`` (K×dim). The loss is ``kl_weight·KL(q || uniform)``
    with ``q = softmax(logits)``. In eval the code is the argmax of the logits: a
    deterministic tokenizer (the original still sampled Gumbel noise in eval).

    Temperature: ``temperature`` anneals to ``min_temperature`` over ``anneal_steps``
    training steps following ``anneal`` (see :class:`TemperatureSchedule`). The step
    advances by one per training forward; trainers resuming from a checkpoint call
    :meth:`set_step` (the step is not stored in the state dict, which keeps the
    original ``quantize.proj.*`` / ``quantize.embed.weight`` keys exact).

    Args:
        codebook_size: number of codes K.
        dim: width of the codes, i.e. channels of ``z_q``.
        in_channels: channels of the input ``z``.
    """

    def __init__(self, codebook_size: int, dim: int, in_channels: int, *,
                 straight_through: bool = True, temperature: float = 1.0,
                 min_temperature: Optional[float] = None, anneal_steps: int = 0,
                 anneal: str = "exponential", kl_weight: float = DEFAULT_KL_WEIGHT,
                 usage_window: int = DEFAULT_USAGE_WINDOW) -> None:
        super().__init__()
        check_positive(codebook_size, "gumbel(codebook_size)")
        check_positive(dim, "gumbel(dim)")
        check_positive(in_channels, "gumbel(in_channels)")
        check_positive(kl_weight, "gumbel(kl_weight)", integer=False, allow_zero=True)
        kind = anneal if anneal_steps > 0 and min_temperature is not None else "constant"
        self.schedule = TemperatureSchedule(
            start=float(temperature),
            end=float(temperature if min_temperature is None else min_temperature),
            steps=int(anneal_steps), kind=kind)
        self._codebook_size, self.dim, self.in_channels = codebook_size, dim, in_channels
        self.straight_through, self.kl_weight = bool(straight_through), float(kl_weight)
        self.step = 0
        self.proj = nn.Conv2d(in_channels, codebook_size, kernel_size=1)
        self.embed = nn.Embedding(codebook_size, dim)
        self.usage_tracker = UsageTracker(codebook_size, usage_window)

    def reset_parameters(self) -> None:
        """Re-draw ``proj`` and ``embed`` with their PyTorch default initialisations."""
        self.proj.reset_parameters()
        self.embed.reset_parameters()

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    @property
    def temperature(self) -> float:
        """The temperature the next training forward uses."""
        return self.schedule(self.step)

    def set_step(self, step: int) -> None:
        """Set the annealing step (e.g. the global step when resuming training)."""
        check_positive(step, "gumbel.set_step(step)", allow_zero=True)
        self.step = int(step)

    def kl_to_uniform(self, logits: Tensor) -> Tensor:
        """Mean over rows of ``KL(softmax(logits) || uniform)`` for N×K logits (before ``kl_weight``)."""
        probs = F.softmax(logits, dim=1)
        return torch.sum(probs * torch.log(probs * self._codebook_size + KL_EPS), dim=1).mean()

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Float B×in_channels×H×W -> ``z_q`` B×dim×H×W, indices Long B×H×W."""
        check_latent(z, "gumbel(z)", self.in_channels)
        batch, _, height, width = z.shape
        logits = to_rows(self.proj(z))  # (B·H·W)×K: softmax over a contiguous last dim
        temperature = self.temperature
        if self.training:
            weights = F.gumbel_softmax(logits, tau=temperature, dim=1, hard=self.straight_through)
            self.step += 1
        else:
            weights = F.one_hot(logits.argmax(1), self._codebook_size).to(logits.dtype)
        indices = weights.argmax(1).reshape(batch, height, width)
        z_q = from_rows(weights @ self.embed.weight, batch, height, width)
        kl = self.kl_to_uniform(logits)
        metrics = finalize_metrics(code_counts(indices, self._codebook_size), self.usage_tracker,
                                   self.training, {"kl": kl, "temperature": temperature})
        return QuantizerOutput(z_q=z_q, indices=indices, loss=self.kl_weight * kl, metrics=metrics)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Long B×H×W code ids -> B×dim×H×W latent (rows of ``embed``)."""
        check_tensor(indices, "gumbel.decode_indices(indices)", dims=("B", "H", "W"), dtype="long",
                     value_range=(0, self._codebook_size - 1))
        return self.embed(indices).permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (f"codebook_size={self._codebook_size}, dim={self.dim}, in_channels={self.in_channels}, "
                f"straight_through={self.straight_through}, kl_weight={self.kl_weight}, "
                f"schedule={self.schedule}")

"""``lfq``: lookup-free quantization (Yu et al. 2023, MAGVIT-v2, "Language Model Beats
Diffusion"): every channel is quantized to its sign, so the implicit codebook is
{-1, +1}^bits and the index is the binary number of the signs."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from taming_core import Quantizer, QuantizerOutput, ValidationError, register
from taming_core.validation import check_positive, check_tensor

from ._common import (DEFAULT_USAGE_WINDOW, ChannelProjection, UsageTracker, check_latent,
                      code_counts, finalize_metrics, from_rows, log2_int, straight_through,
                      to_rows)

DEFAULT_ENTROPY_WEIGHT = 0.1
DEFAULT_COMMITMENT_WEIGHT = 0.25
#: Weight of the codebook (batch) entropy relative to the per-sample entropy.
DEFAULT_DIVERSITY_GAMMA = 1.0
#: Temperature of the soft assignments in the entropy loss.
DEFAULT_ENTROPY_TEMPERATURE = 0.1
#: Up to this many codes the batch entropy is computed exactly over the whole codebook;
#: above it, from per-bit marginals (an upper bound that needs no N×2^bits matrix).
EXACT_ENTROPY_MAX_CODES = 1024


def _entropy(probs: Tensor, dim: int = -1) -> Tensor:
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(dim)


def _bernoulli_entropy(p: Tensor) -> Tensor:
    return _entropy(torch.stack([p, 1.0 - p], dim=-1))


@register("quantizer", "lfq")
class LookupFreeQuantizer(Quantizer):
    """Sign quantizer with ``2**bits`` implicit codes and the MAGVIT-v2 entropy loss.

    Give ``codebook_bits`` or ``codebook_size`` (a power of two). When ``dim`` differs
    from the number of bits, 1×1 projections map ``dim -> bits -> dim``. Codes are
    ±1 per bit; index bit ``i`` (weight ``2**i``) is set when channel ``i`` is positive.

    Loss: ``entropy_weight·(E[H(q(·|z))] - diversity_gamma·H(E[q(·|z)])) +
    commitment_weight·mean((z - sg[code])²)`` with soft assignments
    ``q(c|z) ∝ exp(-||z - c||²/entropy_temperature)``; since the distance splits over
    bits, ``q`` factorises into independent bits with ``P(bit=1) =
    sigmoid(4z/entropy_temperature)``. The per-sample entropy is exact; the batch
    entropy is exact up to :data:`EXACT_ENTROPY_MAX_CODES` codes and otherwise the
    sum of the per-bit marginal entropies.
    """

    def __init__(self, dim: Optional[int] = None, *, codebook_bits: Optional[int] = None,
                 codebook_size: Optional[int] = None,
                 entropy_weight: float = DEFAULT_ENTROPY_WEIGHT,
                 commitment_weight: float = DEFAULT_COMMITMENT_WEIGHT,
                 diversity_gamma: float = DEFAULT_DIVERSITY_GAMMA,
                 entropy_temperature: float = DEFAULT_ENTROPY_TEMPERATURE,
                 usage_window: int = DEFAULT_USAGE_WINDOW) -> None:
        super().__init__()
        if (codebook_bits is None) == (codebook_size is None):
            raise ValidationError("lfq: give exactly one of codebook_bits and codebook_size, got "
                                  f"codebook_bits={codebook_bits!r}, codebook_size={codebook_size!r}")
        if codebook_bits is None:
            codebook_bits = log2_int(codebook_size, "lfq(codebook_size)")  # type: ignore[arg-type]
        check_positive(codebook_bits, "lfq(codebook_bits)")
        for value, name in ((entropy_weight, "entropy_weight"), (commitment_weight, "commitment_weight"),
                            (diversity_gamma, "diversity_gamma")):
            check_positive(value, f"lfq({name})", integer=False, allow_zero=True)
        check_positive(entropy_temperature, "lfq(entropy_temperature)", integer=False)
        self.bits = int(codebook_bits)
        self.dim = self.bits if dim is None else dim
        check_positive(self.dim, "lfq(dim)")
        self._codebook_size = 1 << self.bits
        self.entropy_weight, self.commitment_weight = float(entropy_weight), float(commitment_weight)
        self.diversity_gamma, self.entropy_temperature = float(diversity_gamma), float(entropy_temperature)
        self.projection = ChannelProjection(self.dim, self.bits)
        self.register_buffer("_bit_values", 2 ** torch.arange(self.bits), persistent=False)
        self.usage_tracker = UsageTracker(self._codebook_size, usage_window)

    def reset_parameters(self) -> None:
        """Re-draw the projections (the sign codebook has no parameters)."""
        self.projection.reset_parameters()

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Long ids (any shape) -> ±1 codes (same shape + bits)."""
        bits = (indices.unsqueeze(-1) // self._bit_values) % 2
        return bits.float() * 2.0 - 1.0

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """±1 codes (… × bits) -> Long ids."""
        return ((codes > 0).long() * self._bit_values).sum(-1)

    def entropy_loss(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, mean per-sample entropy, batch entropy) in nats for N×bits rows."""
        p_one = torch.sigmoid(4.0 * rows.float() / self.entropy_temperature)
        per_sample = _bernoulli_entropy(p_one).sum(-1).mean()
        if self._codebook_size <= EXACT_ENTROPY_MAX_CODES:
            bits_set = (self.indices_to_codes(torch.arange(self._codebook_size, device=rows.device)) > 0)
            # log q(c|z) = sum_i log P(bit_i = c_i | z_i), and logsigmoid(l) = logsigmoid(-l) + l,
            # so one matmul with the code bits gives every log-probability.
            logits = 4.0 * rows.float() / self.entropy_temperature
            log_q = F.logsigmoid(-logits).sum(1, keepdim=True) + logits @ bits_set.float().t()
            batch = _entropy(log_q.exp().mean(0))
        else:
            batch = _bernoulli_entropy(p_one.mean(0)).sum()
        return per_sample - self.diversity_gamma * batch, per_sample, batch

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize float B×dim×H×W ``z``; indices Long B×H×W."""
        check_latent(z, "lfq(z)", self.dim)
        batch, _, height, width = z.shape
        rows = self.projection.project_in(to_rows(z))
        codes = torch.where(rows > 0, 1.0, -1.0).to(rows.dtype)
        indices = self.codes_to_indices(codes).reshape(batch, height, width)
        loss = self.commitment_weight * torch.mean((rows - codes) ** 2)
        extra: dict[str, Tensor] = {}
        if self.entropy_weight > 0:
            entropy, per_sample, batch_entropy = self.entropy_loss(rows)
            loss = loss + self.entropy_weight * entropy
            extra = {"per_sample_entropy": per_sample, "batch_entropy": batch_entropy}
        z_q = from_rows(self.projection.project_out(straight_through(rows, codes)), batch, height, width)
        metrics = finalize_metrics(code_counts(indices, self._codebook_size), self.usage_tracker,
                                   self.training, extra)
        return QuantizerOutput(z_q=z_q, indices=indices, loss=loss, metrics=metrics)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Long B×H×W ids -> B×dim×H×W latent."""
        check_tensor(indices, "lfq.decode_indices(indices)", dims=("B", "H", "W"), dtype="long",
                     value_range=(0, self._codebook_size - 1))
        batch, height, width = indices.shape
        rows = self.projection.project_out(self.indices_to_codes(indices.reshape(-1)))
        return from_rows(rows, batch, height, width)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, dim={self.dim}, entropy_weight={self.entropy_weight}, "
                f"commitment_weight={self.commitment_weight}")

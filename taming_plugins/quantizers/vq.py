"""``vq``: the VQ-VAE / VQGAN vector quantizer with a gradient-trained codebook."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core import Quantizer, QuantizerOutput, register
from taming_core.ops import nearest_code
from taming_core.validation import check_positive, check_tensor

from ._common import (DEFAULT_USAGE_WINDOW, ChannelProjection, UsageTracker, check_latent,
                      code_counts, finalize_metrics, from_rows, straight_through, to_rows)

#: Commitment weight of the VQ-VAE paper and of the original VQGAN configs.
DEFAULT_BETA = 0.25
#: Softmax temperature over negative squared distances for the entropy loss.
DEFAULT_ENTROPY_TEMPERATURE = 0.01


def codebook_entropy_loss(rows: Tensor, codebook: Tensor, temperature: float) -> Tensor:
    """Mean per-row assignment entropy minus the entropy of the mean assignment.

    Minimising it makes each row confident about one code while spreading the batch
    over many codes. Soft assignments are ``softmax(-||z - e||² / temperature)``; this
    materialises the N×K distance matrix, so it is only computed when asked for.
    """
    dist = (rows.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
            - 2.0 * rows @ codebook.t())
    log_probs = F.log_softmax(-dist / temperature, dim=1)
    probs = log_probs.exp()
    per_row = -(probs * log_probs).sum(1).mean()
    mean_probs = probs.mean(0)
    batch = -(mean_probs * torch.log(mean_probs.clamp_min(torch.finfo(mean_probs.dtype).tiny))).sum()
    return per_row - batch


@register("quantizer", "vq")
class VectorQuantizer(Quantizer):
    """VQ-VAE/VQGAN quantizer: nearest code, codebook + beta·commitment loss, straight-through.

    Args:
        codebook_size: number of codes K.
        dim: channels C of the latent.
        beta: commitment weight.
        legacy_beta: reproduce the original taming-transformers loss, which puts beta
            on the *codebook* term: ``mean((sg[z_q]-z)²) + beta·mean((z_q-sg[z])²)``.
            Use it when fine-tuning original checkpoints. ``False`` (default) gives
            the VQ-VAE paper's placement ``mean((sg[z]-z_q)²) + beta·mean((z-sg[z_q])²)``.
            Both give the same value; they differ in which parameters get which weight.
        codebook_dim: look codes up in a lower-dimensional space (ViT-VQGAN style):
            1×1 projections ``dim -> codebook_dim -> dim`` around the lookup.
        l2_normalize: normalise latents and codes to unit length before the lookup
            (cosine-similarity codes).
        entropy_weight: weight of :func:`codebook_entropy_loss` (0 disables it).
        entropy_temperature: temperature of that loss's soft assignments.
        usage_window: batches in the running ``usage_window`` metric.

    The codebook is ``self.embedding`` (an ``nn.Embedding``), so the original
    ``quantize.embedding.weight`` checkpoint key maps one to one; it is initialised
    uniformly in ``±1/K`` like the original.
    """

    def __init__(self, codebook_size: int, dim: int, *, beta: float = DEFAULT_BETA,
                 legacy_beta: bool = False, codebook_dim: Optional[int] = None,
                 l2_normalize: bool = False, entropy_weight: float = 0.0,
                 entropy_temperature: float = DEFAULT_ENTROPY_TEMPERATURE,
                 usage_window: int = DEFAULT_USAGE_WINDOW) -> None:
        super().__init__()
        check_positive(codebook_size, "vq(codebook_size)")
        check_positive(dim, "vq(dim)")
        check_positive(beta, "vq(beta)", integer=False, allow_zero=True)
        check_positive(entropy_weight, "vq(entropy_weight)", integer=False, allow_zero=True)
        check_positive(entropy_temperature, "vq(entropy_temperature)", integer=False)
        code_dim = dim if codebook_dim is None else codebook_dim
        check_positive(code_dim, "vq(codebook_dim)")
        self.dim, self.code_dim, self._codebook_size = dim, code_dim, codebook_size
        self.beta, self.legacy_beta = float(beta), bool(legacy_beta)
        self.l2_normalize = bool(l2_normalize)
        self.entropy_weight, self.entropy_temperature = float(entropy_weight), float(entropy_temperature)
        self.projection = ChannelProjection(dim, code_dim)
        self.embedding = nn.Embedding(codebook_size, code_dim)
        self.usage_tracker = UsageTracker(codebook_size, usage_window)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the codebook (uniform in ±1/K, as the original) and projections."""
        bound = 1.0 / self._codebook_size
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.projection.reset_parameters()

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    def codebook(self) -> Tensor:
        """The K×codebook_dim codes as used in the lookup (normalised if ``l2_normalize``)."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.l2_normalize else weight

    def commitment_codebook_loss(self, rows: Tensor, rows_q: Tensor) -> Tensor:
        """The two-term VQ loss, with beta where ``legacy_beta`` says (see class doc)."""
        commitment = torch.mean((rows - rows_q.detach()) ** 2)   # trains the encoder
        codebook = torch.mean((rows.detach() - rows_q) ** 2)     # trains the codes
        if self.legacy_beta:
            return commitment + self.beta * codebook
        return codebook + self.beta * commitment

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize float B×dim×H×W ``z``; indices are Long B×H×W."""
        check_latent(z, "vq(z)", self.dim)
        batch, _, height, width = z.shape
        rows = self.projection.project_in(to_rows(z))
        if self.l2_normalize:
            rows = F.normalize(rows, dim=1)
        codes = self.codebook()
        indices = nearest_code(rows.detach(), codes.detach())
        rows_q = codes[indices].to(rows.dtype)
        loss = self.commitment_codebook_loss(rows, rows_q)
        extra: dict[str, Tensor] = {}
        if self.entropy_weight > 0:
            entropy = codebook_entropy_loss(rows, codes, self.entropy_temperature)
            loss = loss + self.entropy_weight * entropy
            extra["entropy_loss"] = entropy
        out_rows = self.projection.project_out(straight_through(rows, rows_q))
        z_q = from_rows(out_rows, batch, height, width)
        indices = indices.reshape(batch, height, width)
        metrics = finalize_metrics(code_counts(indices, self._codebook_size), self.usage_tracker,
                                   self.training, extra)
        return QuantizerOutput(z_q=z_q, indices=indices, loss=loss, metrics=metrics)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Long B×H×W code ids -> B×dim×H×W latent."""
        check_tensor(indices, "vq.decode_indices(indices)", dims=("B", "H", "W"), dtype="long",
                     value_range=(0, self._codebook_size - 1))
        batch, height, width = indices.shape
        rows = self.projection.project_out(self.codebook()[indices.reshape(-1)])
        return from_rows(rows, batch, height, width)

    def extra_repr(self) -> str:
        return (f"codebook_size={self._codebook_size}, dim={self.dim}, code_dim={self.code_dim}, "
                f"beta={self.beta}, legacy_beta={self.legacy_beta}, l2_normalize={self.l2_normalize}")

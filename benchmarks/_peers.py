"""Optional peer columns: ``vector-quantize-pytorch``'s ``VectorQuantize`` and ``FSQ``.

Used only when that package happens to be installed (it is never a dependency);
each is wrapped as a :class:`~taming_core.Quantizer` so the benchmark trains it in
the same autoencoder, with the same budget, as the built-in quantizers.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Callable

import torch
from torch import Tensor, nn

from taming_core import Quantizer, QuantizerOutput
from taming_core.quantization import UsageTracker, check_latent, code_counts, finalize_metrics

PEER_PACKAGE = "vector_quantize_pytorch"


def available() -> bool:
    """True when ``vector_quantize_pytorch`` can be imported."""
    return importlib.util.find_spec(PEER_PACKAGE) is not None


class PeerQuantizer(Quantizer):
    """Adapts a ``vector_quantize_pytorch`` module taking B×N×D sequences."""

    def __init__(self, module: nn.Module, codebook_size: int) -> None:
        super().__init__()
        self.module = module
        self._codebook_size = codebook_size
        self.usage_tracker = UsageTracker(codebook_size)

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_latent(z, "peer(z)")
        batch, channels, height, width = z.shape
        seq = z.flatten(2).transpose(1, 2)  # B×(H·W)×C
        result = self.module(seq)
        quantized, indices = result[0], result[1]
        loss = result[2].sum() if len(result) > 2 and torch.is_tensor(result[2]) else z.new_zeros(())
        z_q = quantized.transpose(1, 2).reshape(batch, channels, height, width)
        indices = indices.reshape(batch, height, width).long()
        metrics = finalize_metrics(code_counts(indices, self._codebook_size), self.usage_tracker,
                                   self.training)
        return QuantizerOutput(z_q=z_q, indices=indices, loss=loss, metrics=metrics)

    def decode_indices(self, indices: Tensor) -> Tensor:  # not needed by the benchmark
        raise NotImplementedError("peer quantizers are only trained and evaluated here")


def peer_builders(codebook_size: int, dim: int,
                  fsq_levels: Sequence[int]) -> dict[str, Callable[[], Quantizer]]:
    """Builders of the peer quantizers, keyed by column label (empty if not installed)."""
    if not available():
        return {}
    import vector_quantize_pytorch as vqp

    levels = list(fsq_levels)
    size = math.prod(levels)
    return {
        "vqp-VectorQuantize": lambda: PeerQuantizer(
            vqp.VectorQuantize(dim=dim, codebook_size=codebook_size), codebook_size),
        "vqp-FSQ": lambda: PeerQuantizer(vqp.FSQ(levels=levels, dim=dim), size),
    }

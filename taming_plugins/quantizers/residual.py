"""``residual``: residual vector quantization (RVQ, as in SoundStream / RQ-VAE) over
L levels of any registered quantizer."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from taming_core import Quantizer, QuantizerOutput, ValidationError, create_from_spec, register
from taming_core.validation import check_positive, check_tensor

from ._common import check_latent

LevelSpec = Union[Quantizer, Mapping[str, Any]]
#: Metrics averaged over levels (each level also reports its own, prefixed ``level<l>_``).
AVERAGED_METRICS = ("usage", "perplexity", "usage_window")


def _build_level(spec: LevelSpec, where: str) -> Quantizer:
    if isinstance(spec, Quantizer):
        return spec
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        level = create_from_spec("quantizer", spec)
        if not isinstance(level, Quantizer):
            raise ValidationError(f"{where}: quantizer {spec['name']!r} did not build a Quantizer, "
                                  f"got {type(level).__name__}")
        return level
    raise ValidationError(f"{where}: expected a Quantizer or a spec dict with a 'name' key, got {spec!r}")


def _fresh_copy(level: Quantizer) -> Quantizer:
    """An independent copy with re-drawn parameters (same configuration)."""
    clone = copy.deepcopy(level)
    clone.reset_parameters()
    return clone


@register("quantizer", "residual")
class ResidualQuantizer(Quantizer):
    """L quantizers in sequence, each quantizing what the previous ones left over.

    Level 1 quantizes ``z``, level ``l+1`` quantizes ``r_{l+1} = r_l - sg[q_l]``; the
    output is ``z_q = Σ_l q_l`` and the loss the sum of the levels' losses. As in
    SoundStream's RVQ, every level is straight-through to its own residual input, so
    with ``vq``/``ema`` levels the encoder gradient of ``z_q`` is L times the identity
    (scale-invariant optimisers such as Adam are unaffected).

    Args:
        quantizer: the level quantizer: a spec dict ``{"name": ..., **kwargs}`` built
            ``num_levels`` times, a :class:`Quantizer` instance (further levels are
            deep copies with re-drawn parameters), or a list of specs/instances, one
            per level.
        num_levels: L (required unless ``quantizer`` is a list).
        shared_codebook: use one quantizer module for every level (its running usage
            then counts every level).

    Indices are Long B×H×W×L; ``codebook_size`` is the largest level's.
    """

    def __init__(self, quantizer: Union[LevelSpec, Sequence[LevelSpec]],
                 num_levels: Optional[int] = None, *, shared_codebook: bool = False) -> None:
        super().__init__()
        if isinstance(quantizer, Sequence) and not isinstance(quantizer, (str, Mapping)):
            if num_levels is not None and num_levels != len(quantizer):
                raise ValidationError(f"residual(num_levels): got {num_levels} but {len(quantizer)} "
                                      "level quantizers")
            if shared_codebook:
                raise ValidationError("residual(shared_codebook): needs a single level quantizer, "
                                      f"got a list of {len(quantizer)}")
            levels = [_build_level(s, f"residual(quantizer[{i}])") for i, s in enumerate(quantizer)]
        else:
            if num_levels is None:
                raise ValidationError("residual(num_levels): required when quantizer is a single spec")
            check_positive(num_levels, "residual(num_levels)")
            if isinstance(quantizer, Quantizer):
                first = quantizer
            else:
                first = _build_level(quantizer, "residual(quantizer)")
            if shared_codebook:
                levels = [first] * num_levels
            elif isinstance(quantizer, Quantizer):
                levels = [first] + [_fresh_copy(first) for _ in range(num_levels - 1)]
            else:
                levels = [first] + [_build_level(quantizer, "residual(quantizer)")
                                    for _ in range(num_levels - 1)]
        if not levels:
            raise ValidationError("residual(quantizer): expected at least one level")
        self.shared_codebook = bool(shared_codebook)
        self._num_levels = len(levels)
        # A shared module is stored once; forward() indexes it per level.
        self.levels = nn.ModuleList(levels[:1] if shared_codebook else levels)

    def reset_parameters(self) -> None:
        """Re-draw every level's parameters."""
        for level in self.levels:
            level.reset_parameters()  # type: ignore[operator]

    def level(self, index: int) -> Quantizer:
        """The quantizer of level ``index`` (0-based)."""
        return self.levels[0 if self.shared_codebook else index]  # type: ignore[return-value]

    @property
    def num_levels(self) -> int:
        return self._num_levels

    @property
    def codebook_size(self) -> int:
        return max(level.codebook_size for level in self.levels)  # type: ignore[union-attr]

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize float B×C×H×W ``z``; indices Long B×H×W×L."""
        check_latent(z, "residual(z)")
        residual = z
        z_q = torch.zeros_like(z)
        loss = z.new_zeros(())
        indices: list[Tensor] = []
        metrics: dict[str, float] = {}
        for i in range(self._num_levels):
            out = self.level(i)(residual)
            if out.z_q.shape != residual.shape:
                raise ValidationError(f"residual: level {i} maps {tuple(residual.shape)} to "
                                      f"{tuple(out.z_q.shape)}; levels must keep the latent shape")
            z_q = z_q + out.z_q
            loss = loss + out.loss
            indices.append(out.indices)
            residual = residual - out.z_q.detach()
            for key, value in out.metrics.items():
                metrics[f"level{i}_{key}"] = value
            metrics[f"level{i}_residual_mse"] = float(residual.detach().pow(2).mean())
        for key in AVERAGED_METRICS:
            values = [metrics[f"level{i}_{key}"] for i in range(self._num_levels)
                      if f"level{i}_{key}" in metrics]
            if values:
                metrics[key] = sum(values) / len(values)
        return QuantizerOutput(z_q=z_q, indices=torch.stack(indices, dim=-1), loss=loss, metrics=metrics)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Long B×H×W×L ids -> the sum of the levels' decoded latents."""
        check_tensor(indices, "residual.decode_indices(indices)",
                     dims=("B", "H", "W", self._num_levels), dtype="long")
        out = self.level(0).decode_indices(indices[..., 0])
        for i in range(1, self._num_levels):
            out = out + self.level(i).decode_indices(indices[..., i])
        return out

    def extra_repr(self) -> str:
        return f"num_levels={self._num_levels}, shared_codebook={self.shared_codebook}"

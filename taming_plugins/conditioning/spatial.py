"""``spatial``: condition tokens from a second, frozen tokenizer (the conditional VQGAN).

A depth map or segmentation (float B×C×H×W) is encoded by a separate tokenizer into a
B×h×w grid aligned with the image grid; the prior then models
``[cond tokens (flattened row-major), image tokens]``, as the paper's depth-to-image and
semantic-synthesis models do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from taming_core import Tokenizer, create, register
from taming_core.errors import ValidationError
from taming_core.validation import check_positive, check_tensor

from ._base import ConditionerBase, freeze

#: Interpolation the original Net2NetTransformer uses to resize the condition
#: (``downsample_cond_size``) before encoding it.
RESIZE_MODE = "nearest"
#: Index of the code ids in the ``info`` triple an original taming ``encode`` returns.
ORIGINAL_INFO_INDICES = 2

TokenizerLike = Union[Tokenizer, nn.Module, Mapping[str, Any], str, os.PathLike]


def _build_tokenizer(tokenizer: TokenizerLike) -> nn.Module:
    if isinstance(tokenizer, nn.Module):
        return tokenizer
    if isinstance(tokenizer, Mapping):
        spec = dict(tokenizer)
        if "name" not in spec:
            raise ValidationError("spatial(tokenizer): a spec dict needs a 'name' key, got keys "
                                  f"{sorted(spec)}")
        return create("tokenizer", spec.pop("name"), **spec)
    if isinstance(tokenizer, (str, os.PathLike)):
        from taming_plugins.training.stage2 import load_frozen_tokenizer  # avoid an import cycle

        return load_frozen_tokenizer(tokenizer)
    raise ValidationError("spatial(tokenizer): expected a Tokenizer, an original cond-stage module, a "
                          f"spec dict or a checkpoint path, got {type(tokenizer).__name__}")


def _original_vocab_size(model: nn.Module) -> Optional[int]:
    """Codebook size of an original taming cond-stage model (not a taming component: it
    declares nothing, so its size is read from the original attribute names)."""
    quantize = getattr(model, "quantize", None)
    for owner, attr in ((quantize, "n_e"), (quantize, "n_embed"), (model, "n_embed")):
        value = getattr(owner, attr, None) if owner is not None else None
        if isinstance(value, int):
            return value
    return None


@register("conditioner", "spatial")
class SpatialConditioner(ConditionerBase):
    """A frozen second tokenizer encodes a depth/segmentation map into B×h×w tokens.

    Args:
        tokenizer: a registered :class:`~taming_core.Tokenizer` (instance, ``{"name": ...}``
            spec or a checkpoint path), or an original taming cond-stage model whose
            ``encode`` returns ``(quant, loss, (_, _, indices))``.
        vocab_size: number of condition ids; read from the tokenizer when omitted.
        downsample_size: resize the condition to this square size first (the original's
            ``downsample_cond_size``); None keeps it.
        null_token: reserve id ``vocab_size`` as the null condition (classifier-free guidance).
    """

    spatial = True

    def __init__(self, tokenizer: TokenizerLike, *, vocab_size: Optional[int] = None,
                 downsample_size: Optional[int] = None, null_token: bool = False) -> None:
        super().__init__()
        self.tokenizer = freeze(_build_tokenizer(tokenizer))
        if vocab_size is None:
            vocab_size = (self.tokenizer.vocab_size if isinstance(self.tokenizer, Tokenizer)
                          else _original_vocab_size(self.tokenizer))
        if vocab_size is None:
            raise ValidationError("spatial(vocab_size): could not read the codebook size from "
                                  f"{type(self.tokenizer).__name__}; pass vocab_size explicitly")
        check_positive(vocab_size, "spatial(vocab_size)")
        if downsample_size is not None:
            check_positive(downsample_size, "spatial(downsample_size)")
        self._vocab = int(vocab_size)
        self.downsample_size = downsample_size
        self.null_token = bool(null_token)

    def train(self, mode: bool = True) -> "SpatialConditioner":
        """Keep the frozen tokenizer in eval mode whatever the parent's mode."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def forward(self, condition: Tensor) -> Tensor:
        """Float B×C×H×W condition map -> Long B×h×w condition tokens."""
        check_tensor(condition, "spatial(condition)", dims=("B", "C", "H", "W"), dtype="float")
        if self.downsample_size is not None:
            size = (self.downsample_size, self.downsample_size)
            condition = nn.functional.interpolate(condition, size=size, mode=RESIZE_MODE)
        if isinstance(self.tokenizer, Tokenizer):
            indices = self.tokenizer.encode(condition).indices
        else:
            quant, _, info = self.tokenizer.encode(condition)
            indices = info[ORIGINAL_INFO_INDICES]
            indices = indices.reshape(quant.shape[0], quant.shape[2], quant.shape[3])
        if indices.dim() != 3:
            raise ValidationError("spatial(tokenizer): expected B×h×w condition tokens from a "
                                  f"single-level tokenizer, got shape {tuple(indices.shape)}")
        return indices.long()

    @property
    def num_ids(self) -> int:
        return self._vocab

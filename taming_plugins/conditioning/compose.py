"""``compose``: several conditioners side by side (e.g. a class label and a depth map)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from taming_core import Conditioner, create_from_spec, register
from taming_core.errors import ValidationError

from ._base import ConditionerBase

PartLike = Union[Conditioner, Mapping[str, Any]]


def _build_part(part: PartLike, index: int) -> Conditioner:
    if isinstance(part, Conditioner):
        return part
    if isinstance(part, Mapping) and "name" in part:
        return create_from_spec("conditioner", part)
    raise ValidationError(f"compose(conditioners[{index}]): expected a Conditioner or a "
                          f"{{'name': ...}} spec, got {type(part).__name__}")


@register("conditioner", "compose")
class ComposeConditioner(ConditionerBase):
    """Concatenate the flattened tokens of several conditioners into one prefix B×L.

    Part ``i``'s local ids are shifted by the sum of the vocabularies of parts ``0..i-1``,
    so the composite vocabulary is their sum (plus one null id with ``null_token``: a
    dropped condition is the null id at every prefix position).

    ``forward`` takes a sequence with one condition per part, in order.
    """

    def __init__(self, conditioners: Sequence[PartLike], *, null_token: bool = False) -> None:
        super().__init__()
        if isinstance(conditioners, (str, bytes)) or not isinstance(conditioners, Sequence) \
                or not conditioners:
            raise ValidationError("compose(conditioners): expected a non-empty list of conditioners, "
                                  f"got {conditioners!r}")
        self.parts = nn.ModuleList(_build_part(p, i) for i, p in enumerate(conditioners))
        offsets, total = [], 0
        for part in self.parts:
            offsets.append(total)
            total += part.vocab_size
        self.offsets: tuple[int, ...] = tuple(offsets)
        self._vocab = total
        self.null_token = bool(null_token)

    def forward(self, condition: Sequence[Any]) -> Tensor:
        if not isinstance(condition, (list, tuple)) or len(condition) != len(self.parts):
            got = f"{len(condition)} items" if isinstance(condition, (list, tuple)) \
                else type(condition).__name__
            raise ValidationError(f"compose(condition): expected a list of {len(self.parts)} "
                                  f"conditions (one per part), got {got}")
        pieces = []
        for part, offset, cond in zip(self.parts, self.offsets, condition):
            tokens = part(cond)
            pieces.append(tokens.reshape(tokens.shape[0], -1) + offset)
        batches = {p.shape[0] for p in pieces}
        if len(batches) != 1:
            raise ValidationError(f"compose(condition): the parts gave different batch sizes "
                                  f"{sorted(batches)}")
        return torch.cat(pieces, dim=1)

    @property
    def num_ids(self) -> int:
        return self._vocab

"""``sos``: the unconditional start-of-sequence token."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from taming_core import register

from ._base import ConditionerBase, batch_size_of

#: The one local id the SOS conditioner emits (place it with the layout's offset).
SOS_ID = 0


@register("conditioner", "sos")
class SOSConditioner(ConditionerBase):
    """Unconditional prior: one start token per sample (B×1, local id 0).

    ``forward`` accepts anything that carries a batch size: an int, a batch tensor
    (images, labels...) or a list. The original Net2NetTransformer's ``sos_token`` is
    this id placed at ``VocabLayout.cond_offset`` (``n_embed`` in the reference configs).
    The SOS token is its own null condition, so classifier-free dropout is a no-op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def forward(self, condition: Any) -> Tensor:
        batch = batch_size_of(condition, "sos(condition)")
        device = condition.device if isinstance(condition, Tensor) else self._device_probe.device
        return torch.full((batch, 1), SOS_ID, dtype=torch.long, device=device)

    @property
    def vocab_size(self) -> int:
        return 1

    @property
    def null_id(self) -> Optional[int]:
        return SOS_ID

    @property
    def takes_condition(self) -> bool:
        """False: the SOS token depends on nothing but the batch size."""
        return False

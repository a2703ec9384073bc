"""``class_label``: one token per class id, plus a null id for classifier-free guidance."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from taming_core import register
from taming_core.errors import ValidationError
from taming_core.validation import check_positive, check_tensor

from ._base import ConditionerBase


@register("conditioner", "class_label")
class ClassLabelConditioner(ConditionerBase):
    """Class id ``y`` -> the single token ``y`` (B×1); the null id is ``num_classes``.

    Args:
        num_classes: labels lie in ``[0, num_classes)``.
        null_token: reserve id ``num_classes`` for "no class" (classifier-free guidance);
            the vocabulary is then ``num_classes + 1`` ids.
        class_names: optional name of every class (e.g. the sub-folders of an image
            folder); stored in the spec, so a saved pipeline maps names to ids
            (:meth:`label_of`, ``taming sample --label NAME``).
    """

    def __init__(self, num_classes: int, *, null_token: bool = True,
                 class_names: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        check_positive(num_classes, "class_label(num_classes)")
        self.num_classes = int(num_classes)
        self.null_token = bool(null_token)
        if class_names is not None:
            names = [str(n) for n in class_names]
            if len(names) != self.num_classes or len(set(names)) != len(names):
                raise ValidationError(f"class_label(class_names): expected {self.num_classes} distinct "
                                      f"names, got {len(names)} ({len(set(names))} distinct)")
            class_names = names
        self.class_names: Optional[list[str]] = class_names
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def forward(self, condition: Union[Tensor, Sequence[int]]) -> Tensor:
        """Long B (or B×1) labels, or a list of ints -> Long B×1 tokens."""
        labels = condition
        if not isinstance(labels, Tensor):
            if not isinstance(labels, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in labels):
                raise ValidationError("class_label(condition): expected an integer tensor of shape B "
                                      f"or a list of ints, got {type(condition).__name__}")
            labels = torch.tensor(list(labels), dtype=torch.long, device=self._device_probe.device)
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        check_tensor(labels, "class_label(condition)", dims=("B",), dtype="integer",
                     value_range=(0, self.num_classes - 1))
        return labels.long().unsqueeze(1)

    def label_of(self, label: Union[int, str]) -> int:
        """The class id of ``label``: a class name, or an id (an int or a digit string)."""
        if isinstance(label, str) and self.class_names is not None and label in self.class_names:
            return self.class_names.index(label)
        if isinstance(label, str) and label.lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < self.num_classes:
            return label
        known = (f"one of {', '.join(self.class_names)} or " if self.class_names else "") + \
            f"an id in [0, {self.num_classes - 1}]"
        raise ValidationError(f"class_label: unknown label {label!r}; expected {known}")

    @property
    def num_ids(self) -> int:
        return self.num_classes

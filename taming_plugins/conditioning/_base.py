"""Shared base of the built-in conditioners: the null condition and frozen sub-models."""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from taming_core import Conditioner
from taming_core.errors import ValidationError


class ConditionerBase(Conditioner):
    """A :class:`~taming_core.Conditioner` that may define a *null* condition id.

    The null id stands for "no condition": classifier-free guidance training replaces
    a sample's condition tokens by it (see :mod:`.transforms`) and guided sampling uses
    it for the unconditional branch.
    """

    #: Whether one extra id, right after the real ones, stands for "no condition".
    null_token: bool = False

    @property
    def num_ids(self) -> int:
        """Number of real condition ids (subclasses define it; the null id follows them)."""
        raise NotImplementedError(f"{type(self).__name__} must define num_ids or vocab_size")

    @property
    def vocab_size(self) -> int:
        """Real ids plus the null id when there is one."""
        return self.num_ids + (1 if self.null_token else 0)

    @property
    def null_id(self) -> Optional[int]:
        """The local id of the null condition, or None when there is none."""
        return self.num_ids if self.null_token else None

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, null_id={self.null_id}"


def batch_size_of(condition: Any, name: str) -> int:
    """Batch size of an int, a tensor (its first dim) or a sequence (its length)."""
    if isinstance(condition, bool):
        raise ValidationError(f"{name}: expected a batch size, a tensor or a sequence, got a bool")
    if isinstance(condition, int):
        if condition <= 0:
            raise ValidationError(f"{name}: expected a batch size > 0, got {condition}")
        return condition
    if isinstance(condition, Tensor):
        if condition.dim() == 0:
            raise ValidationError(f"{name}: expected a batched tensor, got a 0-d tensor")
        return int(condition.shape[0])
    if isinstance(condition, (list, tuple)):
        return len(condition)
    raise ValidationError(f"{name}: expected a batch size, a tensor or a sequence, "
                          f"got {type(condition).__name__}")


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and stop gradients to its parameters."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module

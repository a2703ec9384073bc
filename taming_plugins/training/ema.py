"""Exponential moving average of a module's weights.

``shadow = decay * shadow + (1 - decay) * param`` after each optimizer step; buffers
(BatchNorm statistics, EMA-codebook counters) are copied as they are. Evaluate or
export with the averaged weights through :meth:`EMA.swapped`. Works for any
``nn.Module`` (stage-1 tokenizers and stage-2 priors alike).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import nn

from taming_core.errors import CheckpointError, ValidationError


class EMA:
    """Shadow copy of ``module``'s floating-point parameters and buffers.

    Args:
        module: the model being trained (its weights are read, never changed except
            inside :meth:`swapped`).
        decay: averaging factor in [0, 1).
        warmup_steps: while ``num_updates < warmup_steps`` the effective decay is
            ``min(decay, (1 + n) / (10 + n))`` so early averages do not stay stuck at the
            random initialisation; 0 disables the warm-up.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, *, warmup_steps: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValidationError(f"EMA(decay): expected a number in [0, 1), got {decay!r}")
        self.module, self.decay, self.warmup_steps = module, float(decay), int(warmup_steps)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in module.state_dict().items()}

    def current_decay(self) -> float:
        if self.num_updates < self.warmup_steps:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Fold the module's current weights into the average (call after optimizer.step)."""
        decay = self.current_decay()
        params = dict(self.module.named_parameters())
        avg: list[torch.Tensor] = []
        cur: list[torch.Tensor] = []
        for key, value in self.module.state_dict().items():
            shadow = self.shadow[key]
            if key in params and value.dtype.is_floating_point:
                avg.append(shadow)
                cur.append(value.detach())
            else:
                shadow.copy_(value)
        if avg:
            torch._foreach_lerp_(avg, cur, 1.0 - decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into the module (restored on exit)."""
        backup = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict(self.shadow, strict=True)
        try:
            yield self.module
        finally:
            self.module.load_state_dict(backup, strict=True)

    def copy_to(self, module: Optional[nn.Module] = None) -> None:
        """Write the averaged weights into ``module`` (default: the tracked module)."""
        (module or self.module).load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup_steps": self.warmup_steps,
                "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(shadow))[:3]
            unexpected = sorted(set(shadow) - set(self.shadow))[:3]
            raise CheckpointError(f"EMA state does not match the model (missing {missing}, "
                                  f"unexpected {unexpected})")
        for key, value in shadow.items():
            self.shadow[key].copy_(value)
        self.decay, self.warmup_steps = float(state["decay"]), int(state["warmup_steps"])
        self.num_updates = int(state["num_updates"])

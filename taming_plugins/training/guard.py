"""The divergence guard: stop a run at the first sign of divergence, without a device
sync per step.

Two signs stop a run with :class:`~taming_core.errors.TrainingError`:

* a non-finite value anywhere in a step (any loss or metric the step returns, the
  gradient norm when it is computed, or an error raised inside the step while the
  weights hold NaN/Inf);
* a loss that explodes but stays finite: a logged value of ``monitor`` above
  ``factor`` × the running median of the earlier logged values.

Trade-off (documented in docs/training.md): :meth:`DivergenceGuard.observe` runs every
step and only does device arithmetic (an "any non-finite" flag and the first bad step
are accumulated as tensors). :meth:`DivergenceGuard.check` reads them back (one sync) and
runs on logging steps and before every checkpoint (under DDP the flags are reduced over
ranks there, so every rank stops at the same check). A diverged step is therefore detected
up to ``log_every - 1`` steps late, but always before a checkpoint is written, so every
kept checkpoint is from before the divergence and rotation never removes the last good
one. The error names the first non-finite step itself (it is recorded on the device).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor

from taming_core.errors import TrainingError

from .distributed import is_distributed

#: Stands for "no bad step" when the first bad step is reduced over ranks (MIN).
_NO_STEP = 2 ** 62

Number = Union[float, Tensor]


def _advice() -> str:
    return ("lower the learning rate, enable gradient clipping, or disable bf16 autocast, and "
            "resume from it")


class DivergenceGuard:
    """Accumulates per-step finiteness on the device; checks it and the loss trend cheaply.

    Args:
        monitor: the logged metric compared with its running median (e.g. ``total_loss``).
        factor: the multiple of the running median that counts as divergence (None: off).
        window: how many earlier logged values the median covers.
    """

    def __init__(self, monitor: str, *, factor: Optional[float] = 100.0, window: int = 50) -> None:
        self.monitor, self.factor = monitor, factor
        self.history: deque[float] = deque(maxlen=window)
        self._bad: dict[str, Tensor] = {}       # name -> bool 0-d: a non-finite value was seen
        self._first: Optional[Tensor] = None    # long 0-d: the first such step (-1: none)
        self._any: Optional[Tensor] = None

    # ------------------------------------------------------------------ per step (no sync)
    def observe(self, step: int, values: Mapping[str, Number]) -> None:
        """Record which of ``values`` (tensors or floats) of ``step`` are non-finite.

        Device arithmetic only (no sync): a flag per name, and the first bad step."""
        flags: dict[str, Tensor] = {}
        device: Optional[torch.device] = None
        for name, value in values.items():
            if isinstance(value, Tensor):
                flags[name] = ~torch.isfinite(value.detach()).all()
                device = value.device
        for name, value in values.items():
            if not isinstance(value, Tensor) and not math.isfinite(float(value)):
                flags[name] = torch.ones((), dtype=torch.bool, device=device)
        if not flags:
            return
        device = next(iter(flags.values())).device
        if self._any is None:
            self._any = torch.zeros((), dtype=torch.bool, device=device)
            self._first = torch.full((), -1, dtype=torch.long, device=device)
        assert self._first is not None
        bad = torch.stack([f.to(device) for f in flags.values()]).any()
        self._first = torch.where(bad & ~self._any, torch.full_like(self._first, step), self._first)
        self._any = self._any | bad
        for name, flag in flags.items():
            self._bad[name] = self._bad[name] | flag if name in self._bad else flag

    def reset(self) -> None:
        """Forget the accumulated flags (after a successful check)."""
        self._bad, self._first, self._any = {}, None, None

    # ------------------------------------------------------------------ checks (one sync)
    def check(self, step: int, logged: Optional[Mapping[str, float]] = None, *,
              last_checkpoint: Optional[object] = None) -> None:
        """Raise :class:`TrainingError` if a non-finite value was observed since the last
        check or if ``logged[monitor]`` exceeds ``factor`` × its running median."""
        where = (f"the last checkpoint before the divergence is {last_checkpoint}" if last_checkpoint
                 else "no checkpoint was written before the divergence")
        if self._any is not None:
            assert self._first is not None
            names = list(self._bad)
            flags = torch.stack([self._any.long(), *(self._bad[n].long().to(self._first.device) for n in names)])
            first = torch.where(self._first >= 0, self._first, torch.full_like(self._first, _NO_STEP))
            if is_distributed():  # every rank stops together: any rank's NaN, the earliest step
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                dist.all_reduce(first, op=dist.ReduceOp.MIN)
            read = torch.cat([first.reshape(1), flags]).tolist()
            first, bad, per_name = read[0], read[1], read[2:]
            if bad:
                which = ", ".join(n for n, b in zip(names, per_name) if b)
                raise TrainingError(f"step {first}: non-finite loss or gradient ({which}); training "
                                    f"stopped and {where}. {_advice().capitalize()}")
            self.reset()
        if logged is None:
            return
        bad_logged = {k: v for k, v in logged.items() if not math.isfinite(float(v))}
        if bad_logged:
            listing = ", ".join(f"{k}={v}" for k, v in bad_logged.items())
            raise TrainingError(f"step {step}: non-finite loss ({listing}); training stopped and "
                                f"{where}. {_advice().capitalize()}")
        if self.monitor not in logged:
            return
        value = float(logged[self.monitor])
        if self.factor is not None and self.history:
            median = statistics.median(self.history)
            if median > 0 and value > self.factor * median:
                raise TrainingError(
                    f"step {step}: {self.monitor} {value:.4g} exceeds {self.factor:g}x its running "
                    f"median {median:.4g} (the run is diverging); training stopped and {where}. "
                    f"{_advice().capitalize()}")
        self.history.append(value)

    def state_dict(self) -> dict[str, object]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        values = state.get("history", [])
        self.history.clear()
        self.history.extend(float(v) for v in values)  # type: ignore[union-attr]


def nonfinite_parameters(modules: Iterable[torch.nn.Module]) -> Optional[str]:
    """The name of the first parameter holding NaN/Inf, or None (one sync)."""
    named = [(n, p) for m in modules for n, p in m.named_parameters() if p.dtype.is_floating_point]
    if not named:
        return None
    flags = torch.stack([~torch.isfinite(p.detach()).all() for _, p in named]).tolist()
    for (name, _), bad in zip(named, flags):
        if bad:
            return name
    return None

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
        # names of the tensor values of a step -> bool vector: a non-finite value was seen
        self._bad: dict[tuple[str, ...], Tensor] = {}
        self._first: Optional[Tensor] = None    # long 0-d: the first such step (-1: none)
        self._any: Optional[Tensor] = None
        self._float_bad: dict[str, int] = {}    # python floats: name -> first bad step

    # ------------------------------------------------------------------ per step (no sync)
    def observe(self, step: int, values: Mapping[str, Number]) -> None:
        """Record which of ``values`` (tensors or floats) of ``step`` are non-finite.

        A few device operations (one stacked ``isfinite`` and three element-wise ops on the
        accumulated flags), no sync."""
        for name, value in values.items():
            if not isinstance(value, Tensor) and not math.isfinite(float(value)):
                self._float_bad.setdefault(name, step)
        tensors = {n: v.detach() for n, v in values.items() if isinstance(v, Tensor)}
        if not tensors:
            return
        names = tuple(tensors)
        # a sum is non-finite when any element is (metrics are 0-d in practice)
        flags = ~torch.isfinite(torch.stack([v.float().sum() for v in tensors.values()]))
        if self._any is None:
            self._any = torch.zeros((), dtype=torch.bool, device=flags.device)
            self._first = torch.full((), -1, dtype=torch.long, device=flags.device)
        assert self._first is not None
        bad = flags.any()
        self._first = torch.where(bad & ~self._any, torch.full_like(self._first, step), self._first)
        self._any = self._any | bad
        self._bad[names] = self._bad[names] | flags if names in self._bad else flags

    def reset(self) -> None:
        """Forget the accumulated flags (after a successful check)."""
        self._bad, self._first, self._any, self._float_bad = {}, None, None, {}

    # ------------------------------------------------------------------ checks (one sync)
    def check(self, step: int, logged: Optional[Mapping[str, float]] = None, *,
              last_checkpoint: Optional[object] = None) -> None:
        """Raise :class:`TrainingError` if a non-finite value was observed since the last
        check or if ``logged[monitor]`` exceeds ``factor`` × its running median."""
        where = (f"the last checkpoint before the divergence is {last_checkpoint}" if last_checkpoint
                 else "no checkpoint was written before the divergence")
        if self._any is not None or self._float_bad:
            keys = list(self._bad)
            device = self._any.device if self._any is not None else torch.device("cpu")
            float_first = min(self._float_bad.values(), default=_NO_STEP)
            any_bad = torch.full((1,), int(bool(self._float_bad)), dtype=torch.long, device=device)
            first_t = torch.full((1,), float_first, dtype=torch.long, device=device)
            if self._any is not None:
                assert self._first is not None
                any_bad = any_bad | self._any.long().reshape(1)
                tensor_first = torch.where(self._first >= 0, self._first, torch.full_like(self._first, _NO_STEP))
                first_t = torch.minimum(first_t, tensor_first.reshape(1))
            flags = torch.cat([any_bad, *(self._bad[k].long() for k in keys)])
            if is_distributed():  # every rank stops together: any rank's NaN, the earliest step
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                dist.all_reduce(first_t, op=dist.ReduceOp.MIN)
            read = torch.cat([first_t, flags]).tolist()  # the one sync of the check
            first, bad, per_value = read[0], read[1], read[2:]
            if bad:
                names = [n for k in keys for n in k]
                which = list(dict.fromkeys([*(n for n, b in zip(names, per_value) if b), *self._float_bad]))
                raise TrainingError(f"step {first}: non-finite loss or gradient "
                                    f"({', '.join(which) or 'on another process'}); training stopped "
                                    f"and {where}. {_advice().capitalize()}")
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

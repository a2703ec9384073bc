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
runs on logging steps and before every checkpoint. A diverged step is therefore detected
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
from torch import Tensor

from taming_core.errors import TrainingError

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
        self._bad: Optional[Tensor] = None       # bool 0-d: a non-finite value was seen
        self._first: Optional[Tensor] = None     # long 0-d: the first such step (-1: none)
        self._names: list[str] = []

    # ------------------------------------------------------------------ per step (no sync)
    def observe(self, step: int, values: Mapping[str, Number]) -> None:
        """Record whether any of ``values`` (tensors or floats) of ``step`` is non-finite."""
        tensors = [v.detach().float().reshape(-1) for v in values.values() if isinstance(v, Tensor)]
        floats = [float(v) for v in values.values() if not isinstance(v, Tensor)]
        if not tensors and not floats:
            return
        bad_float = any(not math.isfinite(v) for v in floats)
        if tensors:
            device = tensors[0].device
            bad = ~torch.isfinite(torch.cat([t.to(device) for t in tensors])).all()
            if bad_float:
                bad = torch.ones((), dtype=torch.bool, device=device)
        else:
            bad = torch.tensor(bad_float)
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.bool, device=bad.device)
            self._first = torch.full((), -1, dtype=torch.long, device=bad.device)
            self._names = sorted(values)
        assert self._first is not None
        new = bad & ~self._bad
        self._first = torch.where(new, torch.full_like(self._first, step), self._first)
        self._bad = self._bad | bad

    def reset(self) -> None:
        """Forget the accumulated flag (after a successful check)."""
        self._bad, self._first = None, None

    # ------------------------------------------------------------------ checks (one sync)
    def check(self, step: int, logged: Optional[Mapping[str, float]] = None, *,
              last_checkpoint: Optional[object] = None) -> None:
        """Raise :class:`TrainingError` if a non-finite value was observed since the last
        check or if ``logged[monitor]`` exceeds ``factor`` × its running median."""
        where = (f"the last checkpoint before the divergence is {last_checkpoint}" if last_checkpoint
                 else "no checkpoint was written before the divergence")
        if self._bad is not None:
            assert self._first is not None
            bad, first = torch.stack([self._bad.long(), self._first]).tolist()
            if bad:
                raise TrainingError(f"step {first}: non-finite loss or gradient (one of "
                                    f"{', '.join(self._names)}); training stopped and {where}. "
                                    f"{_advice().capitalize()}")
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

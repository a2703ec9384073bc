"""The training loop both stages share: one place for each piece of the application layer.

:class:`Trainer` owns, for both :class:`~.stage1.TokenizerTrainer` and
:class:`~.stage2.PriorTrainer`:

* device resolution, seeding and DDP set-up (:mod:`.runtime`, :mod:`.distributed`);
* the run directory (:func:`prepare_run_directory`): ``OUT/checkpoints/step_*``
  (:class:`~.checkpoint.CheckpointManager`), ``OUT/metrics.jsonl``
  (:class:`~.metrics.MetricsLogger`), ``OUT/images/step_*.png``; a directory that holds a
  run is refused unless the call resumes it or overwrites it (a run directory never
  holds checkpoints of two runs); crash leftovers are cleaned on start;
* the loop: learning-rate warm-up, progress bar, metric windows, validation, image
  grids, checkpoints and the divergence guard (:mod:`.guard`);
* :class:`FitResult`, what ``fit()`` returns in both stages.

A stage implements the hooks: :meth:`Trainer.train_step` (model and optimizer logic
only; returns detached tensors, no device sync), :meth:`Trainer.modules`,
:meth:`Trainer.optimizers`, :meth:`Trainer.run_config`, :meth:`Trainer.write_images`
and optionally :meth:`Trainer.evaluate`, :meth:`Trainer.check_batch`.

Hot path: device-synchronising work (value-range and finiteness checks of the inputs,
``float()`` of the logged losses, the guard's check) runs on logging steps, checkpoint
steps and the first step only; the training steps themselves run inside
:func:`taming_core.validation.deferred_value_checks` (components skip their per-call
value checks; a NaN/Inf they would have refused reaches the loss and the guard).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from taming_core import StepAware
from taming_core.errors import ConfigError, TrainingError, ValidationError
from taming_core.validation import deferred_value_checks

from .checkpoint import RUN_CHECKPOINTS as CHECKPOINT_DIR
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .distributed import barrier, init_distributed, local_device, reduce_metrics
from .guard import DivergenceGuard, nonfinite_parameters
from .loop import Progress
from .metrics import MetricsLogger
from .runtime import resolve_bf16, resolve_device, seed_everything

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

METRICS_FILE = "metrics.jsonl"
IMAGES_DIR = "images"
#: Stateful entries every trainer adds to its checkpoints (restored when present).
GUARD_STATE, METRIC_STATE = "divergence_guard", "metric_buffers"


@dataclass
class FitResult:
    """What ``fit()`` returns in both stages.

    Attributes:
        step: the last step trained.
        out: the run directory.
        metrics: the last logged training metrics.
        train_metrics: every logged training record (``{"step": n, ...}``), oldest first.
        val_metrics: the last validation metrics (stage 1; empty for stage 2).
        last_checkpoint: the last checkpoint written (or resumed from).
    """

    step: int
    out: Path
    metrics: dict[str, float] = field(default_factory=dict)
    train_metrics: list[dict[str, float]] = field(default_factory=list)
    val_metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: Optional[Path] = None


class ModuleBuffers:
    """The non-persistent buffers of a module (running metric state such as a quantizer's
    usage window), as a checkpoint "stateful": a resumed run logs the same metrics as an
    uninterrupted one. They stay out of the module's state dict (weights files and
    original-checkpoint parity are unchanged)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def _buffers(self) -> dict[str, Tensor]:
        persistent = set(self.module.state_dict())
        return {n: b for n, b in self.module.named_buffers() if n not in persistent}

    def state_dict(self) -> dict[str, Any]:
        return {n: b.detach().clone() for n, b in self._buffers().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, buf in self._buffers().items():
            saved = state.get(name)
            if isinstance(saved, Tensor) and saved.shape == buf.shape:
                with torch.no_grad():
                    buf.copy_(saved.to(buf.device, buf.dtype))


class MetricWindow:
    """Sums of per-step metrics (tensors stay on the device) averaged on logging steps."""

    def __init__(self) -> None:
        self.sums: dict[str, Union[Tensor, float]] = {}
        self.count = 0

    def add(self, values: Mapping[str, Union[Tensor, float]]) -> None:
        for k, v in values.items():
            v = v.detach().float().reshape(()) if isinstance(v, Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def mean(self) -> dict[str, float]:
        """The means as floats, with one device sync for all tensors."""
        if not self.count:
            return {}
        keys = [k for k, v in self.sums.items() if isinstance(v, Tensor)]
        out = {k: float(v) / self.count for k, v in self.sums.items() if not isinstance(v, Tensor)}
        if keys:
            device = self.sums[keys[0]].device  # type: ignore[union-attr]
            stacked = torch.stack([self.sums[k].to(device) for k in keys])  # type: ignore[union-attr]
            out.update({k: v / self.count for k, v in zip(keys, stacked.tolist())})
        return {k: out[k] for k in self.sums}

    def clear(self) -> None:
        self.sums.clear()
        self.count = 0


def run_holds_a_run(out: Path, manager: CheckpointManager) -> Optional[str]:
    """What in ``out`` belongs to an earlier run (None when nothing does)."""
    latest = manager.latest()
    if latest is not None:
        return f"checkpoints up to {latest.name}"
    metrics = out / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        return METRICS_FILE
    return None


def prepare_run_directory(out: Path, manager: CheckpointManager, *, resume: Union[bool, str, PathLike],
                          overwrite: bool, is_main_process: bool = True) -> None:
    """Refuse to start a fresh run in a directory that holds one, or clear it (``overwrite``).

    Resuming keeps the directory; ``overwrite`` deletes the earlier run's checkpoints,
    metrics and images (a token cache stays: it is keyed by content). Crash leftovers
    (unfinished checkpoint and index files) are removed and a checkpoint that was moved
    into place but not indexed is recovered (:meth:`CheckpointManager.recover`).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: resume continues the run "
                          "in the directory, overwrite deletes it")
    if is_main_process:
        manager.recover()
    held = run_holds_a_run(out, manager)
    continues_here = resume is True or str(resume) in ("latest", "best") or (
        bool(resume) and _is_inside(Path(resume), manager.directory))  # type: ignore[arg-type]
    if held is not None and not continues_here:
        if not overwrite:
            raise ConfigError(
                f"{out}: holds an earlier run ({held}); pass --resume to continue it (resume=True), "
                f"or --overwrite to delete it and start afresh (overwrite=True), or choose another "
                f"--out")
        if is_main_process:
            for path in (manager.directory, out / METRICS_FILE, out / IMAGES_DIR):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            log.warning("overwrite: deleted the earlier run in %s (%s)", out, held)
    barrier()  # every rank has looked at the directory before rank 0 writes into it


def _is_inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


class Trainer:
    """The loop and run directory shared by both stages (see the module docstring)."""

    #: The logged metric the divergence guard watches, and the progress-bar label.
    monitor: ClassVar[str] = "loss"
    desc: ClassVar[str] = "train"
    #: Metrics shown on the progress bar.
    progress_keys: ClassVar[tuple[str, ...]] = ("loss",)

    train_cfg: TrainConfig
    step: int
    val_every: Optional[int] = None

    # ------------------------------------------------------------------ set-up
    def _init_runtime(self, train: TrainConfig) -> None:
        """Device, process group, rank and seeds (before any weights are built)."""
        self.device = resolve_device(train.device)
        self.dist = init_distributed(self.device, mode=train.distributed)
        self.device = local_device(self.device, self.dist)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main_process = self.dist.is_main_process
        seed_everything(int(train.seed))

    def _init_bf16(self, optim: Any) -> bool:
        """Resolve ``optim.bf16`` (true, false or ``"auto"``) for this run's device; an
        ``"auto"`` is replaced by the choice made, so the run config (checkpoints,
        ``--resume``) keeps it, and the choice is logged."""
        on, why = resolve_bf16(optim.bf16, self.device)
        if optim.bf16 == "auto":
            optim.bf16 = on
            log.info("bf16 autocast: %s (%s)", "on" if on else "off", why)
        return on

    def _init_run(self, train: TrainConfig, *, best_metric: Optional[str] = None) -> None:
        """Run directory, checkpoint manager and divergence guard."""
        self.train_cfg = train
        self.out = Path(train.out)
        self.ckpt = CheckpointManager(self.out / CHECKPOINT_DIR, keep_last=int(train.keep_last),
                                      best_metric=best_metric, is_main_process=self.is_main_process)
        self.guard = DivergenceGuard(self.monitor, factor=train.divergence_factor,
                                     window=int(train.divergence_window))
        self.step = 0
        self.last_checkpoint: Optional[Path] = None
        self.last_val: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.lr = 0.0
        #: Called as ``hook(trainer, checkpoint_dir)`` after every checkpoint is written
        #: (on every rank; ``checkpoint_dir`` is None off the main process).
        self.checkpoint_hooks: list[Callable[[Any, Optional[Path]], Any]] = []

    # ------------------------------------------------------------------ hooks
    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by checkpoint name."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def stateful(self) -> dict[str, Any]:
        """Extra checkpointed state (data position, EMA ...)."""
        return {}

    def run_config(self) -> dict[str, Any]:
        """The JSON config stored with every checkpoint."""
        raise NotImplementedError

    def batches(self) -> Iterator[Any]:
        """Endless training batches (already on the device)."""
        raise NotImplementedError

    def check_batch(self, batch: Any) -> None:
        """Entry-point checks of a batch (value ranges; may sync). Default: none."""

    def train_step(self, batch: Any) -> dict[str, Union[Tensor, float]]:
        """One optimizer step; increments ``self.step``; returns detached metrics."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        return {}

    def write_images(self) -> Optional[Path]:
        return None

    # ------------------------------------------------------------------ shared pieces
    def lr_at(self, step: int) -> float:
        """``self.lr`` with linear warm-up over ``optim.warmup_steps``, then the
        ``optim.lr_decay`` (cosine: to 0 at ``optim_total_steps``)."""
        warm = int(self.optim_warmup)
        if warm and step < warm:
            return self.lr * (step + 1) / warm
        total = int(self.optim_total_steps)
        if self.optim_decay == "cosine" and total > warm:
            done = min(1.0, (step - warm) / (total - warm))
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * done))
        return self.lr

    optim_warmup: int = 0
    optim_decay: str = "none"
    optim_total_steps: int = 0

    def set_lr(self, step: int) -> None:
        lr = self.lr_at(step)
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                group["lr"] = lr

    def set_step(self, module: nn.Module, step: int) -> None:
        """``set_step(step)`` on every :class:`~taming_core.StepAware` sub-module."""
        for sub in module.modules():
            if isinstance(sub, StepAware):
                sub.set_step(step)

    def image_path(self) -> Path:
        return self.out / IMAGES_DIR / f"step_{self.step:08d}.png"

    def _stateful_all(self) -> dict[str, Any]:
        out = dict(self.stateful())
        out[GUARD_STATE] = self.guard
        out[METRIC_STATE] = _MetricBuffers(self.modules())
        return out

    def save_checkpoint(self, metrics: Optional[Mapping[str, float]] = None) -> Optional[Path]:
        """Write a checkpoint of the current step, after the guard has cleared it."""
        self.guard.check(self.step, last_checkpoint=self.last_checkpoint)
        bad = nonfinite_parameters(self.modules().values())
        if bad is not None:
            raise TrainingError(f"step {self.step}: parameter {bad} holds NaN/Inf; training stopped "
                                f"and the last checkpoint before the divergence is "
                                f"{self.last_checkpoint}. Lower the learning rate or enable "
                                f"gradient clipping, and resume from it")
        path = self.ckpt.save(self.step, modules=self.modules(), optimizers=self.optimizers(),
                              stateful=self._stateful_all(), config=self.run_config(),
                              metrics=dict(metrics or {}))
        if path is not None:
            self.last_checkpoint = path
        barrier()  # no rank runs ahead (or resumes) before rank 0 has written it
        for hook in self.checkpoint_hooks:
            hook(self, path)
        return path

    def resume(self, which: Union[str, PathLike] = "latest") -> int:
        """Restore everything from a checkpoint (``"latest"``, ``"best"`` or a path)."""
        ck = self.ckpt.load(which, modules=self.modules(), optimizers=self.optimizers(),
                            stateful=self._stateful_all(), optional=(GUARD_STATE, METRIC_STATE))
        self.step, self.last_checkpoint = ck.step, ck.path
        self.last_val = {k: v for k, v in ck.metrics.items() if k.startswith("val/")}
        self.after_resume(ck.step)
        log.info("resumed from %s (step %d)", ck.path, ck.step)
        return ck.step

    def after_resume(self, step: int) -> None:
        """Restore step-driven state that is not in the state dicts (default: none)."""

    # ------------------------------------------------------------------ the loop
    def run_step(self, batch: Any, *, check_inputs: bool = False) -> dict[str, Union[Tensor, float]]:
        """One training step as the loop runs it: the entry-point checks of ``batch`` when
        ``check_inputs`` (first and logging steps), then :meth:`train_step` with the
        components' per-call value checks deferred. Returns detached metrics (no sync)."""
        step = self.step + 1
        if check_inputs:
            self.check_batch(batch)
        try:
            # The batch was checked at the entry point (first and logging steps); what the
            # components compute from it is watched by the guard, not by per-call syncs.
            with deferred_value_checks():
                return self.train_step(batch)
        except ValidationError as exc:  # a component refused a NaN/Inf the weights produced
            bad = nonfinite_parameters(self.modules().values())
            if bad is None:
                raise
            raise TrainingError(f"step {step}: parameter {bad} holds NaN/Inf ({exc}); training "
                                f"stopped and the last checkpoint before the divergence is "
                                f"{self.last_checkpoint}. Lower the learning rate or enable "
                                f"gradient clipping, and resume from it") from None

    def fit(self, *, resume: Union[bool, str, PathLike] = False, overwrite: bool = False) -> FitResult:
        """Train until ``train.steps``.

        ``resume=True`` continues from the latest checkpoint in ``OUT/checkpoints`` (a
        fresh start when there is none), a string names a checkpoint (``"latest"``,
        ``"best"`` or a directory). A directory that holds a run is refused unless
        resumed or ``overwrite=True`` (which deletes that run first).
        """
        train = self.train_cfg
        prepare_run_directory(self.out, self.ckpt, resume=resume, overwrite=overwrite,
                              is_main_process=self.is_main_process)
        resumed = False
        if resume:
            if resume is True and self.ckpt.latest() is None:
                log.info("no checkpoint in %s; starting from scratch", self.ckpt.directory)
            else:
                self.resume("latest" if resume is True else resume)
                resumed = True
        total, log_every, ckpt_every = int(train.steps), int(train.log_every), int(train.ckpt_every)
        metrics = MetricsLogger(self.out / METRICS_FILE, resume_step=self.step if resumed else None,
                                is_main_process=self.is_main_process)
        progress = Progress(total, start=self.step, enabled=self.is_main_process and bool(train.progress),
                            desc=self.desc)
        history: list[dict[str, float]] = []
        window = MetricWindow()
        batches = self.batches()
        first = True
        try:
            while self.step < total:
                step = self.step + 1
                final = step == total
                ckpt_step = step % ckpt_every == 0 or final
                log_step = step % log_every == 0 or ckpt_step
                self.set_lr(self.step)
                logs = self.run_step(next(batches), check_inputs=first or log_step)
                first = False
                self.guard.observe(step, logs)
                window.add(logs)
                if log_step:
                    record = reduce_metrics(window.mean(), self.device)  # one sync (+ all-reduce)
                    window.clear()
                    record["lr"] = self.lr_at(step - 1)
                    self.guard.check(step, record, last_checkpoint=self.last_checkpoint)
                    self.last_metrics = record
                    history.append({"step": float(step), **record})
                    metrics.log(step, record)
                if self.val_every and (step % self.val_every == 0 or final):
                    self.last_val = self.evaluate()
                    metrics.log(step, self.last_val, split="val")
                if self.is_main_process and (step % int(train.image_every) == 0 or final):
                    self.write_images()
                if ckpt_step:
                    self.save_checkpoint({**self.last_metrics, **self.last_val})
                progress.update({k: self.last_metrics[k] for k in self.progress_keys
                                 if k in self.last_metrics})
        except TrainingError:
            log.error("training stopped at step %d; last checkpoint before the divergence: %s",
                      self.step, self.last_checkpoint)
            raise
        finally:
            progress.close()
        return FitResult(step=self.step, out=self.out, metrics=dict(self.last_metrics),
                         train_metrics=history, val_metrics=dict(self.last_val),
                         last_checkpoint=self.last_checkpoint)


class _MetricBuffers:
    """:class:`ModuleBuffers` of every trained module, under the module's name."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.parts = {name: ModuleBuffers(m) for name, m in modules.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state.get(name, {}))

"""Stage-1 training: a tokenizer (VQGAN) against the composed VQGAN loss.

Python API::

    from taming_plugins.training.stage1 import TokenizerTrainer, train_tokenizer
    result = TokenizerTrainer(config).fit()          # config: dict or YAML/JSON path
    result = train_tokenizer(config, steps=200, out="runs/vq", resume=True)

The config schema and the original LR rule are documented in
:mod:`taming_plugins.training.stage1_config`.

One step (:meth:`TokenizerTrainer.train_step`) = ``accumulate_grad_batches`` micro-batches:

1. tokenizer update: reconstruct, :meth:`VQGANLoss.generator_loss` (adaptive GAN weight at
   the decoder's last layer), backward, NaN/Inf check, optional grad clipping, Adam step;
2. discriminator update (from ``disc_start`` on): the detached reconstructions of step 1
   (the original recomputes them with a second tokenizer forward; reusing them saves that
   pass), hinge/vanilla/... loss, Adam step;
3. EMA update of the tokenizer weights (optional).

Outputs in ``train.out``: ``metrics.jsonl``, ``images/step_*.png`` (inputs row above
reconstructions row), ``checkpoints/step_*`` (see :mod:`.checkpoint`; modules
``tokenizer`` and ``discriminator``; ``config.json`` holds the resolved run config with the
tokenizer's own ``get_config()``, so stage 2 can rebuild it). ``resume`` restores
tokenizer, discriminator, both optimizers, EMA, RNG states and the data position, and
continues on the same loss trajectory as an uninterrupted run.

DDP-ready structure: :meth:`train_step` holds the model/optimizer logic only; logging,
images and checkpoints run in :meth:`_after_step`, guarded by ``is_main_process``.
Under ``torchrun`` (``train.distributed: auto``) the tokenizer and the discriminator
step run through DistributedDataParallel and the data is sharded per rank; see
:mod:`.distributed` and ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from taming_core import Tokenizer, create_from_spec
from taming_core.errors import ConfigError, TrainingError

from .artifacts import save_image_grid
from .checkpoint import CheckpointManager
from .distributed import (ShardedDataStream, barrier, broadcast_buffers_, broadcast_module_,
                          fast_optimizer_kwargs, init_distributed, local_device, maybe_compile, no_sync,
                          reduce_metrics, use_wrapped, wrap_ddp)
from .ema import EMA
from .loop import DataStream, Progress, check_finite
from .metrics import MetricsLogger
from .stage1_config import learning_rate, resolve_config

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
IMAGES_DIR = "images"
CHECKPOINT_DIR = "checkpoints"
#: Columns of the reconstruction grid (one per validation image shown).
GRID_IMAGES = 8
#: Seed offset of the validation stream so it never aliases the training order.
_VAL_SEED_OFFSET = 7_919


@dataclass
class FitResult:
    """Summary of :meth:`TokenizerTrainer.fit`."""

    step: int
    out: Path
    train_metrics: list[dict[str, float]] = field(default_factory=list)
    val_metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: Optional[Path] = None


def build_component(kind: str, spec: Mapping[str, Any]) -> Any:
    """Build a top-level component, leaving its nested spec dicts to the component.

    ``taming_core.build`` would build a nested ``quantizer: {name: vq}`` before the
    tokenizer can fill in ``codebook_size``/``dim`` from ``n_embed``/``embed_dim``; the
    tokenizer and the VQGAN loss accept spec dicts for their parts and complete them.
    """
    try:
        return create_from_spec(kind, spec)
    except TypeError as exc:
        raise ConfigError(f"{kind}: {kind} {spec['name']!r} rejected its arguments: {exc}") from None


def _float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in metrics.items()}


class TokenizerTrainer:
    """Train a tokenizer with the VQGAN recipe (see the module docstring).

    Args:
        config: run config (dict or YAML/JSON path), see :mod:`.stage1_config`.
        tokenizer, loss: pre-built components instead of the config's specs (optional).
        rank, world_size: process rank / count (only rank 0 logs and writes).
    """

    def __init__(self, config: Any, *, tokenizer: Optional[Tokenizer] = None,
                 loss: Optional[nn.Module] = None, rank: int = 0, world_size: int = 1) -> None:
        from taming_plugins.cli.common import resolve_device, seed_everything

        self.config = resolve_config(config)
        data, optim, train = self.config["data"], self.config["optim"], self.config["train"]
        self.device = resolve_device(str(train["device"]))
        self.dist = init_distributed(self.device, mode=str(train["distributed"]))
        if self.dist.enabled:  # launched by torchrun: rank/world come from the process group
            rank, world_size = self.dist.rank, self.dist.world_size
            self.device = local_device(self.device, self.dist)
        self.rank, self.world_size, self.is_main_process = rank, world_size, rank == 0
        seed_everything(int(train["seed"]))
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else \
            build_component("tokenizer", self.config["tokenizer"])
        self.loss: nn.Module = loss if loss is not None else build_component("loss", self.config["loss"])
        for attr in ("generator_loss", "discriminator_loss", "discriminator", "discriminator_active"):
            if not hasattr(self.loss, attr):
                raise ConfigError(f"loss: {type(self.loss).__name__} lacks {attr!r}; the stage-1 trainer "
                                  f"needs the VQGANLoss interface (loss name 'vqgan')")
        self.tokenizer.to(self.device).train()
        self.loss.to(self.device).train()
        self.discriminator: nn.Module = self.loss.discriminator
        self.lr = learning_rate(optim, int(data["batch_size"]), world_size)
        betas = tuple(float(b) for b in optim["betas"])
        fast = fast_optimizer_kwargs(self.device, optim["fused"])
        self.opt_g = torch.optim.Adam(self.tokenizer.parameters(), lr=self.lr, betas=betas, **fast)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=betas, **fast)
        # DDP wrappers (the modules themselves in one process); checkpoints use the modules.
        self.model: nn.Module = maybe_compile(wrap_ddp(self.tokenizer, self.device), train["compile"])
        self.disc_model: nn.Module = wrap_ddp(self.discriminator, self.device)
        self._disc_synced = not self.dist.enabled
        self.ema = EMA(self.tokenizer, float(optim["ema_decay"])) if optim["ema_decay"] else None
        self.accumulate = int(optim["accumulate_grad_batches"])
        self.grad_clip = optim["grad_clip"]
        self.bf16 = bool(optim["bf16"])
        self.stream = ShardedDataStream(self._dataset("train"), int(data["batch_size"]), rank=rank,
                                        world_size=world_size, seed=int(train["seed"]),
                                        num_workers=int(data["num_workers"]))
        self._val_data: Optional[list[Tensor]] = None
        self.out = Path(train["out"])
        self.ckpt = CheckpointManager(self.out / CHECKPOINT_DIR, keep_last=int(train["keep_last"]),
                                      best_metric=train["best_metric"], is_main_process=self.is_main_process)
        self.step = 0
        self.last_checkpoint: Optional[Path] = None
        self.last_val: dict[str, float] = {}
        log.info("stage-1 trainer: lr %.3g (rule: accumulate %d × world %d × batch %d × base %.3g)",
                 self.lr, self.accumulate, world_size, data["batch_size"], optim["base_learning_rate"])

    # ------------------------------------------------------------------ data
    def _dataset(self, split: str) -> Any:
        from taming_plugins.data import get_dataset

        data = self.config["data"]
        spec = data["train"] if split == "train" or data["val"] is None else data["val"]
        kwargs = dict(data["train_kwargs"] if split == "train" else data["val_kwargs"])
        return get_dataset(spec, int(data["image_size"]), split=split, **kwargs)

    def val_batches(self) -> list[Tensor]:
        """The fixed validation batches (loaded once, same for every evaluation)."""
        if self._val_data is None:
            data = self.config["data"]
            val = self._dataset("val")  # a small held-out split gives one smaller batch
            stream = DataStream(val, min(int(data["batch_size"]), len(val)), shuffle=False,
                                seed=int(self.config["train"]["seed"]) + _VAL_SEED_OFFSET)
            it = iter(stream)
            n = min(int(data["val_batches"]), stream.batches_per_epoch)
            self._val_data = [next(it) for _ in range(n)]
        return self._val_data

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _clip(self, module: nn.Module) -> Optional[float]:
        if self.grad_clip is None:
            return None
        return float(torch.nn.utils.clip_grad_norm_(module.parameters(), float(self.grad_clip)))

    def train_step(self, micro_batches: list[Tensor]) -> dict[str, float]:
        """One tokenizer update and one discriminator update; returns averaged metrics."""
        step, n = self.step, len(micro_batches)
        logs: dict[str, float] = {}

        def add(values: Mapping[str, float]) -> None:
            for k, v in values.items():
                logs[k] = logs.get(k, 0.0) + float(v) / n

        # 1. tokenizer
        self.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        reconstructions = []
        for i, x in enumerate(micro_batches):
            with no_sync(self.model, i < n - 1):  # DDP: all-reduce on the last micro-batch only
                with self._autocast():
                    xrec, enc = self.model(x)
                    loss_g, g_logs = self.loss.generator_loss(x, xrec, enc.loss, step=step,
                                                              last_layer=self.tokenizer.last_layer)
                (loss_g / n).backward()
            reconstructions.append(xrec.detach())
            add(g_logs)
            add({f"q_{k}": v for k, v in _float_metrics(enc.metrics).items()})
        check_finite({"total_loss": logs["total_loss"]}, step=step,
                     last_checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None)
        norm = self._clip(self.tokenizer)
        if norm is not None:
            logs["grad_norm"] = norm
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        # 2. discriminator
        if self.loss.discriminator_active(step):
            if not self._disc_synced:  # data-dependent init (ActNorm) ran on each rank's own batch
                broadcast_module_(self.discriminator)
                self._disc_synced = True
            self.opt_d.zero_grad(set_to_none=True)
            for i, (x, xrec) in enumerate(zip(micro_batches, reconstructions)):
                with use_wrapped(self.loss, "discriminator", self.disc_model), \
                        no_sync(self.disc_model, i < n - 1):
                    with self._autocast():
                        loss_d, d_logs = self.loss.discriminator_loss(x, xrec, step=step)
                    (loss_d / n).backward()
                add(d_logs)
            check_finite({"disc_loss": logs["disc_loss"]}, step=step,
                         last_checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None)
            self._clip(self.discriminator)
            self.opt_d.step()
            broadcast_buffers_(self.discriminator)  # BatchNorm statistics: rank 0's copy everywhere
        # 3. EMA
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        return logs

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def _eval_weights(self) -> Iterator[None]:
        was_training = self.tokenizer.training
        self.tokenizer.eval()
        ctx = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                yield
        finally:
            self.tokenizer.train(was_training)

    def evaluate(self) -> dict[str, float]:
        """Validation L1 (and LPIPS), codebook usage and perplexity over the val batches."""
        perceptual = getattr(self.loss, "perceptual", None)
        sums: dict[str, float] = {"l1": 0.0}
        counts: Optional[Tensor] = None
        vocab = int(self.tokenizer.vocab_size)
        batches = self.val_batches()
        with self._eval_weights():
            for x in batches:
                x = x.to(self.device)
                xrec, enc = self.tokenizer.reconstruct(x)
                sums["l1"] += float((x - xrec).abs().mean())
                if perceptual is not None:
                    sums["lpips"] = sums.get("lpips", 0.0) + float(perceptual(x, xrec).mean())
                c = torch.bincount(enc.indices.reshape(-1).cpu(), minlength=vocab).float()
                counts = c if counts is None else counts + c
        out = {f"val/{k}": v / len(batches) for k, v in sums.items()}
        assert counts is not None
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        out["val/usage"] = float((counts > 0).float().mean())
        out["val/codes_used"] = float((counts > 0).sum())
        out["val/perplexity"] = float(entropy.exp())
        return out

    def save_grid(self) -> Path:
        """PNG of up to 8 validation images (top row) above their reconstructions."""
        x = torch.cat(self.val_batches())[:GRID_IMAGES].to(self.device)
        with self._eval_weights():
            xrec, _ = self.tokenizer.reconstruct(x)
        path = self.out / IMAGES_DIR / f"step_{self.step:08d}.png"
        return save_image_grid(torch.cat([x, xrec.clamp(-1, 1)]), path, nrow=x.shape[0])

    # ------------------------------------------------------------------ checkpoints
    def _modules(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer, "discriminator": self.discriminator}

    def _stateful(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data": self.stream}
        if self.ema is not None:
            out["ema"] = self.ema
        return out

    def checkpoint_config(self) -> dict[str, Any]:
        """The run config with the tokenizer's resolved spec (rebuilds it for stage 2)."""
        cfg = dict(self.config)
        get_config = getattr(self.tokenizer, "get_config", None)
        if callable(get_config):
            cfg["tokenizer"] = {k: v for k, v in get_config().items() if k != "kind"}
        return cfg

    def save_checkpoint(self, metrics: Optional[Mapping[str, float]] = None) -> Optional[Path]:
        path = self.ckpt.save(self.step, modules=self._modules(),
                              optimizers={"tokenizer": self.opt_g, "discriminator": self.opt_d},
                              stateful=self._stateful(), config=self.checkpoint_config(),
                              metrics=metrics or {})
        if path is not None:
            self.last_checkpoint = path
        barrier()  # no rank runs ahead (or resumes) before rank 0 has written it
        return path

    def resume(self, which: Union[str, os.PathLike] = "latest") -> int:
        """Restore everything from a checkpoint (``"latest"``, ``"best"`` or a path)."""
        ck = self.ckpt.load(which, modules=self._modules(),
                            optimizers={"tokenizer": self.opt_g, "discriminator": self.opt_d},
                            stateful=self._stateful())
        self.step, self.last_checkpoint, self.last_val = ck.step, ck.path, dict(ck.metrics)
        # Step-driven schedules that are not in the state dict (Gumbel temperature) advance
        # once per training forward, i.e. per micro-batch.
        for module in self.tokenizer.modules():
            if module is not self.tokenizer and callable(getattr(module, "set_step", None)):
                module.set_step(ck.step * self.accumulate)
        log.info("resumed from %s (step %d)", ck.path, ck.step)
        return ck.step

    # ------------------------------------------------------------------ loop
    def _after_step(self, logs: dict[str, float], progress: Progress, metrics: MetricsLogger,
                    history: list[dict[str, float]]) -> None:
        train, step = self.config["train"], self.step
        logs = reduce_metrics(logs, self.device)  # averaged over ranks (one small all-reduce)
        history.append({"step": float(step), **logs})
        if step % int(train["log_every"]) == 0 or step == int(train["steps"]):
            metrics.log(step, logs)
        final = step == int(train["steps"])
        if step % int(train["val_every"]) == 0 or final:
            self.last_val = self.evaluate()
            metrics.log(step, self.last_val, split="val")
        if self.is_main_process and (step % int(train["image_every"]) == 0 or final):
            self.save_grid()
        if step % int(train["ckpt_every"]) == 0 or final:
            self.save_checkpoint(self.last_val)
        progress.update({k: logs[k] for k in ("total_loss", "l1", "disc_loss") if k in logs})

    def fit(self, *, resume: Union[bool, str, os.PathLike] = False) -> FitResult:
        """Train until ``train.steps``; ``resume=True`` continues from the latest checkpoint
        in ``<out>/checkpoints`` (or from the given checkpoint path)."""
        if resume:
            self.resume("latest" if resume is True else resume)
        total = int(self.config["train"]["steps"])
        metrics = MetricsLogger(self.out / METRICS_FILE, resume_step=self.step if resume else None,
                                is_main_process=self.is_main_process)
        progress = Progress(total, start=self.step,
                            enabled=self.is_main_process and bool(self.config["train"]["progress"]))
        history: list[dict[str, float]] = []
        batches = iter(self.stream)
        try:
            while self.step < total:
                micro = [next(batches).to(self.device, non_blocking=True) for _ in range(self.accumulate)]
                logs = self.train_step(micro)
                self._after_step(logs, progress, metrics, history)
        except TrainingError:
            log.error("training stopped at step %d; last good checkpoint: %s", self.step,
                      self.last_checkpoint)
            raise
        finally:
            progress.close()
        return FitResult(step=self.step, out=self.out, train_metrics=history,
                         val_metrics=dict(self.last_val), last_checkpoint=self.last_checkpoint)


def train_tokenizer(config: Any, *, resume: Union[bool, str, os.PathLike] = False,
                    **train_overrides: Any) -> FitResult:
    """Resolve ``config``, override ``train`` keys (``steps=...``, ``out=...``) and fit."""
    cfg = resolve_config(config)
    cfg["train"].update(train_overrides)
    return TokenizerTrainer(cfg).fit(resume=resume)

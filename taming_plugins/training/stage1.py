"""Stage-1 training: a tokenizer (VQGAN) against the composed VQGAN loss.

Python API::

    from taming_plugins.training.stage1 import TokenizerTrainer, train_tokenizer
    result = TokenizerTrainer(config).fit()          # config: dict or YAML/JSON path
    result = train_tokenizer(config, steps=200, out="runs/vq", resume=True)

The config is a :class:`~taming_plugins.training.config.TokenizerTrainConfig` (sections
``tokenizer``, ``loss``, ``data``, ``optim``, ``train``; a dict or YAML/JSON path is read
with its ``from_dict``); the original LR rule is in :mod:`.stage1_config`. The loop, the
run directory, checkpoints, metrics and the divergence guard are the shared
:class:`~taming_plugins.training.trainer.Trainer`'s.

One step (:meth:`TokenizerTrainer.train_step`) = ``accumulate_grad_batches`` micro-batches:

1. tokenizer update: reconstruct, :meth:`AutoencoderLoss.generator_loss` (adaptive GAN
   weight at :attr:`Tokenizer.last_layer`; without one the loss uses its fixed weight and
   the trainer says so once), backward, optional grad clipping, Adam step;
2. discriminator update (from ``disc_start`` on): the detached reconstructions of step 1
   (the original recomputes them with a second tokenizer forward; reusing them saves that
   pass), hinge/vanilla/... loss, Adam step;
3. EMA update of the tokenizer weights (optional).

Outputs in ``train.out`` (the shared run layout): ``metrics.jsonl``, ``images/step_*.png``
(inputs row above reconstructions row), ``checkpoints/step_*`` (see :mod:`.checkpoint`; modules
``tokenizer`` and ``discriminator``; ``config.json`` holds the resolved run config with the
tokenizer's own ``get_config()``, so stage 2 can rebuild it). ``resume`` restores
tokenizer, discriminator, both optimizers, EMA, RNG states and the data position, and
continues on the same loss trajectory as an uninterrupted run.

DDP-ready structure: :meth:`train_step` holds the model/optimizer logic only; logging,
images and checkpoints run in the shared loop, guarded by ``is_main_process``.
Under ``torchrun`` (``train.distributed: auto``) the tokenizer and the discriminator
step run through DistributedDataParallel and the data is sharded per rank; see
:mod:`.distributed` and ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from taming_core import AutoencoderLoss, Tokenizer, create_from_spec
from taming_core.errors import ConfigError
from taming_core.validation import check_tensor
from taming_plugins.losses.lpips import PERCEPTUAL_AUTO, PERCEPTUAL_NONE, perceptual_choice

from .artifacts import save_image_grid
from .config import TokenizerTrainConfig
from .distributed import (EntryPoint, ShardedDataStream, broadcast_buffers_, broadcast_module_,
                          fast_optimizer_kwargs, maybe_compile, no_sync, use_wrapped, wrap_ddp)
from .ema import EMA
from .loop import DataStream
from .stage1_config import learning_rate
from .trainer import CHECKPOINT_DIR, IMAGES_DIR, METRICS_FILE, FitResult, Trainer

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_DIR", "FitResult", "IMAGES_DIR", "METRICS_FILE", "TokenizerTrainer",
           "build_component", "train_tokenizer"]

#: Columns of the reconstruction grid (one per validation image shown).
GRID_IMAGES = 8
#: Seed offset of the validation stream so it never aliases the training order.
_VAL_SEED_OFFSET = 7_919
#: Registry kind of the stage-1 objective (``vqgan`` is registered there).
LOSS_KIND = "autoencoder_loss"
#: Images are checked against this range at the entry point and on logging steps.
IMAGE_RANGE = (-1.0, 1.0)


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


def build_loss(spec: Mapping[str, Any]) -> AutoencoderLoss:
    """The stage-1 objective from the ``loss`` section (registry kind ``autoencoder_loss``)."""
    loss = build_component(LOSS_KIND, spec)
    if not isinstance(loss, AutoencoderLoss):
        raise ConfigError(f"loss.name: {spec['name']!r} built a {type(loss).__name__}; the stage-1 "
                          f"trainer needs an AutoencoderLoss (e.g. 'vqgan')")
    return loss


class TokenizerTrainer(Trainer):
    """Train a tokenizer with the VQGAN recipe (see the module docstring).

    Args:
        config: a :class:`TokenizerTrainConfig`, or a dict / YAML / JSON path of one.
        tokenizer, loss: pre-built components instead of the config's specs (optional).
    """

    monitor = "total_loss"
    desc = "train-tokenizer"
    progress_keys = ("total_loss", "l1", "disc_loss")

    def __init__(self, config: Any, *, tokenizer: Optional[Tokenizer] = None,
                 loss: Optional[AutoencoderLoss] = None) -> None:
        self.config = TokenizerTrainConfig.from_dict(config)
        data, optim, train = self.config.data, self.config.optim, self.config.train
        self._init_runtime(train)
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else \
            build_component("tokenizer", self.config.tokenizer)
        #: What the perceptual term is, when the config said ``auto``/``none`` (else None).
        self.perceptual_note: Optional[str] = None
        if loss is None and self.config.loss.get("perceptual") in (PERCEPTUAL_AUTO, PERCEPTUAL_NONE):
            # resolved once: the run config (and so every checkpoint and --resume) keeps the choice made
            spec, self.perceptual_note = perceptual_choice(self.config.loss["perceptual"])
            self.config.loss["perceptual"] = spec
            log.info("perceptual loss: %s", self.perceptual_note)
        self.loss: AutoencoderLoss = loss if loss is not None else build_loss(self.config.loss)
        self.tokenizer.to(self.device).train()
        self.loss.to(self.device).train()
        disc = self.loss.discriminator
        self.discriminator: nn.Module = disc if disc is not None else nn.Module()
        self.has_discriminator = disc is not None
        self._init_run(train, best_metric=train.best_metric)
        self.val_every = int(train.val_every)
        self.optim_warmup = int(optim.warmup_steps)
        self.optim_decay = str(optim.lr_decay)
        self.optim_total_steps = int(train.steps)
        self.lr = learning_rate(optim.to_dict(), int(data.batch_size), self.world_size)
        fast = fast_optimizer_kwargs(self.device, optim.fused)
        adam = dict(lr=self.lr, betas=optim.betas, weight_decay=optim.weight_decay, **fast)
        self.opt_g = torch.optim.Adam(self.tokenizer.parameters(), **adam)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), **adam) if self.has_discriminator \
            else None
        # DDP wrappers (the modules themselves in one process); checkpoints use the modules.
        # Tokenizer.reconstruct (the declared training path) behind DDP / torch.compile.
        self.model: nn.Module = maybe_compile(
            wrap_ddp(EntryPoint(self.tokenizer, self.tokenizer.reconstruct), self.device), train.compile)
        self.disc_model: nn.Module = wrap_ddp(self.discriminator, self.device) if self.has_discriminator \
            else self.discriminator
        self._disc_synced = not self.dist.enabled
        self.ema = EMA(self.tokenizer, float(optim.ema_decay)) if optim.ema_decay else None
        self.accumulate = int(optim.accumulate_grad_batches)
        self.grad_clip = optim.grad_clip
        self.bf16 = self._init_bf16(optim)
        self.stream = ShardedDataStream(self._dataset("train"), int(data.batch_size), rank=self.rank,
                                        world_size=self.world_size, seed=int(train.seed),
                                        num_workers=int(data.num_workers))
        self._val_data: Optional[list[Tensor]] = None
        self.last_layer = self.tokenizer.last_layer
        if self.last_layer is None:
            log.warning("%s declares no last_layer: the adaptive GAN weight falls back to the loss's "
                        "fixed disc_weight", type(self.tokenizer).__name__)
        if optim.learning_rate is not None:
            log.info("stage-1 trainer: lr %.3g (optim.learning_rate)", self.lr)
        else:
            log.info("stage-1 trainer: lr %.3g (rule: accumulate %d × world %d × batch %d × base %.3g)",
                     self.lr, self.accumulate, self.world_size, data.batch_size, optim.base_learning_rate)

    # ------------------------------------------------------------------ data
    def _dataset(self, split: str) -> Any:
        from torch.utils.data import Subset

        from taming_plugins.data import get_dataset

        data = self.config.data
        spec = data.train if split == "train" or data.val is None else data.val
        kwargs = dict(data.train_kwargs if split == "train" else data.val_kwargs)
        dataset = get_dataset(spec, int(data.image_size), split=split, **kwargs)
        if split == "train" and data.max_items is not None and data.max_items < len(dataset):
            dataset = Subset(dataset, range(data.max_items))
        return dataset

    def val_batches(self) -> list[Tensor]:
        """The fixed validation batches (loaded once, same for every evaluation)."""
        if self._val_data is None:
            data = self.config.data
            val = self._dataset("val")  # a small held-out split gives one smaller batch
            stream = DataStream(val, min(int(data.batch_size), len(val)), shuffle=False,
                                seed=int(self.config.train.seed) + _VAL_SEED_OFFSET)
            it = iter(stream)
            n = min(int(data.val_batches), stream.batches_per_epoch)
            self._val_data = [next(it) for _ in range(n)]
        return self._val_data

    def batches(self) -> Iterator[list[Tensor]]:
        stream = iter(self.stream)
        while True:
            yield [next(stream).to(self.device, non_blocking=True) for _ in range(self.accumulate)]

    def check_batch(self, batch: list[Tensor]) -> None:
        for x in batch:
            check_tensor(x, "training images", dims=("B", "C", "H", "W"), dtype="float",
                         value_range=IMAGE_RANGE, finite=True)

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _clip(self, module: nn.Module) -> Optional[Tensor]:
        if self.grad_clip is None:
            return None
        return torch.nn.utils.clip_grad_norm_(module.parameters(), float(self.grad_clip))

    def train_step(self, micro_batches: list[Tensor]) -> dict[str, Union[Tensor, float]]:
        """One tokenizer update and one discriminator update; returns averaged metrics as
        detached tensors (no device sync)."""
        step, n = self.step, len(micro_batches)
        logs: dict[str, Union[Tensor, float]] = {}

        def add(values: Mapping[str, Any]) -> None:
            for k, v in values.items():
                v = v.detach() if isinstance(v, Tensor) else float(v)
                logs[k] = logs[k] + v / n if k in logs else v / n

        # 1. tokenizer
        self.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        reconstructions = []
        for i, x in enumerate(micro_batches):
            self.set_step(self.tokenizer, step * self.accumulate + i)
            with no_sync(self.model, i < n - 1):  # DDP: all-reduce on the last micro-batch only
                with self._autocast():
                    xrec, enc = self.model(x)
                    loss_g, g_logs = self.loss.generator_loss(x, xrec, enc.loss, step=step,
                                                              last_layer=self.last_layer)
                (loss_g / n).backward()
            reconstructions.append(xrec.detach())
            add(g_logs)
            add({f"q_{k}": v for k, v in enc.metrics.items()})
        norm = self._clip(self.tokenizer)
        if norm is not None:
            logs["grad_norm"] = norm.detach()
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        # 2. discriminator
        if self.opt_d is not None and self.loss.discriminator_active(step):
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
        """Validation L1 (and the perceptual distance), codebook usage and perplexity."""
        perceptual = self.loss.perceptual
        sums: dict[str, Tensor] = {}
        counts: Optional[Tensor] = None
        vocab = int(self.tokenizer.vocab_size)
        batches = self.val_batches()
        with self._eval_weights():
            for x in batches:
                x = x.to(self.device)
                xrec, enc = self.tokenizer.reconstruct(x)
                parts = {"l1": (x - xrec).abs().mean()}
                if perceptual is not None:
                    parts["lpips"] = perceptual(x, xrec).mean()
                for k, v in parts.items():
                    sums[k] = sums[k] + v.float() if k in sums else v.float()
                c = torch.bincount(enc.indices.reshape(-1), minlength=vocab).float()
                counts = c if counts is None else counts + c
        assert counts is not None
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        names = [f"val/{k}" for k in sums] + ["val/usage", "val/codes_used", "val/perplexity"]
        values = torch.stack([*(v / len(batches) for v in sums.values()), (counts > 0).float().mean(),
                              (counts > 0).sum().float(), entropy.exp()]).tolist()  # one sync
        return dict(zip(names, values))

    def write_images(self) -> Path:
        """PNG of up to 8 validation images (top row) above their reconstructions."""
        x = torch.cat(self.val_batches())[:GRID_IMAGES].to(self.device)
        with self._eval_weights():
            xrec, _ = self.tokenizer.reconstruct(x)
        return save_image_grid(torch.cat([x, xrec.clamp(-1, 1)]), self.image_path(), nrow=x.shape[0])

    save_grid = write_images

    # ------------------------------------------------------------------ checkpoints
    def modules(self) -> dict[str, nn.Module]:
        out = {"tokenizer": self.tokenizer}
        if self.has_discriminator:
            out["discriminator"] = self.discriminator
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        out = {"tokenizer": self.opt_g}
        if self.opt_d is not None:
            out["discriminator"] = self.opt_d
        return out

    def stateful(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data": self.stream}
        if self.ema is not None:
            out["ema"] = self.ema
        return out

    def run_config(self) -> dict[str, Any]:
        """The run config with the tokenizer's resolved spec (rebuilds it for stage 2)."""
        from taming_core import spec_of

        cfg = self.config.to_dict()
        spec = spec_of(self.tokenizer)
        if spec:
            cfg["tokenizer"] = {k: v for k, v in spec.items() if k != "kind"}
        return cfg

    checkpoint_config = run_config

    def after_resume(self, step: int) -> None:
        # Step-driven schedules that are not in the state dict (Gumbel temperature) advance
        # once per training forward, i.e. per micro-batch.
        self.set_step(self.tokenizer, step * self.accumulate)


def train_tokenizer(config: Any, *, resume: Union[bool, str, os.PathLike] = False,
                    overwrite: bool = False, **train_overrides: Any) -> FitResult:
    """Read ``config``, override ``train`` keys (``steps=...``, ``out=...``) and fit."""
    cfg = TokenizerTrainConfig.from_dict(config).to_dict()
    cfg["train"].update(train_overrides)
    return TokenizerTrainer(cfg).fit(resume=resume, overwrite=overwrite)

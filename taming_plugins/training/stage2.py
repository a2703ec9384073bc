"""Stage-2 training: an autoregressive prior over the tokens of a frozen tokenizer.

Pipeline (:class:`PriorTrainer`)::

    frozen tokenizer + dataset --tokenize once--> memory-mapped token cache (token_cache.py)
    cache --DataStream--> [cond ids + offset, image ids] --pkeep / CFG dropout--> gpt
    --cross-entropy on the image tokens--> AdamW (betas 0.9/0.95, decay on Linear weights)

Every ``ckpt_every`` steps a checkpoint is written (safetensors, atomic; prior, optimizer,
data position and RNG states: a resumed run continues on the same loss trajectory) and
every ``sample_every`` steps a PNG grid of samples (``autoregressive`` sampler, decoded by
the tokenizer) next to the reconstructions of the matching training tokens.

Python API::

    from taming_plugins.training.stage2 import PriorTrainConfig, PriorTrainer
    PriorTrainer(PriorTrainConfig(tokenizer="runs/vqgan", out_dir="runs/prior", data="photos",
                                  image_size=64, steps=2000)).fit()

The conditioner (``conditioner`` spec, default ``sos``) and
:class:`~taming_plugins.conditioning.layout.VocabLayout` (``cond_offset``) decide the
prefix; items of a dataset yielding ``(image, condition)`` pairs are conditioned on
their condition (class labels, depth maps...), plain images on nothing (``sos``).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from taming_core import Conditioner, Prior, Tokenizer, create, create_from_spec, get
from taming_core.errors import ConfigError, ValidationError
from taming_core.validation import check_choice, check_positive

from taming_plugins.conditioning._base import ConditionerBase
from taming_plugins.conditioning.layout import VocabLayout
from taming_plugins.conditioning.transforms import drop_condition, random_replace

from taming_plugins.cli.common import resolve_device, seed_everything

from .artifacts import load_frozen_tokenizer, pipeline_after_checkpoint, save_image_grid
from .checkpoint import CheckpointManager
from .distributed import (ShardedDataStream, barrier, init_distributed, local_device, main_process_first,
                          maybe_compile, reduce_metrics, with_fast_kernels, wrap_ddp)
from .loop import Progress, check_finite
from .metrics import MetricsLogger
from .token_cache import TokenCache, build_token_cache

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
CACHE_DIR = "token_cache"
#: Seed mixing for the per-step generators of pkeep/CFG dropout and sampling.
_STEP_SEED_MIX = 1_000_003
_SAMPLE_SEED_OFFSET = 7_919
#: Separates the per-rank pkeep/CFG-dropout streams under DDP (rank 0 keeps offset 0).
_RANK_SEED_OFFSET = 2 ** 40
PRECISIONS = ("fp32", "bf16")

__all__ = ["PriorTrainConfig", "PriorTrainer", "TokenDataset", "TrainedPrior", "load_frozen_tokenizer",
           "load_trained_prior", "train_prior"]


@dataclass
class PriorTrainConfig:
    """Everything a stage-2 run needs (JSON-able; stored with every checkpoint).

    Attributes:
        out_dir: run directory (checkpoints, metrics.jsonl, samples/, token_cache/).
        tokenizer: stage-1 checkpoint directory or original ``.ckpt`` (frozen, not trained);
            may be None when a tokenizer object is passed to :class:`PriorTrainer`.
        data: ``"photos"``, ``"fashion-mnist"`` or an image folder (see ``get_dataset``).
        data_kwargs: extra arguments of the dataset (e.g. ``length`` for photos,
            ``return_labels: true`` for class-conditional Fashion-MNIST).
        max_items: tokenize and train on only the first ``max_items`` items (None: all).
        prior: the prior spec; ``vocab_size``/``block_size`` are filled from the layout.
        conditioner: the conditioner spec (``sos``, ``class_label``...).
        cond_offset: where condition ids start in the prior vocabulary (None: after the
            image codes; 0: the original's shared ids).
        pkeep: probability of keeping each input image token (original ``pkeep``).
        cfg_drop: probability of replacing a sample's condition by the null condition.
        sampler: sampler spec for the periodic sample grids.
        fused: Adam kernels: ``auto`` (fused on CUDA, foreach on CPU) or false.
        compile: ``torch.compile`` the prior (true, or a backend name); default off.
        distributed: ``auto`` (DDP when launched by torchrun) or ``off``; see docs/scaling.md.
    """

    out_dir: str
    tokenizer: Optional[str] = None
    data: str = "photos"
    image_size: int = 64
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    max_items: Optional[int] = None
    prior: dict[str, Any] = field(default_factory=lambda: {
        "name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128})
    conditioner: dict[str, Any] = field(default_factory=lambda: {"name": "sos"})
    cond_offset: Optional[int] = None
    steps: int = 2000
    batch_size: int = 16
    lr: float = 4.5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    grad_clip: Optional[float] = 1.0
    pkeep: float = 1.0
    cfg_drop: float = 0.0
    precision: str = "fp32"
    log_every: int = 50
    ckpt_every: int = 500
    sample_every: int = 500
    num_samples: int = 8
    sampler: dict[str, Any] = field(default_factory=lambda: {
        "name": "autoregressive", "temperature": 1.0, "top_k": 100})
    keep_last: int = 3
    seed: int = 0
    device: str = "auto"
    cache_dir: Optional[str] = None
    encode_batch_size: int = 32
    progress: bool = True
    fused: Any = "auto"
    compile: Any = False
    distributed: str = "auto"

    def __post_init__(self) -> None:
        for name in ("image_size", "steps", "batch_size", "log_every", "ckpt_every", "sample_every",
                     "keep_last", "encode_batch_size"):
            check_positive(getattr(self, name), f"PriorTrainConfig.{name}")
        check_positive(self.num_samples, "PriorTrainConfig.num_samples", allow_zero=True)
        if self.max_items is not None:
            check_positive(self.max_items, "PriorTrainConfig.max_items")
        check_positive(self.warmup_steps, "PriorTrainConfig.warmup_steps", allow_zero=True)
        check_positive(self.lr, "PriorTrainConfig.lr", integer=False)
        for name in ("pkeep", "cfg_drop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"PriorTrainConfig.{name}: expected a probability in [0, 1], got {value!r}")
        check_choice(self.precision, "PriorTrainConfig.precision", PRECISIONS)
        for name in ("prior", "conditioner", "sampler"):
            spec = getattr(self, name)
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ConfigError(f"PriorTrainConfig.{name}: expected a spec with a 'name', got {spec!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PriorTrainConfig":
        """Build from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown stage-2 option; expected one of {', '.join(sorted(known))}")
        missing = [n for n in ("out_dir",) if n not in data]
        if missing:
            raise ConfigError(f"{missing[0]}: required stage-2 option is missing")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TokenDataset(Dataset):
    """Rows of a :class:`TokenCache` as ``(image ids T, condition ids L)`` Long tensors."""

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        tokens, cond = self.cache.batch([index])
        assert cond is not None, "the stage-2 token cache always stores condition ids"
        return tokens[0], cond[0]


def _step_generator(seed: int, step: int, offset: int = 0, *,
                    device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, step): randomness that survives resuming."""
    return torch.Generator(device=device).manual_seed((seed * _STEP_SEED_MIX + step + offset) % (2 ** 63))


class PriorTrainer:
    """Train a prior on the cached tokens of a frozen tokenizer (see module docstring).

    ``dataset`` overrides ``config.data`` (any dataset of images or (image, condition)
    pairs); ``tokenizer`` and ``conditioner`` override ``config.tokenizer`` and
    ``config.conditioner`` with in-memory objects.
    """

    def __init__(self, config: Union[PriorTrainConfig, Mapping[str, Any]], *,
                 dataset: Optional[Dataset] = None, tokenizer: Optional[Tokenizer] = None,
                 conditioner: Optional[Conditioner] = None) -> None:
        self.config = config if isinstance(config, PriorTrainConfig) else PriorTrainConfig.from_dict(config)
        cfg = self.config
        self.out_dir = Path(cfg.out_dir)
        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device, mode=cfg.distributed)  # DDP under torchrun
        self.device = local_device(self.device, self.dist)
        self.is_main_process = self.dist.is_main_process
        if tokenizer is None and cfg.tokenizer is None:
            raise ConfigError("tokenizer: required; give a stage-1 checkpoint directory or an "
                              "original .ckpt")
        self.tokenizer = load_frozen_tokenizer(tokenizer if tokenizer is not None else cfg.tokenizer)
        self.tokenizer.to(self.device)
        self._conditioner_spec: dict[str, Any] = dict(cfg.conditioner) if conditioner is None else {
            "object": f"{type(conditioner).__module__}.{type(conditioner).__qualname__}"}
        if conditioner is None:
            conditioner = self._build_conditioner(cfg.conditioner)
        self.conditioner = conditioner.eval().to(self.device)
        self.dataset = dataset if dataset is not None else self._build_dataset()
        with main_process_first():  # rank 0 tokenizes; the other ranks then reuse its cache
            self.cache = self._build_cache()
        self.layout = VocabLayout(self.tokenizer.vocab_size, self.conditioner.vocab_size, cfg.cond_offset)
        self.cond_len = int(self.cache.cond.shape[1]) if self.cache.cond is not None else 0
        self.seq_len = self.cond_len + int(self.cache.tokens.shape[1])
        seed_everything(cfg.seed)  # the prior's initial weights depend on the seed only
        self.prior = self._build_prior().to(self.device)
        self.optimizer = with_fast_kernels(self._build_optimizer(), self.device, cfg.fused)
        self.model: nn.Module = maybe_compile(wrap_ddp(self.prior, self.device), cfg.compile)
        self.stream = ShardedDataStream(TokenDataset(self.cache), cfg.batch_size, seed=cfg.seed,
                                        rank=self.dist.rank, world_size=self.dist.world_size)
        self.manager = CheckpointManager(self.out_dir, keep_last=cfg.keep_last,
                                         is_main_process=self.is_main_process)
        self.step = 0
        #: Called as ``hook(trainer, checkpoint_dir)`` after every checkpoint save (the
        #: default refreshes OUT/pipeline, see artifacts.pipeline_after_checkpoint).
        self.checkpoint_hooks: list[Any] = [pipeline_after_checkpoint]

    # ------------------------------------------------------------------ building
    @staticmethod
    def _build_conditioner(spec: Mapping[str, Any]) -> Conditioner:
        conditioner = create_from_spec("conditioner", spec)
        conditioner.eval()
        return conditioner

    def _build_dataset(self) -> Dataset:
        from taming_plugins.data import get_dataset

        dataset = get_dataset(self.config.data, self.config.image_size, split="train",
                              **self.config.data_kwargs)
        limit = self.config.max_items
        if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
            dataset = Subset(dataset, range(limit))
        return dataset

    def _build_cache(self) -> TokenCache:
        cfg = self.config
        data_key = {"data": str(cfg.data), "image_size": cfg.image_size, "split": "train",
                    "kwargs": cfg.data_kwargs, "length": len(self.dataset),  # type: ignore[arg-type]
                    "max_items": cfg.max_items,
                    "dataset": type(self.dataset).__qualname__}
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.out_dir / CACHE_DIR
        return build_token_cache(self.tokenizer, self.dataset, cache_dir, data=data_key,
                                 conditioner=self.conditioner, batch_size=cfg.encode_batch_size,
                                 device=self.device, progress=cfg.progress)

    def _build_prior(self) -> Prior:
        spec = {k: v for k, v in self.config.prior.items() if k not in ("name", "kind")}
        for key, needed in (("vocab_size", self.layout.prior_vocab_size), ("block_size", self.seq_len)):
            given = spec.setdefault(key, needed)
            if given < needed:
                raise ConfigError(f"prior.{key}: {given} is too small; the tokens need {needed} "
                                  f"({self.cond_len} condition + {self.seq_len - self.cond_len} image "
                                  f"tokens, vocabulary {self.layout.prior_vocab_size})")
        prior = create("prior", self.config.prior["name"], **spec)
        if not isinstance(prior, Prior):
            raise ConfigError(f"prior.name: {self.config.prior['name']!r} did not build a Prior")
        return prior

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        configure = getattr(self.prior, "configure_optimizers", None)
        if configure is None:
            raise ConfigError(f"prior.name: {type(self.prior).__name__} has no configure_optimizers()")
        return configure(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)

    # ------------------------------------------------------------------ state
    def run_config(self) -> dict[str, Any]:
        """The config stored with checkpoints: how to rebuild prior, layout and sampling."""
        prior_cfg = self.prior.get_config() if hasattr(self.prior, "get_config") else dict(self.config.prior)
        return {"stage2": self.config.to_dict(), "prior": prior_cfg, "layout": self.layout.to_dict(),
                "grid": list(self.cache.grid), "cond_len": self.cond_len,
                "conditioner": self._conditioner_spec, "tokenizer": self.config.tokenizer}

    def _save(self, metrics: Mapping[str, float]) -> Optional[Path]:
        path = self.manager.save(self.step, modules={"prior": self.prior},
                                 optimizers={"prior": self.optimizer}, stateful={"data": self.stream},
                                 config=self.run_config(), metrics=metrics)
        barrier()  # rank 0 has written it before any rank goes on (or resumes from it)
        for hook in self.checkpoint_hooks:
            hook(self, path)
        return path

    def resume(self, which: Union[str, PathLike] = "latest") -> int:
        """Restore prior, optimizer, data position and RNG from a checkpoint; returns its step."""
        ckpt = self.manager.load(which, modules={"prior": self.prior},
                                 optimizers={"prior": self.optimizer}, stateful={"data": self.stream})
        self.step = ckpt.step
        log.info("resumed from %s at step %d", ckpt.path, self.step)
        return self.step

    # ------------------------------------------------------------------ training
    def _lr_at(self, step: int) -> float:
        warm = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / warm) if warm else self.config.lr

    def loss_on(self, tokens: Tensor, cond: Tensor, *, generator: Optional[torch.Generator] = None,
                train: bool = True) -> Tensor:
        """Cross-entropy of image ``tokens`` (Long B×T) given local condition ids ``cond``
        (Long B×L); applies CFG dropout and pkeep replacement when ``train``."""
        cfg = self.config
        inputs = tokens
        if train and cfg.cfg_drop > 0:
            if not isinstance(self.conditioner, ConditionerBase):
                raise ConfigError("cfg_drop: the conditioner defines no null condition")
            cond, _ = drop_condition(cond, self.conditioner, cfg.cfg_drop, generator=generator)
        if train and cfg.pkeep < 1:
            inputs = random_replace(tokens, cfg.pkeep, self.layout.prior_vocab_size, generator=generator)
        seq = torch.cat([self.layout.cond_to_prior(cond), inputs], dim=1)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        with autocast:
            logits = self.model(seq[:, :-1])  # the DDP wrapper under torchrun
        logits = logits[:, self.cond_len - 1:].float() if self.cond_len else logits.float()
        targets = tokens if self.cond_len else tokens[:, 1:]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def _train_step(self, batch: tuple[Tensor, Tensor]) -> float:
        tokens, cond = (t.to(self.device, non_blocking=True) for t in batch)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(self.step)
        loss = self.loss_on(tokens, cond, generator=_step_generator(
            self.config.seed, self.step, self.dist.rank * _RANK_SEED_OFFSET))
        if not bool(torch.isfinite(loss.detach())):  # NaN guard; names the last good checkpoint
            last = self.manager.latest()
            check_finite({"loss": loss}, step=self.step + 1, last_checkpoint=str(last) if last else None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.prior.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def fit(self, *, resume: Union[bool, str, PathLike] = False) -> dict[str, float]:
        """Train up to ``config.steps``; returns the last logged metrics.

        ``resume=True`` continues from the latest checkpoint in ``out_dir`` (if any), a
        string names a checkpoint (``"latest"``, ``"best"`` or a directory).
        """
        cfg = self.config
        if resume:
            if resume is True and self.manager.latest() is None:
                log.info("no checkpoint in %s; starting from scratch", self.out_dir)
            else:
                self.resume("latest" if resume is True else resume)
        metrics_log = MetricsLogger(self.out_dir / METRICS_FILE, resume_step=self.step if resume else None,
                                    is_main_process=self.is_main_process)
        self.prior.train()
        bar = Progress(cfg.steps, start=self.step, enabled=cfg.progress and self.is_main_process,
                       desc="train-prior")
        window: list[float] = []
        last: dict[str, float] = {}
        batches = iter(self.stream)
        try:
            while self.step < cfg.steps:
                batch = next(batches)  # DataStream keeps the global RNG untouched (resume equality)
                window.append(self._train_step(batch))
                shown = {"loss": sum(window) / len(window)}  # the true loss from step 1 on
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    last = reduce_metrics({"loss": sum(window) / len(window),  # mean over ranks
                                           "lr": self._lr_at(self.step - 1)}, self.device)
                    metrics_log.log(self.step, last)
                    window.clear()
                bar.update(last if not window else shown)
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self._save(last)
                if self.is_main_process and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.write_samples()
        finally:
            bar.close()
        return last

    # ------------------------------------------------------------------ sampling
    def _build_sampler(self, cond: Tensor) -> Any:
        """The configured sampler, restricted to image ids (never a condition id) when it
        supports ``vocab_limit``; with a guidance scale and no ``null_condition`` given,
        the conditioner's null condition (shaped like ``cond``, local ids) is used."""
        name = self.config.sampler["name"]
        spec = {k: v for k, v in self.config.sampler.items() if k not in ("name", "kind")}
        accepted = inspect.signature(get("sampler", name)).parameters
        image_vocab = self.layout.image_vocab_size
        if "vocab_limit" in accepted and spec.get("vocab_limit") is None:
            spec["vocab_limit"] = image_vocab
        guided = spec.get("guidance_scale", 1.0) != 1.0
        if guided and spec.get("null_condition") is None and isinstance(self.conditioner, ConditionerBase) \
                and self.conditioner.null_id is not None:
            spec["null_condition"] = self.layout.cond_to_prior(self.conditioner.null_condition(cond[:1]))
        if isinstance(spec.get("top_k"), int):
            spec["top_k"] = min(spec["top_k"], image_vocab)
        return create("sampler", name, **spec)

    @torch.no_grad()
    def write_samples(self, path: Optional[PathLike] = None) -> Optional[Path]:
        """Sample ``num_samples`` grids conditioned like the first cached items and write
        them (top rows) above the reconstructions of those items (bottom rows) as a PNG."""
        n = min(self.config.num_samples, len(self.cache))
        if n == 0:
            return None
        tokens, cond = self.cache.batch(list(range(n)))
        assert cond is not None
        prefix = self.layout.cond_to_prior(cond.to(self.device))
        sampler = self._build_sampler(cond.to(self.device))
        grid = tuple(self.cache.grid)
        if len(grid) != 2:
            raise ValidationError(f"sample grids need a 2-D token grid, the tokenizer gives {grid}")
        was_training = self.prior.training
        self.prior.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        try:  # fork_rng: sampling must not move the training RNG (resume equality)
            with torch.random.fork_rng(devices=devices):
                sampled = sampler.sample(self.prior, grid, batch_size=n, condition=prefix,
                                         generator=_step_generator(self.config.seed, self.step,
                                                                   _SAMPLE_SEED_OFFSET, device=self.device))
        finally:
            self.prior.train(was_training)
        real = tokens.to(self.device).view(n, *grid)
        images = self.tokenizer.decode(torch.cat([sampled.long(), real]))
        target = Path(path) if path is not None else self.out_dir / SAMPLES_DIR / f"step_{self.step:08d}.png"
        save_image_grid(images, target, nrow=n)
        log.info("wrote samples %s", target)
        return target


@dataclass
class TrainedPrior:
    """A stage-2 checkpoint, loaded: the prior (eval mode) and how to feed it.

    Attributes:
        prior: the trained prior.
        layout: where condition ids sit in its vocabulary.
        grid: the image token grid (h, w) it was trained on.
        cond_len: number of prefix (condition) tokens per sequence.
        config: the whole stored run config (``stage2``, ``conditioner``, ``tokenizer``...).
    """

    prior: Prior
    layout: VocabLayout
    grid: tuple[int, ...]
    cond_len: int
    config: dict[str, Any]


def load_trained_prior(path: PathLike, *, device: Union[str, torch.device] = "cpu") -> TrainedPrior:
    """Load a prior written by :class:`PriorTrainer` (a ``step_*`` or run directory)."""
    from .checkpoint import read_checkpoint_config

    manager = CheckpointManager(path)
    ckpt_dir = manager.resolve(path)
    config = read_checkpoint_config(ckpt_dir)
    for key in ("prior", "layout", "grid", "cond_len"):
        if key not in config:
            raise ConfigError(f"{ckpt_dir}: its config.json has no {key!r}; is it a stage-2 checkpoint?")
    prior = create_from_spec("prior", config["prior"])
    manager.load(ckpt_dir, modules={"prior": prior}, restore_rng=False)
    return TrainedPrior(prior.to(device).eval(), VocabLayout.from_dict(config["layout"]),
                        tuple(config["grid"]), int(config["cond_len"]), config)


def train_prior(config: Union[PriorTrainConfig, Mapping[str, Any]], *,
                resume: Union[bool, str, PathLike] = False, **kwargs: Any) -> PriorTrainer:
    """Build a :class:`PriorTrainer`, run :meth:`~PriorTrainer.fit`, return the trainer."""
    trainer = PriorTrainer(config, **kwargs)
    trainer.fit(resume=resume)
    return trainer

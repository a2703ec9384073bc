"""Stage-2 training: a prior over the tokens of a frozen tokenizer.

Pipeline (:class:`PriorTrainer`)::

    frozen tokenizer + dataset --tokenize once--> memory-mapped token cache (token_cache.py)
    cache --DataStream--> image ids + condition ids --pkeep / CFG dropout (trainer side)-->
    prior.loss(tokens, condition, generator=..., inputs=...) --> AdamW over
    prior.parameter_groups(weight_decay)

Any registered :class:`~taming_core.Prior` trains here: the objective is the prior's own
:meth:`~taming_core.Prior.loss` (next-token cross-entropy for autoregressive priors; a
masked prior masks with the step's ``generator``). ``pkeep`` corrupts the *inputs*
(targets stay clean); classifier-free-guidance dropout replaces whole conditions by the
conditioner's :meth:`~taming_core.Conditioner.null_condition`.

The loop, the run directory (``OUT/checkpoints/step_*``, ``OUT/metrics.jsonl``,
``OUT/images/step_*.png``: samples of ``sampler`` (default ``prior.default_sampler``)
above the reconstructions of the matching training tokens), checkpoints (prior,
optimizer, data position and RNG states: a resumed run continues on the same loss
trajectory) and the divergence guard are the shared
:class:`~taming_plugins.training.trainer.Trainer`'s.

Python API::

    from taming_plugins.training.stage2 import PriorTrainConfig, PriorTrainer
    PriorTrainer({"tokenizer": "runs/vqgan", "data": {"train": "photos", "image_size": 64},
                  "train": {"out": "runs/prior", "steps": 2000}}).fit()

The conditioner (``conditioner`` spec, default ``sos``) and
:class:`~taming_plugins.conditioning.layout.VocabLayout` (``train.cond_offset``) decide the
prefix; items of a dataset yielding ``(image, condition)`` pairs are conditioned on
their condition (class labels, depth maps...), plain images on nothing (``sos``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from taming_core import Conditioner, Prior, Tokenizer, create, create_from_spec, get, spec_of
from taming_core.errors import ConfigError, ValidationError
from taming_core.validation import check_tensor

from taming_plugins.conditioning.layout import VocabLayout
from taming_plugins.conditioning.transforms import drop_condition, random_replace

from .artifacts import PipelineAfterCheckpoint, load_frozen_tokenizer, save_image_grid
from .checkpoint import CheckpointManager
from .config import PriorTrainConfig
from .runtime import seed_everything
from .distributed import (EntryPoint, ShardedDataStream, main_process_first, maybe_compile,
                          with_fast_kernels, wrap_ddp)
from .token_cache import TokenCache, build_token_cache
from .trainer import CHECKPOINT_DIR, IMAGES_DIR, METRICS_FILE, FitResult, Trainer

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CACHE_DIR = "token_cache"
#: Seed mixing for the per-step generators of pkeep/CFG dropout and sampling.
_STEP_SEED_MIX = 1_000_003
_SAMPLE_SEED_OFFSET = 7_919
#: Separates the per-rank pkeep/CFG-dropout streams under DDP (rank 0 keeps offset 0).
_RANK_SEED_OFFSET = 2 ** 40

__all__ = ["CHECKPOINT_DIR", "FitResult", "IMAGES_DIR", "METRICS_FILE", "PriorTrainConfig",
           "PriorTrainer", "TokenDataset", "TrainedPrior", "load_frozen_tokenizer",
           "load_trained_prior", "prior_objective", "train_prior"]


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


def prior_objective(prior: Prior, device: torch.device, compile_option: Any = False) -> nn.Module:
    """The trained callable ``(tokens, condition, generator=..., inputs=...) -> loss`` of
    ``prior``: :meth:`Prior.loss` behind a DDP wrapper (under torchrun) and
    ``torch.compile`` (if asked). The one place where stage 2 calls the prior's objective."""
    return maybe_compile(wrap_ddp(EntryPoint(prior, prior.loss), device), compile_option)


class PriorTrainer(Trainer):
    """Train a prior on the cached tokens of a frozen tokenizer (see module docstring).

    ``dataset`` overrides ``config.data`` (any dataset of images or (image, condition)
    pairs); ``tokenizer`` and ``conditioner`` override ``config.tokenizer`` and
    ``config.conditioner`` with in-memory objects.
    """

    monitor = "loss"
    desc = "train-prior"
    progress_keys = ("loss",)

    def __init__(self, config: Union[PriorTrainConfig, Mapping[str, Any], str, os.PathLike], *,
                 dataset: Optional[Dataset] = None, tokenizer: Optional[Tokenizer] = None,
                 conditioner: Optional[Conditioner] = None) -> None:
        self.config = PriorTrainConfig.from_dict(config)
        cfg, train = self.config, self.config.train
        self._init_runtime(train)
        self._init_run(train)
        self.out_dir = self.out
        if tokenizer is None and cfg.tokenizer is None:
            raise ConfigError("tokenizer: required; give a stage-1 checkpoint directory or an "
                              "original .ckpt")
        self.tokenizer = load_frozen_tokenizer(tokenizer if tokenizer is not None else cfg.tokenizer)
        self.tokenizer.to(self.device)
        self._conditioner_spec: dict[str, Any] = dict(cfg.conditioner) if conditioner is None else {
            "object": f"{type(conditioner).__module__}.{type(conditioner).__qualname__}"}
        if conditioner is None:
            conditioner = create_from_spec("conditioner", cfg.conditioner)
        self.conditioner = conditioner.eval().to(self.device)
        if train.cfg_drop > 0 and self.conditioner.null_id is None:
            raise ConfigError(f"train.cfg_drop: the conditioner {type(self.conditioner).__name__} "
                              f"defines no null condition (null_id is None); enable one or set 0")
        self.dataset = dataset if dataset is not None else self._build_dataset()
        with main_process_first():  # rank 0 tokenizes; the other ranks then reuse its cache
            self.cache = self._build_cache()
        self.layout = VocabLayout(self.tokenizer.vocab_size, self.conditioner.vocab_size, train.cond_offset)
        self.cond_len = int(self.cache.cond.shape[1]) if self.cache.cond is not None else 0
        self.seq_len = self.cond_len + int(self.cache.tokens.shape[1])
        #: The null condition as prior ids (Long 1×L) for classifier-free guidance, or None
        #: when the conditioner has none; samplers and the run's pipeline guide with it.
        self.null_prefix: Optional[Tensor] = None
        if self.conditioner.null_id is not None and self.cache.cond is not None and self.cond_len > 0:
            example = self.cache.batch([0])[1]
            self.null_prefix = self.layout.cond_to_prior(self.conditioner.null_condition(example))
        seed_everything(int(train.seed))  # the prior's initial weights depend on the seed only
        self.prior = self._build_prior().to(self.device)
        self.bf16 = self._init_bf16(cfg.optim)
        self.optim_warmup = int(cfg.optim.warmup_steps)
        self.optim_decay = str(cfg.optim.lr_decay)
        self.optim_total_steps = int(cfg.train.steps)
        self.lr = float(cfg.optim.learning_rate)  # type: ignore[arg-type]
        self.optimizer = with_fast_kernels(
            torch.optim.AdamW(self.prior.parameter_groups(float(cfg.optim.weight_decay)), lr=self.lr,
                              betas=cfg.optim.betas), self.device, cfg.optim.fused)
        self.model: nn.Module = prior_objective(self.prior, self.device, train.compile)
        self.stream = ShardedDataStream(TokenDataset(self.cache), cfg.data.batch_size, seed=int(train.seed),
                                        rank=self.rank, world_size=self.world_size)
        self.manager = self.ckpt
        self.checkpoint_hooks.append(PipelineAfterCheckpoint())  # refreshes OUT/pipeline (artifacts)

    # ------------------------------------------------------------------ building
    def _build_dataset(self) -> Dataset:
        from taming_plugins.data import get_dataset

        data = self.config.data
        dataset = get_dataset(data.train, data.image_size, split="train", **data.train_kwargs)
        limit = data.max_items
        if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
            dataset = Subset(dataset, range(limit))
        return dataset

    def _build_cache(self) -> TokenCache:
        data = self.config.data
        data_key = {"data": str(data.train), "image_size": data.image_size, "split": "train",
                    "kwargs": data.train_kwargs, "length": len(self.dataset),  # type: ignore[arg-type]
                    "max_items": data.max_items,
                    "dataset": type(self.dataset).__qualname__}
        cache_dir = Path(data.cache_dir) if data.cache_dir else self.out / CACHE_DIR
        return build_token_cache(self.tokenizer, self.dataset, cache_dir, data=data_key,
                                 conditioner=self.conditioner, batch_size=data.encode_batch_size,
                                 device=self.device, progress=self.config.train.progress)

    def _build_prior(self) -> Prior:
        spec = {k: v for k, v in self.config.prior.items() if k not in ("name", "kind")}
        if "grid" in inspect.signature(get("prior", self.config.prior["name"])).parameters:
            spec.setdefault("grid", list(self.cache.grid))  # grid-shaped priors (pixelcnn)
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

    # ------------------------------------------------------------------ state
    def modules(self) -> dict[str, nn.Module]:
        return {"prior": self.prior}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"prior": self.optimizer}

    def stateful(self) -> dict[str, Any]:
        return {"data": self.stream}

    def run_config(self) -> dict[str, Any]:
        """The config stored with checkpoints: how to rebuild prior, layout and sampling."""
        prior_cfg = spec_of(self.prior) or dict(self.config.prior)
        prior_cfg.pop("kind", None)
        return {"stage2": self.config.to_dict(), "prior": prior_cfg, "layout": self.layout.to_dict(),
                "grid": list(self.cache.grid), "cond_len": self.cond_len,
                "conditioner": self._conditioner_spec, "tokenizer": self.config.tokenizer,
                "null_prefix": None if self.null_prefix is None else self.null_prefix.tolist()}

    # ------------------------------------------------------------------ training
    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in self.stream:  # DataStream keeps the global RNG untouched (resume equality)
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)  # type: ignore[misc]

    def check_batch(self, batch: tuple[Tensor, Tensor]) -> None:
        tokens, cond = batch
        check_tensor(tokens, "training tokens", dims=("B", "T"), dtype="integer",
                     value_range=(0, self.layout.image_vocab_size - 1))
        check_tensor(cond, "training condition ids", dims=("B", None), dtype="integer",
                     value_range=(0, self.layout.cond_vocab_size - 1), nonempty=False)

    def loss_on(self, tokens: Tensor, cond: Tensor, *, generator: Optional[torch.Generator] = None,
                train: bool = True) -> Tensor:
        """The prior's loss on image ``tokens`` (Long B×T) given local condition ids
        ``cond`` (Long B×L); applies CFG dropout and pkeep when ``train``."""
        cfg = self.config.train
        inputs: Optional[Tensor] = None
        if train and cfg.cfg_drop > 0:
            cond, _ = drop_condition(cond, self.conditioner, cfg.cfg_drop, generator=generator)
        if train and cfg.pkeep < 1:
            inputs = random_replace(tokens, cfg.pkeep, self.layout.prior_vocab_size, generator=generator)
        condition = self.layout.cond_to_prior(cond) if self.cond_len else None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with autocast:
            return self.model(tokens, condition, generator=generator, inputs=inputs)  # DDP under torchrun

    def train_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Union[Tensor, float]]:
        tokens, cond = batch
        loss = self.loss_on(tokens, cond, generator=_step_generator(
            int(self.config.train.seed), self.step, self.rank * _RANK_SEED_OFFSET))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        logs: dict[str, Union[Tensor, float]] = {"loss": loss.detach()}
        if self.config.optim.grad_clip is not None:
            logs["grad_norm"] = nn.utils.clip_grad_norm_(self.prior.parameters(),
                                                          self.config.optim.grad_clip).detach()
        self.optimizer.step()
        self.step += 1
        return logs

    # ------------------------------------------------------------------ sampling
    def _build_sampler(self, cond: Tensor) -> Any:
        """The configured sampler (default ``prior.default_sampler``), restricted to image
        ids (never a condition id) when it takes ``vocab_limit``; with a guidance scale and
        no ``null_condition`` given, the conditioner's null condition (shaped like
        ``cond``, local ids) is used."""
        spec = dict(self.config.sampler) if self.config.sampler is not None else {
            "name": self.prior.default_sampler}
        name = spec.pop("name")
        spec.pop("kind", None)
        accepted = inspect.signature(get("sampler", name)).parameters
        image_vocab = self.layout.image_vocab_size
        if "vocab_limit" in accepted and spec.get("vocab_limit") is None:
            spec["vocab_limit"] = image_vocab
        guided = spec.get("guidance_scale", 1.0) != 1.0
        if guided and spec.get("null_condition") is None and self.null_prefix is not None:
            spec["null_condition"] = self.null_prefix.to(cond.device)
        if isinstance(spec.get("top_k"), int):
            spec["top_k"] = min(spec["top_k"], image_vocab)
        return create("sampler", name, **spec)

    @torch.no_grad()
    def write_samples(self, path: Optional[PathLike] = None) -> Optional[Path]:
        """Sample ``num_samples`` grids conditioned like the first cached items and write
        them (top rows) above the reconstructions of those items (bottom rows) as a PNG."""
        n = min(self.config.train.num_samples, len(self.cache))
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
                                         generator=_step_generator(int(self.config.train.seed), self.step,
                                                                   _SAMPLE_SEED_OFFSET, device=self.device))
        finally:
            self.prior.train(was_training)
        real = tokens.to(self.device).view(n, *grid)
        images = self.tokenizer.decode(torch.cat([sampled.long(), real]))
        target = Path(path) if path is not None else self.image_path()
        save_image_grid(images, target, nrow=n)
        log.info("wrote samples %s", target)
        return target

    def write_images(self) -> Optional[Path]:
        return self.write_samples()

    def fit(self, *, resume: Union[bool, str, PathLike] = False, overwrite: bool = False) -> FitResult:
        self.prior.train()
        return super().fit(resume=resume, overwrite=overwrite)


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
                resume: Union[bool, str, PathLike] = False, overwrite: bool = False,
                **kwargs: Any) -> PriorTrainer:
    """Build a :class:`PriorTrainer`, run :meth:`~PriorTrainer.fit`, return the trainer."""
    trainer = PriorTrainer(config, **kwargs)
    trainer.fit(resume=resume, overwrite=overwrite)
    return trainer

"""Trained artifacts shared by trainers, the demo and the CLI: load a frozen tokenizer
(stage-1 run, converted folder or original checkpoint), compose a ready
:class:`~taming_core.Pipeline` from a stage-2 run (``OUT/pipeline``, written by
``train-prior`` with every checkpoint) and write images as PNG (:func:`save_images`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from taming_core import Conditioner, Pipeline, Prior, Tokenizer, create, create_from_spec, get
from taming_core.errors import CheckpointError, ConfigError, TamingError
from taming_core.io import atomic_path, read_json, write_json

from .checkpoint import CONFIG_FILE, RUN_CHECKPOINTS, STATE_FILE, CheckpointManager
from .ema import EMA

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Module name under which the stage-1 trainer stores the tokenizer weights.
TOKENIZER_MODULE = "tokenizer"
#: Stateful entry under which the stage-1 trainer stores the tokenizer's EMA weights.
EMA_STATE = "ema"
#: Sub-directory of a stage-2 run directory holding its ready pipeline.
RUN_PIPELINE = "pipeline"
#: File in ``OUT/pipeline`` naming the checkpoint and tokenizer it was composed from.
PIPELINE_SOURCE_FILE = "source.json"
#: File suffixes of original taming-transformers (Lightning) checkpoints.
ORIGINAL_SUFFIXES = (".ckpt", ".pt", ".pth")


def _freeze(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.eval()
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    return tokenizer


def _stage1_checkpoint(path: Path) -> Optional[Path]:
    """The checkpoint directory a stage-1 path names: a ``step_*`` directory, a directory
    of them, or a run directory with a ``checkpoints/`` sub-directory (latest step)."""
    if (path / STATE_FILE).is_file():
        return path
    for base in (path / RUN_CHECKPOINTS, path):
        latest = CheckpointManager(base).latest() if base.is_dir() else None
        if latest is not None:
            return latest
    return None


def _load_from_run(ckpt: Path, *, use_ema: bool) -> Tokenizer:
    """A tokenizer from a stage-1 checkpoint directory: config + weights (EMA if saved)."""
    config = read_json(ckpt / CONFIG_FILE) if (ckpt / CONFIG_FILE).is_file() else {}
    spec = config.get(TOKENIZER_MODULE)
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{ckpt}: its {CONFIG_FILE} has no '{TOKENIZER_MODULE}' spec with a "
                              f"'name' (keys: {sorted(config)}); is it a stage-1 checkpoint?")
    tokenizer = create_from_spec("tokenizer", spec)
    saved_stateful = read_json(ckpt / STATE_FILE).get("stateful", [])
    ema = EMA(tokenizer) if use_ema and EMA_STATE in saved_stateful else None
    CheckpointManager(ckpt.parent).load(ckpt, modules={TOKENIZER_MODULE: tokenizer},
                                        stateful={EMA_STATE: ema} if ema else None, restore_rng=False)
    if ema is not None:
        ema.copy_to(tokenizer)
        log.info("using the EMA weights of %s", ckpt)
    return tokenizer


def load_frozen_tokenizer(source: Union[PathLike, Tokenizer], *, use_ema: bool = True) -> Tokenizer:
    """A trained tokenizer in eval mode with gradients off.

    ``source`` is a :class:`~taming_core.Tokenizer`, a stage-1 checkpoint directory (a
    ``step_*`` directory or the run directory, whose latest checkpoint is used; with
    ``use_ema`` its EMA weights when it saved them), a
    directory written by ``taming convert``, or an original taming-transformers ``.ckpt``
    (read by :mod:`taming_plugins.compat`).
    """
    if isinstance(source, Tokenizer):
        return _freeze(source)
    path = Path(source).expanduser()
    ckpt = _stage1_checkpoint(path) if path.is_dir() else None
    if ckpt is not None:
        tokenizer = _load_from_run(ckpt, use_ema=use_ema)
    elif path.is_dir() and (path / CONFIG_FILE).is_file():
        from taming_plugins.compat import load_converted

        tokenizer = load_converted(path).tokenizer
    elif path.is_file() and path.suffix.lower() in ORIGINAL_SUFFIXES:
        from taming_plugins.compat import LlamaGenCheckpoint, TamingCheckpoint, load_taming_checkpoint
        from taming_plugins.compat.net2net import Net2NetCheckpoint

        loaded = load_taming_checkpoint(path)  # VQModel/GumbelVQ, Net2Net or LlamaGen
        tokenizer = loaded.tokenizer if isinstance(
            loaded, (TamingCheckpoint, Net2NetCheckpoint, LlamaGenCheckpoint)) else loaded
    else:
        raise CheckpointError(f"{path}: expected a stage-1 checkpoint directory (with {STATE_FILE}), "
                              f"a converted checkpoint directory (with {CONFIG_FILE}) or an original "
                              f"taming checkpoint ({', '.join(ORIGINAL_SUFFIXES)})")
    if not isinstance(tokenizer, Tokenizer):
        raise CheckpointError(f"{path}: loaded a {type(tokenizer).__name__}, expected a tokenizer")
    log.info("loaded tokenizer %s from %s", type(tokenizer).__name__, path)
    return _freeze(tokenizer)


def tokenizer_image_size(source: Union[PathLike, Tokenizer]) -> Optional[int]:
    """The image side a tokenizer was trained at: ``data.image_size`` of a stage-1 run's
    stored config, else the ``resolution`` of its spec (converted or original checkpoints,
    in-memory tokenizers); None when neither says."""
    from taming_core import spec_of

    if not isinstance(source, Tokenizer):
        ckpt = find_checkpoint(source)
        if ckpt is not None and (ckpt / CONFIG_FILE).is_file():
            config = read_json(ckpt / CONFIG_FILE)
            size = (config.get("data") or {}).get("image_size") if isinstance(config, dict) else None
            if isinstance(size, int) and size > 0:
                return size
        source = load_frozen_tokenizer(source)
    resolution = (spec_of(source) or {}).get("resolution")
    return int(resolution) if isinstance(resolution, int) and resolution > 0 else None


def save_image_grid(images: Tensor, path: PathLike, *, nrow: int) -> Path:
    """Write float B×3×H×W images in [-1, 1] as one PNG grid, atomically."""
    from torchvision.utils import save_image

    target = Path(path)
    with atomic_path(target) as tmp:
        save_image(((images.detach().float().cpu() + 1) / 2).clamp(0, 1), tmp, nrow=nrow, format="PNG")
    return target


def save_images(images: Tensor, path: PathLike, *, nrow: Optional[int] = None,
                separate: bool = False, prefix: str = "image_") -> list[Path]:
    """Write float B×3×H×W images in [-1, 1] (what ``Pipeline.generate`` returns) as PNG.

    By default one grid file ``path`` (``nrow`` images per row, about square when None);
    with ``separate=True`` ``path`` is a directory that receives ``{prefix}0000.png``...,
    one file per image. Returns the written paths. Files are written atomically.

    >>> save_images(pipe.generate(8, seed=0), "samples.png")            # doctest: +SKIP
    """
    from taming_core.validation import check_tensor

    check_tensor(images, "save_images(images)", dims=("B", "C", "H", "W"))
    if separate:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        return [save_image_grid(image[None], folder / f"{prefix}{i:04d}.png", nrow=1)
                for i, image in enumerate(images)]
    n = images.shape[0]
    return [save_image_grid(images, path, nrow=nrow or max(1, round(n ** 0.5)))]


# --------------------------------------------------------------------------- pipelines of runs
def _sampler_for(spec: Mapping[str, Any], image_vocab: int, null_prefix: Any = None) -> Any:
    """The run's sampler spec, restricted to image ids (never a condition id); a guided one
    gets ``null_prefix`` (prior ids, 1×L) as its ``null_condition``, stored as lists of ints."""
    import inspect

    name = spec["name"]
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "kind")}
    accepted = inspect.signature(get("sampler", name)).parameters
    if "vocab_limit" in accepted and kwargs.get("vocab_limit") is None:
        kwargs["vocab_limit"] = image_vocab
    if isinstance(kwargs.get("top_k"), int):
        kwargs["top_k"] = min(kwargs["top_k"], image_vocab)
    if kwargs.get("guidance_scale", 1.0) != 1.0:
        null = kwargs.get("null_condition")
        null = null if null is not None else null_prefix
        if null is None:
            kwargs.pop("guidance_scale")
            kwargs.pop("null_condition", None)
            log.warning("the pipeline's %s sampler leaves out classifier-free guidance: the conditioner "
                        "has no null condition", name)
        else:  # lists of ints: pipeline.json holds them (a tensor it could not)
            kwargs["null_condition"] = null.tolist() if isinstance(null, torch.Tensor) else null
    return create("sampler", name, **kwargs)


def compose_pipeline(tokenizer: Tokenizer, prior: Prior, conditioner: Optional[Conditioner], *,
                     cond_offset: int, grid: Sequence[int], sampler: Mapping[str, Any],
                     null_prefix: Any = None) -> Pipeline:
    """A :class:`Pipeline` of a trained tokenizer and prior (the modules are shared, not
    copied); ``sampler`` is a spec (``vocab_limit``/``top_k`` are fitted to the tokenizer;
    with a ``guidance_scale`` it guides with ``null_prefix``, the run's null condition as
    prior ids)."""
    if len(grid) != 2:
        raise ConfigError(f"grid: a pipeline needs a 2-D token grid, the tokenizer gives {tuple(grid)}")
    return Pipeline(tokenizer, prior, _sampler_for(sampler, tokenizer.vocab_size, null_prefix), conditioner,
                    cond_offset=int(cond_offset), grid=(int(grid[0]), int(grid[1])))


def write_run_pipeline(directory: PathLike, pipeline: Pipeline, *, source: Mapping[str, Any]) -> Path:
    """Save ``pipeline`` into ``directory`` (``pipeline.json`` + weights) with ``source.json``
    saying where it came from (checkpoint, step, tokenizer)."""
    target = pipeline.save(directory)
    write_json(target / PIPELINE_SOURCE_FILE, dict(source))
    return target


class PipelineAfterCheckpoint:
    """Checkpoint hook of the stage-2 trainer: refresh ``OUT/pipeline`` from its current
    prior, so ``taming sample --pipeline OUT/pipeline`` works after every kept checkpoint.

    Uses the trainer's ``tokenizer``, ``prior``, ``conditioner``, ``layout``,
    ``cache.grid``, ``config.sampler`` and ``out``; runs on the main process only.
    A component that cannot be saved (an in-memory object without a spec) skips the
    pipeline with one warning (once per run) instead of failing the training run.
    """

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, trainer: Any, checkpoint: Optional[Path]) -> Optional[Path]:
        if checkpoint is None or not trainer.is_main_process:
            return None
        sampler = trainer.config.sampler or {"name": trainer.prior.default_sampler}
        try:
            pipeline = compose_pipeline(trainer.tokenizer, trainer.prior, trainer.conditioner,
                                        cond_offset=trainer.layout.cond_offset,
                                        grid=tuple(trainer.cache.grid), sampler=sampler,
                                        null_prefix=trainer.null_prefix)
            target = write_run_pipeline(Path(trainer.out) / RUN_PIPELINE, pipeline, source={
                "checkpoint": str(checkpoint), "step": int(trainer.step),
                "tokenizer": None if trainer.config.tokenizer is None else str(trainer.config.tokenizer)})
        except TamingError as exc:  # never fail a training run over its convenience pipeline
            if not self.warned:
                log.warning("not writing %s: %s", Path(trainer.out) / RUN_PIPELINE, exc)
                self.warned = True
            return None
        log.info("wrote pipeline %s (step %d)", target, trainer.step)
        return target


def find_checkpoint(path: PathLike) -> Optional[Path]:
    """The checkpoint a run path names: a ``step_*`` directory, or the latest one of a
    run directory (``RUN/checkpoints/step_*`` or ``RUN/step_*``); None if there is none."""
    p = Path(path).expanduser()
    return _stage1_checkpoint(p) if p.is_dir() else None


def pipeline_from_runs(prior_run: PathLike, tokenizer: Optional[Union[PathLike, Tokenizer]] = None, *,
                       device: Union[str, torch.device] = "cpu") -> Pipeline:
    """Compose a pipeline from a stage-2 run (or one of its checkpoints) and its tokenizer.

    ``tokenizer`` defaults to the one the run was trained with (its stored path). The
    conditioner, ``cond_offset``, grid and sampler come from the run's stored config.
    """
    from .stage2 import load_trained_prior

    ckpt = find_checkpoint(prior_run)
    if ckpt is None:
        raise CheckpointError(f"{prior_run}: no stage-2 checkpoint (expected a train-prior run "
                              "directory or one of its step_* directories)")
    trained = load_trained_prior(ckpt, device=device)
    config = trained.config
    source = tokenizer if tokenizer is not None else config.get("tokenizer")
    if source is None:
        raise ConfigError(f"{ckpt}: the run stores no tokenizer path; give the tokenizer")
    tok = load_frozen_tokenizer(source).to(device)
    stored_vocab = trained.layout.image_vocab_size
    if tok.vocab_size != stored_vocab:
        raise CheckpointError(f"tokenizer {source}: {tok.vocab_size} codes, but the prior {ckpt} was "
                              f"trained on a tokenizer with {stored_vocab}")
    spec = config.get("conditioner")
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"{ckpt}: the run's conditioner {spec!r} was an in-memory object; it cannot "
                          "be rebuilt from the checkpoint")
    conditioner = create_from_spec("conditioner", spec).to(device).eval()
    sampler = dict(config.get("stage2", {}).get("sampler") or {"name": trained.prior.default_sampler})
    pipeline = compose_pipeline(tok, trained.prior, conditioner, cond_offset=trained.layout.cond_offset,
                                grid=trained.grid, sampler=sampler, null_prefix=config.get("null_prefix"))
    return pipeline.to(device).eval()

"""Trained artifacts shared by trainers, the demo and the CLI: load a frozen tokenizer
(stage-1 run, converted folder or original checkpoint) and write image grids as PNG."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

from torch import Tensor

from taming_core import Tokenizer, create_from_spec
from taming_core.errors import CheckpointError
from taming_core.io import atomic_path, read_json

from .checkpoint import CONFIG_FILE, RUN_CHECKPOINTS, STATE_FILE, CheckpointManager
from .ema import EMA

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Module name under which the stage-1 trainer stores the tokenizer weights.
TOKENIZER_MODULE = "tokenizer"
#: Stateful entry under which the stage-1 trainer stores the tokenizer's EMA weights.
EMA_STATE = "ema"
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


def save_image_grid(images: Tensor, path: PathLike, *, nrow: int) -> Path:
    """Write float B×3×H×W images in [-1, 1] as one PNG grid, atomically."""
    from torchvision.utils import save_image

    target = Path(path)
    with atomic_path(target) as tmp:
        save_image(((images.detach().float().cpu() + 1) / 2).clamp(0, 1), tmp, nrow=nrow, format="PNG")
    return target

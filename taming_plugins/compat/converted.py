"""Our on-disk format for converted checkpoints (written by ``taming convert``).

Layout of the output directory (same file names as a training checkpoint step)::

    model.safetensors   # "tokenizer.<key>" and "discriminator.<key>" tensors
    config.json         # {"tokenizer": {name: vqgan, ...}, "discriminator": {name: patchgan, ...}}
    original.json       # {"kind": "VQModel", "model": {"target": ..., "params": ...}, "source": ...}

``config.json`` is a plain component config: ``taming_core.build(config.json)`` returns
``{"tokenizer": ..., "discriminator": ...}`` with the right architecture, and
:func:`load_converted` also loads the weights (every key must match exactly).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import taming_core
from taming_core.errors import CheckpointError
from taming_core.io import load_tensors, read_json, save_tensors, write_json

from ._state import load_exact, split_prefix, with_prefix
from .vqgan import TARGETS, TamingCheckpoint, original_params

PathLike = Union[str, os.PathLike]
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ORIGINAL_FILE = "original.json"
TOKENIZER = "tokenizer"
DISCRIMINATOR = "discriminator"
FORMAT = "taming-converted-v1"


def save_converted(out_dir: PathLike, checkpoint: TamingCheckpoint,
                   source: Optional[str] = None) -> Path:
    """Write ``checkpoint`` to ``out_dir`` in our format; returns the directory."""
    out = Path(out_dir)
    modules = {TOKENIZER: checkpoint.tokenizer}
    if checkpoint.discriminator is not None:
        modules[DISCRIMINATOR] = checkpoint.discriminator
    tensors: dict[str, Any] = {}
    for name, module in modules.items():
        tensors.update(with_prefix(module.state_dict(), f"{name}."))
    config = {name: module.get_config() for name, module in modules.items()}
    save_tensors(out / WEIGHTS_FILE, tensors, metadata={"format": FORMAT})
    write_json(out / CONFIG_FILE, config)
    write_json(out / ORIGINAL_FILE, {"format": FORMAT, "kind": checkpoint.kind,
                                     **checkpoint.original_config, "source": source,
                                     "extra": {k: v for k, v in checkpoint.extra.items()
                                               if isinstance(v, (int, float, str))}})
    return out


def load_converted(directory: PathLike) -> TamingCheckpoint:
    """Read a directory written by :func:`save_converted` (modules in eval mode)."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory (expected a converted checkpoint with "
                              f"{WEIGHTS_FILE}, {CONFIG_FILE} and {ORIGINAL_FILE})")
    config = read_json(d / CONFIG_FILE)
    if not isinstance(config, dict) or TOKENIZER not in config:
        raise CheckpointError(f"{d / CONFIG_FILE}: expected a '{TOKENIZER}' entry")
    built = taming_core.build(config)
    tensors = load_tensors(d / WEIGHTS_FILE)
    known = {f"{name}." for name in built}
    stray = [k for k in tensors if not any(k.startswith(p) for p in known)]
    if stray:
        raise CheckpointError(f"{d / WEIGHTS_FILE}: tensors of no configured module: {stray[:10]}")
    for name, module in built.items():
        load_exact(module, split_prefix(tensors, f"{name}."), f"{d / WEIGHTS_FILE} ({name})")
        module.eval()
    tokenizer, disc = built[TOKENIZER], built.get(DISCRIMINATOR)
    original_path = d / ORIGINAL_FILE
    if original_path.is_file():
        original = read_json(original_path)
        kind, params = original.get("kind"), original.get("model", {}).get("params")
    else:
        kind, params = original_params(tokenizer, disc)
    if kind not in TARGETS:
        raise CheckpointError(f"{original_path}: unknown kind {kind!r}")
    return TamingCheckpoint(tokenizer=tokenizer, discriminator=disc, config=params, kind=kind)

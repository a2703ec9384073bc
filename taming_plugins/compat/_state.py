"""State-dict plumbing shared by the original-checkpoint loaders.

* :func:`read_checkpoint` reads a Lightning ``.ckpt`` (or a bare state dict) with
  ``weights_only=True`` and returns its flat ``{key: tensor}`` state dict.
* :func:`split_prefix` / :func:`with_prefix` move key groups between namespaces.
* :func:`load_exact` loads a state dict into a module after checking that the key sets
  and shapes agree exactly, with an error that names the offending keys.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
from collections.abc import Iterable, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from taming_core.errors import CheckpointError
from taming_core.io import atomic_path, torch_load_safe

StateDict = dict[str, Tensor]
#: Keys listed in error messages before "(+N more)".
MAX_LISTED_KEYS = 10


def list_keys(keys: Iterable[str], limit: int = MAX_LISTED_KEYS) -> str:
    """``a, b, c (+N more)`` for error messages."""
    items = sorted(keys)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


#: Top-level entries that hold the weights, tried in this order: Lightning (taming),
#: LlamaGen's ``{"model": ...}`` and DeepSpeed-style ``{"module": ...}`` files.
WEIGHT_ENTRIES = ("state_dict", "model", "module")
#: The one class besides tensors and containers a checkpoint may hold: the
#: ``argparse.Namespace`` under ``args`` in LlamaGen training checkpoints.
SAFE_GLOBALS = (argparse.Namespace,)


def read_checkpoint(path: Union[str, os.PathLike]) -> tuple[StateDict, dict[str, Any]]:
    """Flat state dict and the remaining top-level entries of a checkpoint file.

    Accepts Lightning checkpoints (``{"state_dict": {...}, "global_step": ...}``), LlamaGen
    files (``{"model": {...}}``, training checkpoints also with ``optimizer``, ``steps``
    and an ``argparse.Namespace`` under ``args``), ``{"module": {...}}`` and bare state
    dicts, all read with ``weights_only=True``. Anything else (another pickled object, a
    corrupt file, a dict without tensors) raises :class:`CheckpointError`.
    """
    data = torch_load_safe(path, "an original checkpoint (taming .ckpt or LlamaGen .pt)",
                           safe_globals=SAFE_GLOBALS)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(data).__name__}")
    entry = next((k for k in WEIGHT_ENTRIES if k in data), None)
    if entry is not None:
        state, extra = data[entry], {k: v for k, v in data.items() if k != entry}
    else:
        state, extra = data, {}
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: {entry or 'the state dict'!r} is empty or not a dict")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a state dict of named tensors; not tensors: "
                              f"{list_keys(bad)}")
    return dict(state), extra


def split_prefix(state: Mapping[str, Tensor], prefix: str) -> StateDict:
    """Entries under ``prefix`` (a string ending in '.') with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def with_prefix(state: Mapping[str, Tensor], prefix: str) -> StateDict:
    """Entries with ``prefix`` prepended to every key."""
    return {prefix + k: v for k, v in state.items()}


def drop_ignored(state: Mapping[str, Tensor], patterns: Iterable[str]) -> tuple[StateDict, list[str]]:
    """Split ``state`` into kept entries and the keys matching any fnmatch pattern."""
    pats = tuple(patterns)
    ignored = [k for k in state if any(fnmatch.fnmatchcase(k, p) for p in pats)]
    return {k: v for k, v in state.items() if k not in set(ignored)}, ignored


def check_keys(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` unless ``given`` has exactly the keys and shapes of
    ``expected``; the message names missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in given and given[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {list_keys(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {list_keys(shapes)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def load_exact(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` after :func:`check_keys` (dtype of
    integer buffers such as ``num_batches_tracked`` is kept)."""
    own = module.state_dict()
    check_keys(own, state, what)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def save_lightning_checkpoint(path: Union[str, os.PathLike], state: Mapping[str, Tensor],
                              **extra: Any) -> None:
    """Atomically write ``{"state_dict": state, **extra}`` with ``torch.save``."""
    payload = {"state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()}, **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)

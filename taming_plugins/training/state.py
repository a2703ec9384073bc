"""Pickle-free serialisation of nested training state, and RNG state capture.

Optimizer state dicts, RNG states and other trainer bookkeeping are nested
dicts/lists/tuples mixing tensors with plain numbers. :func:`flatten_state` splits
such a value into a JSON-able skeleton plus a flat ``{key: tensor}`` dict that can go
into a safetensors file; :func:`unflatten_state` reverses it exactly (tuples stay
tuples, int dict keys stay ints, numpy arrays come back as numpy arrays).

Skeleton encoding (only where plain JSON would lose information):

* tensor -> ``{"__tensor__": key}``
* numpy array -> ``{"__ndarray__": key, "dtype": "uint32"}``
* tuple -> ``{"__tuple__": [...]}``
* dict with non-string keys -> ``{"__items__": [[key, value], ...]}``
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from taming_core.errors import CheckpointError

_TENSOR, _NDARRAY, _TUPLE, _ITEMS = "__tensor__", "__ndarray__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _NDARRAY, _TUPLE, _ITEMS)


def flatten_state(value: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``value`` into (JSON skeleton, flat tensors keyed under ``prefix``)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(v: Any, path: str) -> Any:
        if isinstance(v, torch.Tensor):
            tensors[path] = v.detach()
            return {_TENSOR: path}
        if isinstance(v, np.ndarray):
            tensors[path] = torch.from_numpy(v.astype(np.int64) if v.dtype.kind in "ui" else v.copy())
            return {_NDARRAY: path, "dtype": str(v.dtype)}
        if isinstance(v, tuple):
            return {_TUPLE: [walk(x, f"{path}.{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [walk(x, f"{path}.{i}") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) and k not in _MARKERS for k in v):
                return {k: walk(x, f"{path}.{k}") for k, x in v.items()}
            return {_ITEMS: [[k, walk(x, f"{path}.{k}")] for k, x in v.items()]}
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            return v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise CheckpointError(f"cannot serialise {path}: unsupported type {type(v).__name__} "
                              f"(expected tensors, numbers, strings, lists, tuples or dicts)")

    return walk(value, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def tensor(key: str) -> torch.Tensor:
        try:
            return tensors[key]
        except KeyError:
            raise CheckpointError(f"checkpoint is missing tensor {key!r}") from None

    def walk(v: Any) -> Any:
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            if _TENSOR in v:
                return tensor(v[_TENSOR])
            if _NDARRAY in v:
                return tensor(v[_NDARRAY]).numpy().astype(v["dtype"])
            if _TUPLE in v:
                return tuple(walk(x) for x in v[_TUPLE])
            if _ITEMS in v:
                return {k: walk(x) for k, x in v[_ITEMS]}
            return {k: walk(x) for k, x in v.items()}
        return v

    return walk(skeleton)


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of python ``random``, numpy, torch CPU and every CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (CUDA only when available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.to(torch.uint8) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

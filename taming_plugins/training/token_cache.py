"""Tokenize a dataset once into memory-mapped token files for stage-2 training.

Layout of one cache entry in ``cache_dir`` (``KEY`` = first hex digits of the hash)::

    tokens-KEY.npy    N×T image token ids (int16 when they fit, else int32), .npy format
    tokens-KEY.cond.npy  N×L local condition ids (only with a conditioner)
    tokens-KEY.json   metadata; written last, so its presence marks a complete entry

The key hashes the tokenizer's weights, the conditioner's type and weights, the data
description (spec, image size, split, length, seed...) and a fingerprint of a few items. A changed tokenizer or
dataset therefore gets a new entry and a stale cache is never reused. Every file is
written through :func:`taming_core.io.atomic_path`, so an interrupted run leaves no
half-written entry behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from taming_core import Conditioner, Tokenizer
from taming_core.errors import CheckpointError, ValidationError
from taming_core.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Version of the on-disk layout; part of the key so format changes invalidate caches.
CACHE_FORMAT = 1
#: Hex digits of the SHA-256 used in file names.
KEY_CHARS = 20
#: Largest id an int16 file can hold.
INT16_MAX = int(np.iinfo(np.int16).max)
#: Items of the dataset hashed into the key (see :func:`dataset_fingerprint`).
FINGERPRINT_ITEMS = 3
#: Images per tokenizer call while filling the cache.
DEFAULT_ENCODE_BATCH = 32


def _hash_module(h: "hashlib._Hash", module: Optional[nn.Module]) -> None:
    if module is None:
        h.update(b"<none>")
        return
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def cache_key(tokenizer: nn.Module, data: Mapping[str, Any],
              conditioner: Optional[nn.Module] = None) -> str:
    """Hex SHA-256 of the tokenizer/conditioner weights and the data description."""
    h = hashlib.sha256(f"taming-token-cache-v{CACHE_FORMAT}".encode())
    _hash_module(h, tokenizer)
    _hash_module(h, conditioner)
    h.update(json.dumps(dict(data), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _hash_item(h: "hashlib._Hash", item: Any) -> None:
    if isinstance(item, Tensor):
        t = item.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(item, (list, tuple)):
        for part in item:
            _hash_item(h, part)
    else:
        h.update(repr(item).encode())


def dataset_fingerprint(dataset: Dataset, samples: int = FINGERPRINT_ITEMS) -> str:
    """Hex SHA-256 of the length and a few evenly spaced items of ``dataset``: a cheap
    content check so two different datasets with the same description get different keys."""
    n = len(dataset)  # type: ignore[arg-type]
    h = hashlib.sha256(f"len={n}".encode())
    for index in sorted({int(i) for i in np.linspace(0, max(n - 1, 0), num=min(samples, n))}):
        _hash_item(h, dataset[index])
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """int16 when every id fits, else int32."""
    return np.dtype(np.int16) if vocab_size - 1 <= INT16_MAX else np.dtype(np.int32)


@dataclass
class TokenCache:
    """Memory-mapped tokens of a dataset (see module docstring).

    Attributes:
        tokens: N×T image ids (read-only memmap).
        cond: N×L local condition ids, or None.
        grid: the token grid (h, w) (or (h, w, L) for multi-level tokenizers).
        meta: the stored metadata (key, vocabulary sizes, data description...).
    """

    tokens: np.ndarray
    cond: Optional[np.ndarray]
    grid: tuple[int, ...]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def key(self) -> str:
        return str(self.meta["key"])

    def batch(self, index: Union[Tensor, np.ndarray, list[int]]) -> tuple[Tensor, Optional[Tensor]]:
        """Long image tokens B×T and condition ids B×L (or None) for the given rows."""
        rows = np.asarray(index.cpu() if isinstance(index, Tensor) else index, dtype=np.int64)
        tokens = torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.int64))
        cond = None if self.cond is None else torch.from_numpy(np.asarray(self.cond[rows], dtype=np.int64))
        return tokens, cond


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path, Path]:
    stem = f"tokens-{key[:KEY_CHARS]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.cond.npy", cache_dir / f"{stem}.json"


def open_token_cache(cache_dir: PathLike, key: str) -> Optional[TokenCache]:
    """The complete cache entry for ``key``, or None when there is none."""
    tok_path, cond_path, meta_path = _paths(Path(cache_dir), key)
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    if meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
        log.warning("token cache %s does not match key %s; rebuilding", meta_path, key[:KEY_CHARS])
        return None
    try:
        tokens = np.load(tok_path, mmap_mode="r")
        cond = np.load(cond_path, mmap_mode="r") if meta.get("has_cond") else None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{tok_path}: unreadable token cache ({exc}); delete it to rebuild") from None
    if list(tokens.shape) != meta["tokens_shape"] or (cond is not None and list(cond.shape) != meta["cond_shape"]):
        raise CheckpointError(f"{tok_path}: shape {tokens.shape} disagrees with {meta_path}; delete "
                              "the cache entry to rebuild it")
    return TokenCache(tokens, cond, tuple(meta["grid"]), meta)


def _split_item(batch: Any) -> tuple[Tensor, Any]:
    """A collated batch -> (images, condition or None)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], Tensor):
        return batch[0], batch[1]
    raise ValidationError("token cache: dataset items must be an image tensor C×H×W or a pair "
                          f"(image, condition), got a batch of type {type(batch).__name__}")


class _NpyWriter:
    """Streams row chunks into a .npy memmap opened once the row width is known."""

    def __init__(self, path: Path, rows: int, dtype: np.dtype) -> None:
        self.path, self.rows, self.dtype = path, rows, dtype
        self._array: Optional[np.ndarray] = None
        self._start = 0

    def write(self, chunk: np.ndarray) -> None:
        if self._array is None:
            self._array = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                    shape=(self.rows, chunk.shape[1]))
        self._array[self._start:self._start + chunk.shape[0]] = chunk
        self._start += chunk.shape[0]

    def close(self) -> list[int]:
        if self._array is None or self._start != self.rows:
            raise ValidationError(f"token cache: the dataset yielded {self._start} items, expected "
                                  f"{self.rows}")
        shape = list(self._array.shape)
        self._array.flush()
        self._array = None
        return shape


@torch.no_grad()
def _encode_into(tokenizer: Tokenizer, batches: Iterable[Any], n_items: int,
                 conditioner: Optional[Conditioner], device: torch.device, progress: bool,
                 tok_out: _NpyWriter, cond_out: Optional[_NpyWriter]) -> tuple[int, ...]:
    """Encode every batch, streaming ids into the writers; returns the token grid."""
    from tqdm.auto import tqdm

    grid: tuple[int, ...] = ()
    with tqdm(total=n_items, desc="tokenizing", unit="img", disable=not progress, leave=False) as bar:
        for batch in batches:
            images, condition = _split_item(batch)
            indices = tokenizer.encode(images.to(device)).indices
            grid = tuple(int(s) for s in indices.shape[1:])
            tok_out.write(indices.reshape(indices.shape[0], -1).cpu().numpy())
            if conditioner is not None and cond_out is not None:
                source = condition if condition is not None else images
                cond = conditioner(source.to(device) if isinstance(source, Tensor) else source)
                cond_out.write(cond.reshape(cond.shape[0], -1).cpu().numpy())
            bar.update(images.shape[0])
    return grid


def build_token_cache(tokenizer: Tokenizer, dataset: Dataset, cache_dir: PathLike, *,
                      data: Mapping[str, Any], conditioner: Optional[Conditioner] = None,
                      batch_size: int = DEFAULT_ENCODE_BATCH, device: Union[str, torch.device] = "cpu",
                      progress: bool = True) -> TokenCache:
    """Return the cache entry of ``dataset`` tokenized by the frozen ``tokenizer``.

    Reuses an existing entry with the same key; otherwise encodes every item once (in
    order, no shuffling) and writes the entry atomically.

    Args:
        tokenizer: a trained tokenizer (put in eval mode, not modified).
        dataset: items are float C×H×W images in [-1, 1], or ``(image, condition)`` pairs.
        cache_dir: where cache entries live.
        data: JSON-able description of the data (spec, image size, split, length, seed...);
            part of the key.
        conditioner: turns each batch's condition (or, without one, the image batch, for
            ``sos``) into local condition ids that are stored alongside.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise ValidationError(f"build_token_cache(tokenizer): expected a taming Tokenizer, got "
                              f"{type(tokenizer).__name__}")
    n_items = len(dataset)  # type: ignore[arg-type]
    if n_items == 0:
        raise ValidationError("build_token_cache(dataset): the dataset is empty")
    key = cache_key(tokenizer, {**dict(data), "fingerprint": dataset_fingerprint(dataset)}, conditioner)
    cached = open_token_cache(cache_dir, key)
    if cached is not None:
        log.info("reusing token cache %s (%d items)", cached.key[:KEY_CHARS], len(cached))
        return cached
    tok_path, cond_path, meta_path = _paths(Path(cache_dir), key)
    was_training = tokenizer.training
    tokenizer.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    with contextlib.ExitStack() as stack:
        tok_out = _NpyWriter(stack.enter_context(atomic_path(tok_path)), n_items,
                             token_dtype(tokenizer.vocab_size))
        cond_out = None if conditioner is None else _NpyWriter(
            stack.enter_context(atomic_path(cond_path)), n_items, token_dtype(conditioner.vocab_size))
        try:
            grid = _encode_into(tokenizer, loader, n_items, conditioner, torch.device(device),
                                progress, tok_out, cond_out)
        finally:
            tokenizer.train(was_training)
        tokens_shape = tok_out.close()
        cond_shape = None if cond_out is None else cond_out.close()
    meta = {"key": key, "format": CACHE_FORMAT, "data": dict(data), "grid": list(grid),
            "tokens_shape": tokens_shape, "cond_shape": cond_shape, "has_cond": conditioner is not None,
            "image_vocab_size": tokenizer.vocab_size,
            "cond_vocab_size": conditioner.vocab_size if conditioner is not None else None}
    write_json(meta_path, meta)
    log.info("wrote token cache %s: %d items, grid %s", tok_path, n_items, grid)
    cached = open_token_cache(cache_dir, key)
    assert cached is not None
    return cached

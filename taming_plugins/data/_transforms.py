"""Deterministic, seedable augmentation: random square crop, resize, horizontal flip.

Every random choice comes from a generator seeded with ``(seed, epoch, index)``, so
an item is the same whatever the worker process or the order it is asked for in;
a resumed run therefore sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image

#: Seeds mix (seed, epoch, index) with these odd multipliers (any fixed large odd numbers work).
_SEED_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)


def item_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A numpy generator that depends only on (seed, epoch, index)."""
    mixed = (seed * _SEED_MIX[0] + epoch * _SEED_MIX[1] + index * _SEED_MIX[2]) % (2**63)
    return np.random.default_rng(mixed)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> float C×H×W tensor in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def crop_resize_flip(img: Image.Image, size: int, rng: Optional[np.random.Generator], *,
                     crop_scale: tuple[float, float], flip: bool) -> torch.Tensor:
    """Square crop (side = U(crop_scale) × shorter side, random place), resize, maybe flip.

    With ``rng=None`` the crop is the centred full square and there is no flip
    (evaluation/validation).
    """
    w, h = img.size
    short = min(w, h)
    if rng is None:
        side = short
        left, top = (w - side) // 2, (h - side) // 2
    else:
        lo, hi = crop_scale
        side = max(1, int(round(short * rng.uniform(lo, hi))))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC if side < size else Image.Resampling.LANCZOS)
    if rng is not None and flip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(img)

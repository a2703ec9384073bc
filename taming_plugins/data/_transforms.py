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


#: Modes holding one channel of more than 8 bits per pixel, and the value read as white.
#: 16-bit PNG/TIFF open as ``I;16*`` (or ``I``); ``I`` (32-bit int) is read in the same
#: 16-bit range, since that is where such files come from; ``F`` (float TIFF) is read as
#: [0, 1]. Values outside the range are clipped.
WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0,
              "I": 65535.0, "F": 1.0}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, with 16-bit and float images scaled to the 8-bit range.

    ``convert("RGB")`` clips every 16-bit value above 255 to white; wide modes
    (:data:`WIDE_MODES`) are rescaled first. Modes with an alpha channel (``LA``, ``RGBA``,
    ``PA``) lose it, palette and CMYK images are converted by Pillow, 48-bit RGB PNGs
    are already reduced to 8 bits per channel by Pillow's decoder.
    """
    white = WIDE_MODES.get(img.mode)
    if white is not None:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.nan_to_num(arr, nan=0.0) * (255.0 / white), 0.0, 255.0)
        img = Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
    return img.convert("RGB")  # a loaded copy even for RGB (the file may close next)


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

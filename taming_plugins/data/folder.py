"""A recursive image-folder dataset for training on your own images."""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Union

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from taming_core.errors import ValidationError

from ._transforms import crop_resize_flip, item_generator, to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageFolder(Dataset):
    """Every image under ``root`` (recursive), as float 3×size×size tensors in [-1, 1].

    Args:
        root: folder to search for png/jpg/jpeg/webp/bmp files.
        size: output side length.
        random_crop: random square crops (``crop_scale`` of the shorter side) and flips;
            ``False`` gives the centred full square (for evaluation).
        flip: random horizontal flips (only with ``random_crop``).
        crop_scale: range of the crop side relative to the shorter image side.
        seed: augmentation seed; call :meth:`set_epoch` every epoch for fresh crops.

    A file that cannot be decoded is skipped with one warning (the first) and counted
    in :attr:`skipped`; its slot serves the next readable image instead.
    """

    def __init__(self, root: Union[str, os.PathLike], size: int, *, random_crop: bool = True,
                 flip: bool = True, crop_scale: tuple[float, float] = (0.6, 1.0), seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValidationError(f"ImageFolder(root): {str(self.root)!r} is not a directory")
        everything = [p for p in self.root.rglob("*") if p.is_file()]
        self.files = sorted(p for p in everything if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            others = Counter(p.suffix.lower() or "(no extension)" for p in everything)
            skipped = (f"; {len(everything)} other file(s) skipped for their extension "
                       f"({_summary(others)})" if everything else "; the folder is empty")
            raise ValidationError(f"ImageFolder(root): no {'/'.join(IMAGE_EXTENSIONS)} images "
                                  f"under {str(self.root)!r}{skipped}")
        self.size, self.random_crop, self.flip = size, random_crop, flip
        self.crop_scale, self.seed, self.epoch = crop_scale, seed, 0
        self._bad: dict[int, str] = {}
        self._warned = False

    @property
    def skipped(self) -> int:
        """Number of files found unreadable so far."""
        return len(self._bad)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as img:
            return to_rgb(img)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.files)
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            try:
                img = self._open(i)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                self._bad[i] = _reason(exc)
                if not self._warned:
                    self._warned = True
                    warnings.warn(f"ImageFolder: skipping unreadable image {self.files[i]} ({exc}); "
                                  "further unreadable files are skipped silently and counted in "
                                  ".skipped", RuntimeWarning, stacklevel=2)
                else:
                    log.debug("skipping unreadable image %s: %s", self.files[i], exc)
                continue
            rng = item_generator(self.seed, self.epoch, index) if self.random_crop else None
            return crop_resize_flip(img, self.size, rng, crop_scale=self.crop_scale, flip=self.flip)
        reasons = Counter(self._bad.values())
        raise ValidationError(f"ImageFolder: no readable image under {str(self.root)!r}: all {n} "
                              f"image file(s) skipped ({_summary(reasons)})")


def _reason(exc: BaseException) -> str:
    """Why a file could not be read, without its path (so equal reasons group)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can identify"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _summary(counts: Counter) -> str:
    """``"2 × reason a, 1 × reason b"``, most frequent first, at most four reasons."""
    parts = [f"{n} × {what}" for what, n in counts.most_common(4)]
    if len(counts) > 4:
        parts.append(f"{sum(counts.values()) - sum(n for _, n in counts.most_common(4))} × other")
    return ", ".join(parts)

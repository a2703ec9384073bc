"""A recursive image-folder dataset for training on your own images."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Union

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from taming_core.errors import ValidationError

from ._transforms import crop_resize_flip, item_generator

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
        self.files = sorted(p for p in self.root.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise ValidationError(f"ImageFolder(root): no {'/'.join(IMAGE_EXTENSIONS)} images "
                                  f"under {str(self.root)!r}")
        self.size, self.random_crop, self.flip = size, random_crop, flip
        self.crop_scale, self.seed, self.epoch = crop_scale, seed, 0
        self._bad: set[int] = set()
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
            return img.convert("RGB")

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.files)
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            try:
                img = self._open(i)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                self._bad.add(i)
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
        raise ValidationError(f"ImageFolder: none of the {n} files under {str(self.root)!r} is readable")

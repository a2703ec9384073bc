"""A recursive image-folder dataset for training on your own images.

Conventions:

* **Held-out split.** ``split="train"`` and ``split="val"`` partition the files: a fixed
  ``holdout`` fraction of them (at least one when there are two or more; chosen by a
  hash of the relative path, so adding files does not reshuffle the others; per
  top-level sub-folder, i.e. per class) is never returned by ``"train"``. ``split="all"`` is every
  file (e.g. to evaluate a separate test folder).
* **Classes.** With ``return_labels=True`` the folder follows torchvision's
  ``ImageFolder`` convention: one sub-folder per class (``root/cat/*.png``,
  ``root/dog/*.jpg``...); items are ``(image, label)`` with labels in the sorted order
  of the class names (:attr:`ImageFolder.classes`).
* **Several crops per image.** ``crops_per_image=k`` makes every file ``k`` items, each
  its own random crop (fixed per item and epoch; item ``i`` is a crop of file ``i mod n``,
  so the first items span every file); ``"auto"`` picks ``k`` so that a small
  folder still gives about :data:`AUTO_MIN_ITEMS` items (see :func:`default_crops_per_image`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from taming_core.errors import ValidationError
from taming_core.validation import check_choice

from ._transforms import crop_resize_flip, item_generator, to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "all")
#: Default fraction of the files held out for ``split="val"``.
DEFAULT_HOLDOUT = 0.1
#: ``crops_per_image="auto"`` aims at about this many items ...
AUTO_MIN_ITEMS = 2048
#: ... with at most this many crops of one image.
AUTO_MAX_CROPS = 256
#: Seed offset of the (fixed) random crops of the held-out split.
_VAL_SEED = 10_007


def default_crops_per_image(n_images: int, *, min_items: int = AUTO_MIN_ITEMS,
                            max_crops: int = AUTO_MAX_CROPS) -> int:
    """Crops per image so that ``n_images`` images give about ``min_items`` items
    (1 for folders that are large enough, at most ``max_crops``)."""
    if n_images <= 0:
        raise ValidationError(f"default_crops_per_image: expected at least one image, got {n_images}")
    return max(1, min(max_crops, math.ceil(min_items / n_images)))


def _held_out(files: list[Path], root: Path, fraction: float) -> set[Path]:
    """The files of one group that form its held-out part (see module docstring)."""
    if fraction <= 0 or len(files) < 2:
        return set()
    n_val = min(len(files) - 1, max(1, round(len(files) * fraction)))
    ranked = sorted(files, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())
    return set(ranked[:n_val])


class ImageFolder(Dataset):
    """Images under ``root`` (recursive), as float 3×size×size tensors in [-1, 1].

    Args:
        root: folder to search for png/jpg/jpeg/webp/bmp files.
        size: output side length.
        random_crop: random square crops (``crop_scale`` of the shorter side) and flips;
            ``False`` gives the centred full square (for evaluation).
        flip: random horizontal flips (only with ``random_crop``).
        crop_scale: range of the crop side relative to the shorter image side.
        seed: augmentation seed; call :meth:`set_epoch` every epoch for fresh crops.
        split: ``"train"``, ``"val"`` (the held-out files) or ``"all"`` (module docstring).
        holdout: fraction of the files held out from ``"train"`` (0 disables the split).
        crops_per_image: items per file (an int or ``"auto"``).
        return_labels: items are ``(image, class index)`` (one sub-folder per class).

    A file that cannot be decoded is skipped with one warning (the first) and counted
    in :attr:`skipped`; its slot serves the next readable image instead.
    """

    def __init__(self, root: Union[str, os.PathLike], size: int, *, random_crop: bool = True,
                 flip: bool = True, crop_scale: tuple[float, float] = (0.6, 1.0), seed: int = 0,
                 split: str = "all", holdout: float = DEFAULT_HOLDOUT,
                 crops_per_image: Union[int, str] = 1, return_labels: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValidationError(f"ImageFolder(root): {str(self.root)!r} is not a directory")
        check_choice(split, "ImageFolder(split)", SPLITS)
        if not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
            raise ValidationError(f"ImageFolder(holdout): expected a fraction in [0, 1), got {holdout!r}")
        everything = [p for p in self.root.rglob("*") if p.is_file()]
        found = sorted(p for p in everything if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            others = Counter(p.suffix.lower() or "(no extension)" for p in everything)
            skipped = (f"; {len(everything)} other file(s) skipped for their extension "
                       f"({_summary(others)})" if everything else "; the folder is empty")
            raise ValidationError(f"ImageFolder(root): no {'/'.join(IMAGE_EXTENSIONS)} images "
                                  f"under {str(self.root)!r}{skipped}")
        self.return_labels = bool(return_labels)
        groups: dict[str, list[Path]] = {}
        for p in found:
            parts = p.relative_to(self.root).parts
            if self.return_labels and len(parts) < 2:
                raise ValidationError(
                    f"ImageFolder(return_labels=True): {p.name} lies directly in {str(self.root)!r}; "
                    "expected one sub-folder per class (root/CLASS/image.png)")
            # held-out files are chosen per top-level sub-folder whether or not labels are asked
            # for, so stage 1 (images) and a class-conditional stage 2 hold out the same files
            groups.setdefault(parts[0] if len(parts) >= 2 else "", []).append(p)
        #: Class names (sorted sub-folder names) with ``return_labels``, else empty.
        self.classes: list[str] = sorted(groups) if self.return_labels else []
        held: set[Path] = set()
        for files in groups.values():
            held |= _held_out(files, self.root, float(holdout))
        if split == "val" and not held:
            raise ValidationError(f"ImageFolder(split='val'): {str(self.root)!r} has no held-out images "
                                  f"({len(found)} file(s), holdout {holdout}); use split='all'")
        keep = {"train": lambda p: p not in held, "val": lambda p: p in held, "all": lambda p: True}[split]
        self.files = [p for p in found if keep(p)]
        label_of = {name: i for i, name in enumerate(self.classes)}
        self.labels = [label_of[p.relative_to(self.root).parts[0]] if self.return_labels else 0
                       for p in self.files]
        #: Number of files of the folder held out from ``split="train"``.
        self.held_out = len(held)
        self.split = split
        if crops_per_image == "auto":
            crops_per_image = default_crops_per_image(len(self.files))
        if isinstance(crops_per_image, bool) or not isinstance(crops_per_image, int) or crops_per_image < 1:
            raise ValidationError(f"ImageFolder(crops_per_image): expected a positive int or 'auto', "
                                  f"got {crops_per_image!r}")
        self.crops_per_image = int(crops_per_image)
        self.size, self.flip = size, flip
        # several fixed crops of a held-out image are random crops too (else they would be equal)
        self.random_crop = random_crop or self.crops_per_image > 1
        self.crop_scale, self.epoch = crop_scale, 0
        self.seed = seed if random_crop else seed + _VAL_SEED
        self._fixed = not random_crop  # evaluation crops stay the same every epoch
        self._bad: dict[int, str] = {}
        self._warned = False

    @property
    def skipped(self) -> int:
        """Number of files found unreadable so far."""
        return len(self._bad)

    @property
    def num_images(self) -> int:
        """Number of image files in this split (items = files × ``crops_per_image``)."""
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        if not self._fixed:
            self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files) * self.crops_per_image

    def _open(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as img:
            return to_rgb(img)

    def __getitem__(self, index: int):
        n = len(self.files)
        if not 0 <= index < len(self):
            raise IndexError(f"ImageFolder index {index} out of range [0, {len(self)})")
        first = index % len(self.files)  # item i: crop i // n of file i % n (the first n items span every file)
        for offset in range(n):
            i = (first + offset) % n
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
            rng = self._rng(index)
            flip = self.flip and not self._fixed
            image = crop_resize_flip(img, self.size, rng, crop_scale=self.crop_scale, flip=flip)
            return (image, self.labels[i]) if self.return_labels else image
        reasons = Counter(self._bad.values())
        raise ValidationError(f"ImageFolder: no readable image under {str(self.root)!r}: all {n} "
                              f"image file(s) skipped ({_summary(reasons)})")

    def _rng(self, index: int):
        if not self.random_crop:
            return None
        if self._fixed and self.crops_per_image == 1:
            return None
        return item_generator(self.seed, self.epoch, index)

    def describe(self) -> str:
        """One line with the true counts, e.g. for log messages."""
        what = {"train": "training", "val": "held-out", "all": "all"}[self.split]
        text = f"{len(self.files)} {what} image(s) of {str(self.root)!r}"
        if self.crops_per_image > 1:
            text += f" × {self.crops_per_image} crops = {len(self)} items"
        if self.classes:
            text += f" in {len(self.classes)} classes ({', '.join(self.classes)})"
        return text


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

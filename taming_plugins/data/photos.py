"""Random crops of the real colour photos that ship inside scikit-image.

These CC0 photos load offline from the scikit-image wheel, so the demo, tests and
benchmarks train on real images on any machine. ``split="val"`` draws crops from
photos never used for training, so held-out numbers are honest.
"""

from __future__ import annotations

import functools

import torch
from PIL import Image
from torch.utils.data import Dataset

from taming_core.validation import check_choice, check_positive

from ._transforms import crop_resize_flip, item_generator

#: skimage.data loaders of the colour photos used for training.
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                "immunohistochemistry", "retina")
#: Held-out photos for validation (never seen in training).
VAL_PHOTOS = ("stereo_motorcycle",)
#: Seed offset so validation crops differ from any training seed.
_VAL_SEED = 10_007


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> Image.Image:
    """One bundled photo as an RGB PIL image (cached)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if isinstance(arr, tuple):  # stereo_motorcycle returns (left, right, disparity)
        arr = arr[0]
    return Image.fromarray(arr).convert("RGB")


class BundledPhotos(Dataset):
    """``length`` random square crops of the bundled photos, float 3×size×size in [-1, 1].

    Args:
        size: output side length.
        split: ``"train"`` (7 photos) or ``"val"`` (held-out photos, fixed crops).
        length: number of items per epoch (crops are drawn, not enumerated).
        crop_scale: range of the crop side relative to the photo's shorter side.
        flip: random horizontal flips (train only).
        seed: augmentation seed; :meth:`set_epoch` gives fresh crops each epoch.
    """

    def __init__(self, size: int, *, split: str = "train", length: int = 1024,
                 crop_scale: tuple[float, float] = (0.1, 0.5), flip: bool = True, seed: int = 0) -> None:
        check_positive(size, "BundledPhotos(size)")
        check_positive(length, "BundledPhotos(length)")
        check_choice(split, "BundledPhotos(split)", ("train", "val"))
        self.size, self.split, self.length = size, split, length
        self.crop_scale, self.flip, self.epoch = crop_scale, flip and split == "train", 0
        self.seed = seed if split == "train" else seed + _VAL_SEED
        self.names = TRAIN_PHOTOS if split == "train" else VAL_PHOTOS
        self.photos = [load_photo(n) for n in self.names]

    def set_epoch(self, epoch: int) -> None:
        if self.split == "train":  # validation crops stay fixed
            self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"BundledPhotos index {index} out of range [0, {self.length})")
        rng = item_generator(self.seed, self.epoch, index)
        photo = self.photos[int(rng.integers(len(self.photos)))]
        return crop_resize_flip(photo, self.size, rng, crop_scale=self.crop_scale, flip=self.flip)

"""Datasets: your own image folders and the bundled real images.

:func:`get_dataset` is the one front door used by trainers, benchmarks and the CLI:
``"photos"`` (crops of scikit-image's photos), ``"fashion-mnist"`` (Debian's
package), or a path to an image folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from torch.utils.data import Dataset

from taming_core.errors import ValidationError

from .fashion_mnist import FashionMNIST
from .folder import IMAGE_EXTENSIONS, ImageFolder
from .photos import BundledPhotos

BUILTIN_DATASETS = ("photos", "fashion-mnist")


def get_dataset(spec: Union[str, os.PathLike], size: int, *, split: str = "train", **kwargs: Any) -> Dataset:
    """Build a dataset of float 3×size×size images in [-1, 1] from a name or folder.

    ``split`` is ``"train"`` or ``"val"``; for image folders ``"val"`` means centred crops
    without augmentation; for Fashion-MNIST ``"val"`` is its test split.
    Extra keyword arguments go to the dataset class.
    """
    name = str(spec)
    if name == "photos":
        return BundledPhotos(size, split=split, **kwargs)
    if name == "fashion-mnist":
        return FashionMNIST("train" if split == "train" else "test", size=size, rgb=True, **kwargs)
    path = Path(name).expanduser()
    if path.is_dir():
        return ImageFolder(path, size, random_crop=(split == "train"), **kwargs)
    raise ValidationError(f"dataset {name!r}: expected one of {', '.join(BUILTIN_DATASETS)} or an "
                          f"existing image folder")


__all__ = ["BUILTIN_DATASETS", "BundledPhotos", "FashionMNIST", "IMAGE_EXTENSIONS", "ImageFolder",
           "get_dataset"]

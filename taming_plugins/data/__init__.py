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
from .folder import IMAGE_EXTENSIONS, ImageFolder, default_crops_per_image
from .photos import BundledPhotos

BUILTIN_DATASETS = ("photos", "fashion-mnist")


def get_dataset(spec: Union[str, os.PathLike], size: int, *, split: str = "train", **kwargs: Any) -> Dataset:
    """Build a dataset of float 3×size×size images in [-1, 1] from a name or folder.

    ``split`` is ``"train"`` or ``"val"`` (data never trained on): for image folders
    ``"val"`` is the held-out part of the files (centred crops, see
    :class:`~taming_plugins.data.folder.ImageFolder`) and ``"all"`` every file; for the
    bundled photos ``"val"`` is a photo never used for training; for Fashion-MNIST its
    test split. Extra keyword arguments go to the dataset class (``crops_per_image``,
    default ``"auto"`` for a folder's training split, ``return_labels``, ``holdout``).
    """
    name = str(spec)
    if name in BUILTIN_DATASETS and Path(name).is_dir():
        raise ValidationError(f"dataset {name!r} is ambiguous: it names the bundled dataset and the folder "
                              f"./{name} here; write ./{name} (or its full path) for the folder, or run from "
                              f"another directory for the bundled one")
    if split == "all" and name in BUILTIN_DATASETS:
        split = "val"  # the built-in sets evaluate on their held-out part
    if name == "photos":
        return BundledPhotos(size, split=split, **kwargs)
    if name == "fashion-mnist":
        return FashionMNIST("train" if split == "train" else "test", size=size, rgb=True, **kwargs)
    path = Path(name).expanduser()
    if path.is_dir():
        kwargs.setdefault("random_crop", split == "train")
        if split == "train":  # a small folder still gives enough training items
            kwargs.setdefault("crops_per_image", "auto")
        return ImageFolder(path, size, split=split, **kwargs)
    raise ValidationError(f"dataset {name!r}: expected one of {', '.join(BUILTIN_DATASETS)} or an "
                          f"existing image folder")


__all__ = ["BUILTIN_DATASETS", "BundledPhotos", "FashionMNIST", "IMAGE_EXTENSIONS", "ImageFolder",
           "default_crops_per_image", "get_dataset"]

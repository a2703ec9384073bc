"""Real-image train/held-out tensors for the quantizer benchmark.

Small benchmarks train faster from one preloaded tensor than through a
DataLoader, so each set is materialised once (a few thousand images) and batches
are drawn from it with a seeded generator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from taming_core.errors import ValidationError

log = logging.getLogger(__name__)

#: Side length of the photo crops (a multiple of the autoencoder's downsampling).
PHOTO_SIZE = 32
#: Fraction of an image folder's files held out for evaluation.
FOLDER_HOLDOUT = 0.1
#: How to get Fashion-MNIST where Debian's package is not installed.
FASHION_HINT = ("Fashion-MNIST comes from Debian's package: apt-get install dataset-fashion-mnist "
                "(files under /usr/share/datasets/fashion-mnist); elsewhere download the four IDX "
                "files from https://github.com/zalandoresearch/fashion-mnist and set "
                "TAMING_FASHION_MNIST to their folder")


@dataclass
class ImageSet:
    """Preloaded train and held-out images, float N×C×H×W in [-1, 1]."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    description: str


def _stack(dataset: Dataset, count: int) -> torch.Tensor:
    return torch.stack([dataset[i] for i in range(min(count, len(dataset)))])  # type: ignore[arg-type]


def fashion_mnist(train_count: int, val_count: int) -> ImageSet:
    """The first images of Fashion-MNIST's train and test splits (1×28×28)."""
    from taming_plugins.data import FashionMNIST

    train = _stack(FashionMNIST("train", limit=train_count), train_count)
    val = _stack(FashionMNIST("test", limit=val_count), val_count)
    return ImageSet("fashion-mnist", train, val,
                    f"Fashion-MNIST 1×28×28: {len(train)} train / {len(val)} test images")


def photos(train_count: int, val_count: int, seed: int) -> ImageSet:
    """Random crops of scikit-image's colour photos; held-out crops come from unseen photos."""
    from taming_plugins.data import BundledPhotos

    train = _stack(BundledPhotos(PHOTO_SIZE, split="train", length=train_count, seed=seed), train_count)
    val = _stack(BundledPhotos(PHOTO_SIZE, split="val", length=val_count, seed=seed), val_count)
    return ImageSet("photos", train, val,
                    f"scikit-image photo crops 3×{PHOTO_SIZE}×{PHOTO_SIZE}: {len(train)} train crops, "
                    f"{len(val)} held-out crops of photos never trained on")


def image_folder(root: str, size: int, train_count: int, val_count: int, seed: int) -> ImageSet:
    """Random crops of the first 90% of a folder's files (shuffled); centred views of the rest."""
    from taming_plugins.data import ImageFolder

    train_ds = ImageFolder(root, size, random_crop=True, seed=seed)
    val_ds = ImageFolder(root, size, random_crop=False)
    n = len(train_ds)
    if n < 2:
        raise ValidationError(f"--data {root!r}: need at least 2 images to hold one out, found {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, int(n * FOLDER_HOLDOUT))
    val_ids, train_ids = order[:held], order[held:]
    train = torch.stack([train_ds[train_ids[i % len(train_ids)]] for i in range(train_count)])
    val = torch.stack([val_ds[val_ids[i]] for i in range(min(val_count, len(val_ids)))])
    return ImageSet(Path(root).name or root, train, val,
                    f"image folder {root}: {len(train)} train crops of {len(train_ids)} files, "
                    f"{len(val)} held-out files")


def load(spec: str, *, train_count: int, val_count: int, seed: int, size: int) -> ImageSet:
    """``fashion-mnist``, ``photos`` or a folder path -> :class:`ImageSet`."""
    if spec == "fashion-mnist":
        return fashion_mnist(train_count, val_count)
    if spec == "photos":
        return photos(train_count, val_count, seed)
    if Path(spec).expanduser().is_dir():
        return image_folder(str(Path(spec).expanduser()), size, train_count, val_count, seed)
    raise ValidationError(f"dataset {spec!r}: expected 'fashion-mnist', 'photos' or an image folder")

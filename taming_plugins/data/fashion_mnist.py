"""The real Fashion-MNIST photos (70,000 28×28 greyscale images, MIT licence).

Read from the gzip IDX files of Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist`` puts them under
``/usr/share/datasets/fashion-mnist``). Elsewhere, download the four
``*-ubyte.gz`` files of the Fashion-MNIST release into a folder and pass ``root``
(or set ``TAMING_FASHION_MNIST``).
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from taming_core.errors import ValidationError
from taming_core.validation import check_choice

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_ROOT = "TAMING_FASHION_MNIST"
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_IDX_MAGIC = {3: 2051, 1: 2049}  # magic numbers of IDX uint8 files by number of dims
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic != _IDX_MAGIC[ndim]:
        raise ValidationError(f"{path}: not an IDX file with {ndim} dims (magic {magic})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def resolve_root(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The folder holding the IDX files, or a clear error saying how to get them."""
    path = Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT)
    if not (path / _FILES["train"][0]).is_file():
        raise ValidationError(
            f"Fashion-MNIST not found under {path}: install Debian's package "
            f"(apt-get install dataset-fashion-mnist) or put the four *-ubyte.gz files of the "
            f"Fashion-MNIST release in a folder and pass root= or set {ENV_ROOT}")
    return path


@functools.lru_cache(maxsize=4)
def _load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_file, lbl_file = _FILES[split]
    return _read_idx(root / img_file, 3), _read_idx(root / lbl_file, 1)


class FashionMNIST(Dataset):
    """Fashion-MNIST images as float tensors in [-1, 1] (1×28×28, or 3×size×size).

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: folder with the IDX files (default: Debian's location or ``$TAMING_FASHION_MNIST``).
        size: resize to size×size (bilinear) if given.
        rgb: repeat the grey channel three times.
        return_labels: items are ``(image, label)`` instead of ``image``.
        limit: use only the first ``limit`` images.
    """

    def __init__(self, split: str = "train", *, root: Optional[Union[str, os.PathLike]] = None,
                 size: Optional[int] = None, rgb: bool = False, return_labels: bool = False,
                 limit: Optional[int] = None) -> None:
        check_choice(split, "FashionMNIST(split)", ("train", "test"))
        images, labels = _load(resolve_root(root), split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images, self.labels = images, labels
        self.size, self.rgb, self.return_labels = size, rgb, return_labels

    def set_epoch(self, epoch: int) -> None:  # no augmentation; kept for a uniform API
        pass

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        x = torch.from_numpy(self.images[index].astype(np.float32)).div_(127.5).sub_(1.0)[None]
        if self.size is not None and self.size != x.shape[-1]:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear",
                              align_corners=False)[0].clamp_(-1, 1)
        if self.rgb:
            x = x.expand(3, -1, -1).contiguous()
        return (x, int(self.labels[index])) if self.return_labels else x

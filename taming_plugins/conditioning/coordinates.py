"""``coordinates``: where a crop sits in a large image, as tokens (the original CoordStage).

Training on crops of large images (the paper's landscape and high-resolution
experiments) conditions every crop on its position: each pixel carries its normalised
raster index ``(i * W + j) / (H * W)`` in the full image (see :func:`crop_coordinates`),
the map is area-downsampled by the tokenizer's factor and quantized to
``round(num_levels * c)``, giving a B×h×w grid of ids in ``[0, num_levels]`` aligned
with the image tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from taming_core import register
from taming_core.errors import ValidationError
from taming_core.validation import check_positive, check_tensor

from ._base import ConditionerBase

#: Coordinates are normalised to this closed range.
COORD_RANGE = (0.0, 1.0)
#: Mixes the seed and the item index into a per-item generator seed.
_ITEM_SEED_MIX = 1_000_003


def crop_coordinates(full_height: int, full_width: int, top: int, left: int, height: int,
                     width: int, *, device: Optional[torch.device] = None) -> Tensor:
    """Float 1×height×width map of normalised raster indices of a crop of a full image.

    Pixel ``(i, j)`` of the full ``full_height×full_width`` image has coordinate
    ``(i * full_width + j) / (full_height * full_width)`` in ``[0, 1)``.
    """
    for value, name in ((full_height, "full_height"), (full_width, "full_width"),
                        (height, "height"), (width, "width")):
        check_positive(value, f"crop_coordinates({name})")
    if top < 0 or left < 0 or top + height > full_height or left + width > full_width:
        raise ValidationError(
            f"crop_coordinates: crop {height}×{width} at ({top}, {left}) must lie inside the "
            f"{full_height}×{full_width} image")
    rows = torch.arange(top, top + height, device=device, dtype=torch.float64).unsqueeze(1)
    cols = torch.arange(left, left + width, device=device, dtype=torch.float64).unsqueeze(0)
    coords = (rows * full_width + cols) / (full_height * full_width)
    return coords.float().unsqueeze(0)


@register("conditioner", "coordinates")
class CoordinateConditioner(ConditionerBase):
    """Quantized crop coordinates: float B×1×H×W in [0, 1] -> Long B×h×w ids.

    Args:
        num_levels: quantization levels; ids lie in ``[0, num_levels]`` (the original's
            ``n_embed``, which yields ``n_embed + 1`` distinct ids).
        downsample_factor: the image tokenizer's factor, so the grid matches the image's.
        null_token: reserve id ``num_levels + 1`` as the null condition.
    """

    spatial = True

    def __init__(self, num_levels: int, downsample_factor: int, *, null_token: bool = False) -> None:
        super().__init__()
        check_positive(num_levels, "coordinates(num_levels)")
        check_positive(downsample_factor, "coordinates(downsample_factor)")
        self.num_levels = int(num_levels)
        self.downsample_factor = int(downsample_factor)
        self.null_token = bool(null_token)

    def forward(self, condition: Tensor) -> Tensor:
        sizes = check_tensor(condition, "coordinates(condition)", dims=("B", 1, "H", "W"),
                             dtype="float", value_range=COORD_RANGE)
        f = self.downsample_factor
        if sizes["H"] % f or sizes["W"] % f:
            raise ValidationError(f"coordinates(condition): height and width must be divisible by "
                                  f"downsample_factor {f}, got {sizes['H']}×{sizes['W']}")
        pooled = nn.functional.avg_pool2d(condition, kernel_size=f) if f > 1 else condition
        ids = (pooled.clamp(*COORD_RANGE) * self.num_levels).round().long()
        return ids[:, 0]

    def decode(self, tokens: Tensor) -> Tensor:
        """Long B×h×w ids -> float B×1×H×W approximate coordinate map (nearest upsampling)."""
        check_tensor(tokens, "coordinates.decode(tokens)", dims=("B", "h", "w"), dtype="integer")
        coords = tokens.float().unsqueeze(1) / self.num_levels
        return nn.functional.interpolate(coords, scale_factor=self.downsample_factor, mode="nearest")

    @property
    def num_ids(self) -> int:
        return self.num_levels + 1


class CoordinateCrops(Dataset):
    """Random square crops of large images paired with their coordinate maps.

    Items are ``(crop 3×size×size, coords 1×size×size)`` for the ``coordinates``
    conditioner; item ``i`` is the same crop for the same ``seed`` (reproducible caches).

    Args:
        images: full images, float C×H×W tensors in [-1, 1] (each at least size×size).
        size: crop side length.
        length: number of items.
        seed: crop positions are drawn from ``(seed, index)``.
    """

    def __init__(self, images: Sequence[Tensor], size: int, *, length: int = 1024, seed: int = 0) -> None:
        check_positive(size, "CoordinateCrops(size)")
        check_positive(length, "CoordinateCrops(length)")
        if not images:
            raise ValidationError("CoordinateCrops(images): expected at least one image")
        for i, img in enumerate(images):
            sizes = check_tensor(img, f"CoordinateCrops(images[{i}])", dims=("C", "H", "W"), dtype="float")
            if sizes["H"] < size or sizes["W"] < size:
                raise ValidationError(f"CoordinateCrops(images[{i}]): {sizes['H']}×{sizes['W']} is smaller "
                                      f"than the crop size {size}")
        self.images, self.size, self.length, self.seed = list(images), int(size), int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"CoordinateCrops index {index} out of range [0, {self.length})")
        gen = torch.Generator().manual_seed(self.seed * _ITEM_SEED_MIX + index)
        image = self.images[int(torch.randint(len(self.images), (1,), generator=gen))]
        h, w = image.shape[1:]
        top = int(torch.randint(h - self.size + 1, (1,), generator=gen))
        left = int(torch.randint(w - self.size + 1, (1,), generator=gen))
        crop = image[:, top:top + self.size, left:left + self.size]
        return crop, crop_coordinates(h, w, top, left, self.size, self.size)

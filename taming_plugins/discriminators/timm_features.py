"""The ``timm_features`` discriminator: a timm backbone's feature pyramid + patch heads.

The backbone is ``timm.create_model(model_name, features_only=True, pretrained=False)``
(never downloads). Weights come from random initialisation, or from a local file
(``checkpoint_path``: safetensors, or a torch file read with ``weights_only=True``) that
holds the state dict of the full timm classification model or of its feature extractor;
every backbone tensor must be present, and keys that belong to neither (a typo, another
architecture) are an error naming them.

Each selected feature level ``l`` (C_l×H/r_l×W/r_l) gets a light head
``conv3×3(C_l -> head_channels) -> LeakyReLU(0.2) -> conv1×1(-> 1)``. The output is the
mean of the per-level logit maps, each resized (bilinear) to the grid of the finest
selected level: B×1×(H/r_min)×(W/r_min). :meth:`forward_levels` gives the per-level maps.

Images in [-1, 1] are mapped to the backbone's expected normalisation (the timm
``pretrained_cfg`` mean/std) when ``imagenet_norm`` is true.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core import Discriminator, register
from taming_core.errors import CheckpointError, ConfigError
from taming_core.io import load_tensors, torch_load_safe
from taming_core.validation import check_positive, check_tensor

log = logging.getLogger(__name__)

DEFAULT_MODEL = "resnet18"
#: Default feature levels (timm ``out_indices``): strides 4, 8, 16 for ResNets.
DEFAULT_OUT_INDICES = (1, 2, 3)
DEFAULT_HEAD_CHANNELS = 64
HEAD_KERNEL = 3
LEAKY_SLOPE = 0.2
SAFETENSORS_SUFFIX = ".safetensors"
#: Checkpoint dict keys that may wrap the state dict in torch files.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def _read_state_dict(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """Tensors of a local weight file (safetensors, or a weights-only torch file)."""
    p = Path(path)
    if p.suffix == SAFETENSORS_SUFFIX:
        return load_tensors(p)
    data = torch_load_safe(p, "a timm model state dict")
    for key in WRAPPER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{p}: expected a dict of tensors (a state dict), "
                              f"got {type(data).__name__}")
    return data


def _listing(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


@register("discriminator", "timm_features")
class TimmFeatureDiscriminator(Discriminator):
    """Patch discriminator on a timm backbone's multi-scale features.

    Args:
        model_name: any timm model that supports ``features_only`` (default resnet18).
        in_channels: image channels.
        out_indices: feature levels to use (timm ``out_indices``).
        head_channels: hidden channels of each head.
        checkpoint_path: optional local weight file for the backbone.
        imagenet_norm: re-normalise [-1, 1] images with the backbone's mean/std.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, in_channels: int = 3,
                 out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
                 head_channels: int = DEFAULT_HEAD_CHANNELS,
                 checkpoint_path: Optional[str] = None, imagenet_norm: bool = True) -> None:
        super().__init__()
        import timm

        check_positive(in_channels, "timm_features(in_channels)")
        check_positive(head_channels, "timm_features(head_channels)")
        self._config: dict[str, Any] = dict(
            model_name=model_name, in_channels=in_channels, out_indices=[int(i) for i in out_indices],
            head_channels=head_channels, checkpoint_path=checkpoint_path, imagenet_norm=imagenet_norm)
        try:
            self.backbone = timm.create_model(model_name, pretrained=False, features_only=True,
                                              out_indices=tuple(out_indices), in_chans=in_channels)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise ConfigError(f"timm_features(model_name={model_name!r}, out_indices="
                              f"{list(out_indices)}): timm could not build it: {exc}") from None
        channels = self.backbone.feature_info.channels()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, head_channels, HEAD_KERNEL, padding=HEAD_KERNEL // 2),
                          nn.LeakyReLU(LEAKY_SLOPE, True), nn.Conv2d(head_channels, 1, 1))
            for c in channels)
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
        use_norm = bool(imagenet_norm) and mean is not None and std is not None and len(mean) == in_channels
        self.register_buffer("norm_mean", torch.tensor(mean if use_norm else [0.0] * in_channels)
                             .view(1, -1, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(std if use_norm else [1.0] * in_channels)
                             .view(1, -1, 1, 1), persistent=False)
        self._renorm = use_norm
        if checkpoint_path is not None:
            self.load_backbone(checkpoint_path)

    def load_backbone(self, path: Union[str, os.PathLike]) -> None:
        """Load backbone weights from a local file (see module docstring)."""
        import timm

        state = _read_state_dict(path)
        own = self.backbone.state_dict()
        with torch.device("meta"):
            full = timm.create_model(self._config["model_name"], pretrained=False,
                                     in_chans=self._config["in_channels"])
        known = set(full.state_dict()) | set(own)
        missing = [k for k in own if k not in state]
        unknown = [k for k in state if k not in known]
        if missing or unknown:
            parts = ([f"missing {_listing(missing)}"] if missing else []) + \
                    ([f"unexpected {_listing(unknown)}"] if unknown else [])
            raise CheckpointError(f"{path}: not a {self._config['model_name']} state dict: "
                                  + "; ".join(parts))
        bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if state[k].shape != v.shape]
        if bad:
            raise CheckpointError(f"{path}: shape mismatch: {_listing(bad)}")
        self.backbone.load_state_dict({k: state[k] for k in own}, strict=True)
        log.info("timm_features: loaded %d backbone tensors from %s (%d classifier tensors unused)",
                 len(own), path, len(state) - len(own))

    def get_config(self) -> dict[str, Any]:
        """A spec that rebuilds this discriminator through ``taming_core.build``."""
        return {"kind": "discriminator", "name": "timm_features", **self._config}

    def forward_levels(self, images: Tensor) -> list[Tensor]:
        """Per-level patch logits, finest level first (each B×1×h_l×w_l)."""
        check_tensor(images, "timm_features(images)",
                     dims=("B", self._config["in_channels"], "H", "W"), dtype="float")
        x = images
        if self._renorm:
            x = ((x + 1.0) * 0.5 - self.norm_mean) / self.norm_std
        feats = self.backbone(x)
        return [head(f) for head, f in zip(self.heads, feats)]

    def forward(self, images: Tensor) -> Tensor:
        levels = self.forward_levels(images)
        size = levels[0].shape[-2:]
        resized = [lv if lv.shape[-2:] == size else
                   F.interpolate(lv, size=size, mode="bilinear", align_corners=False) for lv in levels]
        return torch.stack(resized, dim=0).mean(dim=0)

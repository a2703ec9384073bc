"""LPIPS perceptual distance, wrapping the ``lpips`` package, without network access.

The ``lpips`` package ships its calibrated linear heads (``lpips/weights/v0.1/<net>.pth``)
but fetches the ImageNet backbone through torchvision, which downloads it. Here the
backbone is never downloaded: its weights come from

1. ``backbone_path`` (a torchvision state dict file, e.g. ``vgg16-397923af.pth``), else
2. torchvision's cache (``torch.hub.get_dir()/checkpoints/<file>``), else
3. an error saying where to put the file -- unless ``allow_random_backbone=True``
   (tests and timing only: a randomly initialised backbone is not a perceptual metric).

Every file is read with ``torch.load(weights_only=True)``. The network is frozen
(eval mode, no gradients for its weights); gradients still flow to the inputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from taming_core.errors import CheckpointError, ConfigError, ValidationError
from taming_core.interfaces import PerceptualLoss
from taming_core.io import torch_load_safe
from taming_core.registry import register
from taming_core.validation import check_choice, check_tensor

log = logging.getLogger(__name__)

#: torchvision's file names for the ImageNet weights of each LPIPS backbone.
BACKBONE_FILES = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
#: Version of the calibrated linear heads (the package's latest; the one taming used).
LPIPS_VERSION = "0.1"
#: LPIPS backbone slices name their layers by torchvision's ``features`` index.
_SLICE_KEY = re.compile(r"^slice\d+\.(\d+)\.(.+)$")
#: Linear-head keys as stored in the package's weight files.
_HEAD_KEY = re.compile(r"^lin(\d+)\.(.+)$")


def default_backbone_path(net: str = "vgg") -> Path:
    """Where torchvision caches the backbone weights (and where this loss looks for them)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


#: Values of a trainer's ``loss.perceptual`` besides a loss spec (:func:`perceptual_choice`).
PERCEPTUAL_AUTO, PERCEPTUAL_NONE = "auto", "none"


def perceptual_choice(setting: Any, where: str = "loss.perceptual") -> tuple[Optional[dict[str, Any]], str]:
    """The perceptual-loss spec for a ``loss.perceptual`` setting, and a sentence saying what was used.

    ``"auto"`` is ``{"name": "lpips"}`` when torchvision's VGG16 weights are on disk
    (:func:`default_backbone_path`; they are never downloaded) and None otherwise: training
    then runs without the perceptual term and says so, rather than using LPIPS with a random
    backbone. ``"none"`` or None is None; a spec dict is returned as is.
    """
    if setting is None or setting == PERCEPTUAL_NONE:
        return None, "none (disabled in the config)"
    if setting == PERCEPTUAL_AUTO:
        path = default_backbone_path("vgg")
        if path.is_file():
            return {"name": "lpips"}, f"lpips (VGG16 backbone from {path})"
        return None, f"none (LPIPS backbone weights not found at {path}; never downloaded)"
    if isinstance(setting, Mapping) and "name" in setting:
        return dict(setting), f"{setting['name']} (from the config)"
    raise ConfigError(f"{where}: expected 'auto', 'none' or a loss spec such as {{name: lpips}}, got {setting!r}")


def _package_heads_path(net: str) -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"


def _find_backbone(net: str, backbone_path: Optional[Union[str, os.PathLike]],
                   allow_random_backbone: bool) -> Optional[Path]:
    if backbone_path is not None:
        path = Path(backbone_path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"lpips(backbone_path): {path} does not exist (expected torchvision's "
                                  f"{BACKBONE_FILES[net]} state dict)")
        return path
    cached = default_backbone_path(net)
    if cached.is_file():
        return cached
    if allow_random_backbone:
        log.warning("lpips: no %s backbone weights found; using a RANDOM backbone "
                    "(allow_random_backbone=True: fine for tests/timing, not a perceptual loss)", net)
        return None
    raise CheckpointError(
        f"lpips: the ImageNet {net} backbone weights were not found and are never downloaded. "
        f"Put torchvision's {BACKBONE_FILES[net]} at {cached} (or pass backbone_path=FILE); "
        f"pass allow_random_backbone=True only for tests")


@register("perceptual", "lpips")
class LPIPS(PerceptualLoss):
    """LPIPS perceptual distance (VGG16 by default), frozen, offline.

    Args:
        net: backbone, ``"vgg"`` (as in taming-transformers), ``"alex"`` or ``"squeeze"``.
        backbone_path: local torchvision state dict of the backbone.
        heads_path: the linear heads (default: the file shipped in the lpips package).
        allow_random_backbone: use a random backbone when no weights are found.
    """

    def __init__(self, net: str = "vgg", *, backbone_path: Optional[Union[str, os.PathLike]] = None,
                 heads_path: Optional[Union[str, os.PathLike]] = None,
                 allow_random_backbone: bool = False) -> None:
        super().__init__()
        check_choice(net, "lpips(net)", tuple(BACKBONE_FILES))
        import lpips

        backbone_file = _find_backbone(net, backbone_path, allow_random_backbone)
        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" notice
            warnings.simplefilter("ignore", UserWarning)
            # pretrained=False: heads are loaded below with weights_only=True;
            # pnet_rand=True: torchvision builds the backbone without downloading.
            self.model = lpips.LPIPS(pretrained=False, net=net, version=LPIPS_VERSION, pnet_rand=True,
                                     pnet_tune=False, verbose=False)
        self.net_name = net
        self.random_backbone = backbone_file is None
        state = self.model.state_dict()
        heads = torch_load_safe(heads_path or _package_heads_path(net), what="LPIPS linear heads")
        state.update(self._head_state(heads, heads_path))
        if backbone_file is not None:
            state.update(self._backbone_state(torch_load_safe(backbone_file, what=f"a torchvision "
                                                              f"{BACKBONE_FILES[net]} state dict"),
                                              backbone_file))
        self.model.load_state_dict(state, strict=True)
        self.model.requires_grad_(False)
        self.model.eval()

    def _head_state(self, heads: dict[str, Tensor],
                    source: Optional[Union[str, os.PathLike]]) -> dict[str, Tensor]:
        """The heads file names layers ``lin<k>.*``; the module also aliases them as ``lins.<k>.*``."""
        want = {k for k in self.model.state_dict() if _HEAD_KEY.match(k)}
        if not isinstance(heads, dict) or set(heads) != want:
            got = sorted(heads)[:3] if isinstance(heads, dict) else type(heads).__name__
            raise CheckpointError(f"{source or _package_heads_path(self.net_name)}: not LPIPS linear "
                                  f"heads for net {self.net_name!r} (expected keys {sorted(want)[:3]}..., "
                                  f"got {got})")
        out = dict(heads)
        for key, value in heads.items():
            match = _HEAD_KEY.match(key)
            assert match is not None
            out[f"lins.{match.group(1)}.{match.group(2)}"] = value
        return out

    def _backbone_state(self, tv_state: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
        """Map torchvision ``features.<i>.<p>`` keys onto LPIPS ``net.slice<k>.<i>.<p>``."""
        out: dict[str, Tensor] = {}
        for key in self.model.net.state_dict():
            match = _SLICE_KEY.match(key)
            tv_key = f"features.{match.group(1)}.{match.group(2)}" if match else key
            if tv_key not in tv_state:
                raise CheckpointError(f"{source}: not a torchvision {BACKBONE_FILES[self.net_name]} "
                                      f"state dict (no {tv_key!r})")
            out[f"net.{key}"] = tv_state[tv_key]
        return out

    def train(self, mode: bool = True) -> "LPIPS":
        """The metric stays in eval mode (its dropout must never be active)."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample LPIPS distance B×1×1×1 between two B×3×H×W batches in [-1, 1].

        A batch that needs no gradient (typically the real images) goes through the
        backbone without building a graph, so the backward pass only traverses the
        backbone for the other one (half the work of the package's forward).
        """
        import lpips

        check_tensor(x, "lpips(x)", dims=("B", 3, "H", "W"), dtype="float")
        check_tensor(y, "lpips(y)", dims=("B", 3, "H", "W"), dtype="float")
        if x.shape != y.shape:
            raise ValidationError(f"lpips: x and y must have the same shape, got {tuple(x.shape)} "
                                  f"and {tuple(y.shape)}")
        feats_x, feats_y = self._features(x), self._features(y)
        total: Optional[Tensor] = None
        for fx, fy, lin in zip(feats_x, feats_y, self.model.lins):
            diff = (lpips.normalize_tensor(fx) - lpips.normalize_tensor(fy)).square()
            term = lin(diff).mean(dim=(2, 3), keepdim=True)
            total = term if total is None else total + term
        assert total is not None
        return total

    def _features(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        needs_graph = images.requires_grad and torch.is_grad_enabled()
        with contextlib.nullcontext() if needs_graph else torch.no_grad():
            return tuple(m.net(m.scaling_layer(images)))

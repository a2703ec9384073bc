"""Building blocks of the VQGAN encoder and decoder (original taming-transformers layout).

Module names and nesting follow the original ``taming.modules.diffusionmodules.model``
so that state dicts of original checkpoints load without renaming:

* ``Encoder``: ``conv_in``, ``down.{i}.block.{j}``, ``down.{i}.attn.{j}``,
  ``down.{i}.downsample.conv``, ``mid.block_1/attn_1/block_2``, ``norm_out``, ``conv_out``.
* ``Decoder``: ``conv_in``, ``mid.*``, ``up.{i}.block.{j}`` (``num_res_blocks + 1`` blocks),
  ``up.{i}.attn.{j}``, ``up.{i}.upsample.conv``, ``norm_out``, ``conv_out``; ``up`` is
  indexed by resolution level (``up.0`` is the full-resolution level) although it runs
  from the coarsest level to the finest.

Numerics: GroupNorm with 32 groups and eps 1e-6, swish (SiLU) non-linearity, strided
3×3 downsampling after zero padding of one pixel on the right and bottom, nearest
×2 upsampling followed by a 3×3 conv, single-head spatial self-attention with 1×1
conv projections (computed with ``scaled_dot_product_attention``, whose default
scale ``C ** -0.5`` is the original one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from taming_core.errors import ConfigError

#: GroupNorm settings of the original model.
NORM_GROUPS = 32
NORM_EPS = 1e-6
#: Zero padding (left, right, top, bottom) before the stride-2 downsampling conv.
DOWNSAMPLE_PAD = (0, 1, 0, 1)
#: Symmetric alternative (``downsample_padding: symmetric``): one pixel on every side,
#: same output size for even inputs, no right/bottom bias.
DOWNSAMPLE_PAD_SYMMETRIC = (1, 1, 1, 1)
#: Spatial factor of one down/up sampling step.
RESAMPLE_FACTOR = 2


def normalize(channels: int) -> nn.GroupNorm:
    """The original ``Normalize``: affine GroupNorm(32, channels, eps=1e-6)."""
    if channels % NORM_GROUPS:
        raise ConfigError(f"GroupNorm needs a channel count divisible by {NORM_GROUPS}, got {channels}")
    return nn.GroupNorm(num_groups=NORM_GROUPS, num_channels=channels, eps=NORM_EPS, affine=True)


def _run(fn: Callable[[Tensor], Tensor], x: Tensor, use_checkpoint: bool) -> Tensor:
    """Call ``fn(x)``, through activation checkpointing when asked and useful."""
    if use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(fn, x, use_reentrant=False)
    return fn(x)


class ResnetBlock(nn.Module):
    """norm-swish-conv3×3, norm-swish-dropout-conv3×3, plus a (1×1 conv) shortcut.

    The shortcut is ``nin_shortcut`` (1×1) when the channel count changes, as in every
    original VQGAN config (``conv_shortcut=False``).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut: nn.Module | None = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(t: Tensor) -> Tensor:  # B×C×H×W -> B×1×HW×C (one head)
            return t.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


#: Downsampling choices of :func:`set_downsample_padding` ("original" is the original).
DOWNSAMPLE_PADDINGS = ("original", "symmetric", "centered")


def set_downsample_padding(module: nn.Module, padding: str) -> None:
    """How every :class:`Downsample` of ``module`` pads around its 3×3 conv.

    * ``"original"``: pad right/bottom by one (0, 1, 0, 1), stride-2 conv. Output
      pixel ``i`` sees input rows ``2i .. 2i+2``; the padding is seen only at the
      right/bottom edge, and a small model learns a light line there.
    * ``"symmetric"``: pad one pixel on every side, stride-2 conv (same output size).
      On even sizes the bottom/right pad is never read (output ``i`` sees rows
      ``2i-1 .. 2i+1``), so this only moves the asymmetry to the top/left edge.
    * ``"centered"``: 2×2 average pooling, then the 3×3 conv at stride 1 with one
      pixel of padding on every side: each output is centred on its 2×2 input cell,
      so the operation commutes with flips (for a flip-symmetric kernel). Same
      weights; the conv runs on the pooled grid, so the cost is about the same.
    """
    if padding not in DOWNSAMPLE_PADDINGS:
        raise ConfigError(f"vqgan(downsample_padding): expected one of {', '.join(DOWNSAMPLE_PADDINGS)}, "
                          f"got {padding!r}")
    for sub in module.modules():
        if isinstance(sub, Downsample):
            sub.pad = DOWNSAMPLE_PAD if padding == "original" else DOWNSAMPLE_PAD_SYMMETRIC
            sub.centered = padding == "centered"


#: Padding modes of :func:`set_padding_mode` ("zeros" is the original).
PADDING_MODES = ("zeros", "reflect", "replicate")


def set_padding_mode(module: nn.Module, mode: str) -> None:
    """Pad every 3×3 convolution of ``module`` (and the downsampling pad) with ``mode``.

    ``"zeros"`` is the original model. Zero padding makes the outer pixels of an image
    look different to the network, and the original downsampling pads only the right
    and bottom edges, so small images come back with a visible line along those edges;
    ``"replicate"``/``"reflect"`` padding removes that asymmetry (same weights shapes).
    """
    if mode not in PADDING_MODES:
        raise ConfigError(f"vqgan(padding_mode): expected one of {', '.join(PADDING_MODES)}, got {mode!r}")
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d) and any(p > 0 for p in sub.padding):  # type: ignore[operator]
            sub.padding_mode = mode
        elif isinstance(sub, Downsample):
            sub.pad_mode = "constant" if mode == "zeros" else mode


class Downsample(nn.Module):
    """Halve H and W: asymmetric zero pad + stride-2 3×3 conv, or 2×2 average pooling."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv: nn.Module | None = (
            nn.Conv2d(channels, channels, kernel_size=3, stride=RESAMPLE_FACTOR, padding=0)
            if with_conv else None)
        self.pad_mode = "constant"  # the original zero pad; see set_padding_mode
        self.pad = DOWNSAMPLE_PAD  # the original right/bottom pad; see set_downsample_padding
        self.centered = False      # pool first, then a stride-1 conv; see set_downsample_padding

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=RESAMPLE_FACTOR, stride=RESAMPLE_FACTOR)
        if self.centered:
            x = F.avg_pool2d(x, kernel_size=RESAMPLE_FACTOR, stride=RESAMPLE_FACTOR)
        if self.pad_mode == "constant":
            x = F.pad(x, self.pad, mode="constant", value=0.0)
        else:
            x = F.pad(x, self.pad, mode=self.pad_mode)
        if self.centered:
            return F.conv2d(x, self.conv.weight, self.conv.bias, stride=1)
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then an optional 3×3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv: nn.Module | None = (
            nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1) if with_conv else None)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=float(RESAMPLE_FACTOR), mode="nearest")
        return x if self.conv is None else self.conv(x)


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (AttnBlocks, possibly
    empty) and an optional ``downsample``/``upsample`` (attribute name as original)."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        # set to a module by the Encoder/Decoder on every level but the last/first
        self.downsample: Optional[nn.Module] = None
        self.upsample: Optional[nn.Module] = None

    def run_blocks(self, h: Tensor, use_checkpoint: bool) -> Tensor:
        for i, block in enumerate(self.block):
            h = _run(block, h, use_checkpoint)
            if len(self.attn) > 0:
                h = _run(self.attn[i], h, use_checkpoint)
        return h


class _Mid(nn.Module):
    """``block_1`` -> ``attn_1`` -> ``block_2`` at the coarsest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor, use_checkpoint: bool = False) -> Tensor:
        for module in (self.block_1, self.attn_1, self.block_2):
            h = _run(module, h, use_checkpoint)
        return h


def _check_arch(ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int) -> None:
    if not ch_mult or any(int(m) <= 0 for m in ch_mult):
        raise ConfigError(f"ch_mult: expected a non-empty list of positive ints, got {list(ch_mult)}")
    if num_res_blocks <= 0:
        raise ConfigError(f"num_res_blocks: expected a positive int, got {num_res_blocks}")
    if ch <= 0 or resolution <= 0:
        raise ConfigError(f"ch and resolution must be positive, got ch={ch}, resolution={resolution}")


class Encoder(nn.Module):
    """Images B×in_channels×H×W -> latent B×z_channels×(H/f)×(W/f) (×2 channels if
    ``double_z``), f = 2 ** (len(ch_mult) - 1).

    ``attn_resolutions`` are compared with the nominal ``resolution`` halved once per level
    (the original rule), whatever the actual input size.
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], in_channels: int, resolution: int,
                 z_channels: int, double_z: bool = True, dropout: float = 0.0,
                 resamp_with_conv: bool = True, grad_checkpointing: bool = False) -> None:
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, resolution)
        self.grad_checkpointing = grad_checkpointing
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        attn_set = {int(r) for r in attn_resolutions}
        self.down = nn.ModuleList()
        block_in = ch
        curr_res = resolution
        for level, mult in enumerate(ch_mult):
            block_out = ch * int(mult)
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_set:
                    attns.append(AttnBlock(block_in))
            stage = _Level(blocks, attns)
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in, resamp_with_conv)
                curr_res //= RESAMPLE_FACTOR
            self.down.append(stage)
        self.mid = _Mid(block_in, dropout)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels,
                                  kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h, self.grad_checkpointing)
            if stage.downsample is not None:
                h = stage.downsample(h)
        h = self.mid(h, self.grad_checkpointing)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent B×z_channels×h×w -> images B×out_ch×(h·f)×(w·f) (no final tanh, as in VQGAN)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int,
                 dropout: float = 0.0, resamp_with_conv: bool = True,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        _check_arch(ch, ch_mult, num_res_blocks, resolution)
        self.grad_checkpointing = grad_checkpointing
        attn_set = {int(r) for r in attn_resolutions}
        n_levels = len(ch_mult)
        block_in = ch * int(ch_mult[-1])
        curr_res = resolution // RESAMPLE_FACTOR ** (n_levels - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, dropout)
        stages: list[_Level] = []
        for level in reversed(range(n_levels)):
            block_out = ch * int(ch_mult[level])
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_set:
                    attns.append(AttnBlock(block_in))
            stage = _Level(blocks, attns)
            if level != 0:
                stage.upsample = Upsample(block_in, resamp_with_conv)
                curr_res *= RESAMPLE_FACTOR
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z), self.grad_checkpointing)
        for stage in reversed(self.up):
            h = stage.run_blocks(h, self.grad_checkpointing)
            if stage.upsample is not None:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

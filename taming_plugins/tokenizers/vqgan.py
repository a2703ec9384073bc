"""The ``vqgan`` tokenizer: the original VQGAN encoder/decoder around any quantizer.

Layout (attribute names equal the original ``VQModel``'s, so original state dicts load
one-to-one)::

    images --encoder--> B×z_channels×h×w --quant_conv--> B×q×h×w --quantize--> B×embed_dim×h×w
           --post_quant_conv--> B×z_channels×h×w --decoder--> images

``q`` (``quant_conv_channels``) is ``embed_dim`` for the vector quantizers. The original
``GumbelVQ`` feeds ``quant_conv``'s output to the Gumbel quantizer's 1×1 ``proj`` (so
``q`` is the quantizer's ``in_channels``, ``z_channels`` in the released configs) and gets
codes of size ``embed_dim`` back.

Config example (``taming_core.build``)::

    tokenizer:
      name: vqgan
      ch: 128
      ch_mult: [1, 1, 2, 2, 4]
      num_res_blocks: 2
      attn_resolutions: [16]
      z_channels: 256
      resolution: 256
      embed_dim: 256
      quantizer: {name: vq, codebook_size: 1024, dim: 256, legacy_beta: true}

``taming_core.build`` builds a nested quantizer spec before the tokenizer sees it, so
there it must be complete; the ``n_embed``/``embed_dim`` defaults below apply when a spec
dict is passed to the constructor (or ``taming_core.create``) directly.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from taming_core import (Encoded, Quantizer, QuantizerOutput, Tokenizer, create_from_spec, get,
                         register, spec_of)
from taming_core.errors import ConfigError, ValidationError
from taming_core.validation import (check_divisible, check_int_sequence, check_positive,
                                    check_quantizer_output, check_tensor)

from ._vqgan_modules import RESAMPLE_FACTOR, Decoder, Encoder, set_downsample_padding, set_padding_mode

log = logging.getLogger(__name__)

#: Images may exceed [-1, 1] by this much (resampling and float round-off).
IMAGE_RANGE_TOLERANCE = 1e-3
IMAGE_RANGE = (-1.0 - IMAGE_RANGE_TOLERANCE, 1.0 + IMAGE_RANGE_TOLERANCE)

#: The original ``ddconfig`` keys (encoder/decoder hyper-parameters).
DDCONFIG_KEYS = ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                 "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv")

QuantizerSpec = Union[Quantizer, Mapping[str, Any]]


def complete_quantizer_spec(spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``{"name": ..., **kwargs}`` with the keyword arguments the quantizer accepts
    but the spec leaves out filled from ``defaults`` (``None`` defaults are skipped)."""
    if "name" not in spec:
        raise ConfigError(f"vqgan(quantizer): a spec dict needs a 'name' key, got keys {sorted(spec)}")
    full = {k: v for k, v in spec.items() if k != "kind"}
    accepted = inspect.signature(get("quantizer", spec["name"])).parameters
    for key, value in defaults.items():
        if key in accepted and key not in full and value is not None:
            full[key] = value
    return full


@register("tokenizer", "vqgan")
class VQGANTokenizer(Tokenizer):
    """VQGAN (Esser et al. 2021): conv/attention encoder-decoder with a discrete bottleneck.

    Args:
        ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, in_channels, out_ch,
        resolution, dropout, double_z, resamp_with_conv: the original ``ddconfig`` keys.
            ``resolution`` is the nominal image size at which ``attn_resolutions`` are
            counted; other sizes divisible by the downsample factor work too.
        embed_dim: channels of the quantized latent (the codes).
        quantizer: a :class:`~taming_core.Quantizer`, or a spec ``{"name": ..., **kwargs}``
            built with ``taming_core.create``; missing ``codebook_size``/``dim``/
            ``in_channels`` arguments default to ``n_embed``/``embed_dim``/
            ``quant_conv_channels`` (each only when the quantizer accepts it).
        n_embed: codebook size used to fill a quantizer spec (original key name).
        quant_conv_channels: output channels of ``quant_conv``; default ``in_channels`` of
            a quantizer instance that has one (Gumbel), else ``embed_dim``.
        grad_checkpointing: recompute ResNet/attention activations in the backward pass
            (saves memory when training at high resolution).
        channels_last: keep weights and activations in channels-last memory format
            (faster convolutions on recent GPUs with AMP).
        padding_mode: ``"zeros"`` (the original), ``"replicate"`` or ``"reflect"``
            padding of every 3×3 convolution and of the downsampling pad; the latter two
            avoid the line the original's right/bottom zero pad leaves along those edges
            of small images (see ``set_padding_mode``). Only ``"zeros"`` exports to the
            original format.
        downsample_padding: ``"original"`` (pad right/bottom before each stride-2
            conv), ``"symmetric"`` (pad every side: on even sizes only the top/left pad
            is read) or ``"centered"`` (2×2 average, then the 3×3 conv at stride 1:
            no edge is favoured; removes the light right/bottom line of small demo
            models), see ``set_downsample_padding``. Only ``"original"`` exports to the
            original format.
    """

    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,),
                 z_channels: int = 256, in_channels: int = 3, out_ch: int = 3,
                 resolution: int = 256, dropout: float = 0.0, double_z: bool = False,
                 resamp_with_conv: bool = True, embed_dim: int = 256,
                 quantizer: Optional[QuantizerSpec] = None,
                 n_embed: Optional[int] = None, quant_conv_channels: Optional[int] = None,
                 grad_checkpointing: bool = False, channels_last: bool = False,
                 padding_mode: str = "zeros", downsample_padding: str = "original") -> None:
        super().__init__()
        for name, value in (("ch", ch), ("num_res_blocks", num_res_blocks), ("z_channels", z_channels),
                            ("in_channels", in_channels), ("out_ch", out_ch),
                            ("resolution", resolution), ("embed_dim", embed_dim)):
            check_positive(value, f"vqgan({name})")
        if quantizer is None:
            raise ConfigError("vqgan(quantizer): required; give a Quantizer or a spec such as "
                              "{'name': 'vq', 'codebook_size': 1024}")
        if isinstance(quantizer, Mapping):  # create() records the spec for get_config()
            q_ch = quant_conv_channels or embed_dim
            spec = complete_quantizer_spec(
                quantizer, {"codebook_size": n_embed, "dim": embed_dim, "in_channels": q_ch})
            quantizer = create_from_spec("quantizer", spec)
        elif not isinstance(quantizer, Quantizer):
            raise ConfigError(f"vqgan(quantizer): expected a Quantizer or a spec dict, "
                              f"got {type(quantizer).__name__}")
        if quant_conv_channels is None:
            quant_conv_channels = int(quantizer.in_channels or embed_dim)
        self._arch: dict[str, Any] = dict(
            ch=ch, ch_mult=check_int_sequence(ch_mult, "vqgan(ch_mult)", minimum=1, nonempty=True),
            num_res_blocks=num_res_blocks,
            attn_resolutions=check_int_sequence(attn_resolutions, "vqgan(attn_resolutions)", minimum=1),
            z_channels=z_channels,
            in_channels=in_channels, out_ch=out_ch, resolution=resolution, dropout=float(dropout),
            double_z=bool(double_z), resamp_with_conv=bool(resamp_with_conv), embed_dim=embed_dim,
            quant_conv_channels=int(quant_conv_channels), grad_checkpointing=bool(grad_checkpointing),
            channels_last=bool(channels_last))
        self._n_embed = n_embed
        shared = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                      attn_resolutions=attn_resolutions, resolution=resolution,
                      z_channels=z_channels, dropout=dropout, resamp_with_conv=resamp_with_conv,
                      grad_checkpointing=grad_checkpointing)
        self.encoder = Encoder(in_channels=in_channels, double_z=double_z, **shared)
        self.decoder = Decoder(out_ch=out_ch, **shared)
        enc_out = 2 * z_channels if double_z else z_channels
        self.quant_conv = nn.Conv2d(enc_out, quant_conv_channels, kernel_size=1)
        self.quantize = quantizer
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        set_padding_mode(self.encoder, padding_mode)
        set_padding_mode(self.decoder, padding_mode)
        self.padding_mode = padding_mode
        set_downsample_padding(self.encoder, downsample_padding)
        self.downsample_padding = downsample_padding
        self._downsample = RESAMPLE_FACTOR ** (len(ch_mult) - 1)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ properties
    @property
    def downsample_factor(self) -> int:
        """2 ** (len(ch_mult) - 1)."""
        return self._downsample

    @property
    def vocab_size(self) -> int:
        """The quantizer's codebook size."""
        return int(self.quantize.codebook_size)

    @property
    def embed_dim(self) -> int:
        """Channels of the quantized latent."""
        return int(self._arch["embed_dim"])

    @property
    def ddconfig(self) -> dict[str, Any]:
        """The encoder/decoder hyper-parameters under their original ``ddconfig`` names."""
        return {k: self._arch[k] for k in DDCONFIG_KEYS}

    @property
    def quant_conv_channels(self) -> int:
        """Output channels of ``quant_conv`` (the quantizer's input width)."""
        return int(self._arch["quant_conv_channels"])

    @property
    def last_layer(self) -> Tensor:
        """``decoder.conv_out.weight``, used for the adaptive GAN loss weight."""
        return self.decoder.conv_out.weight

    @property
    def grad_checkpointing(self) -> bool:
        return bool(self.encoder.grad_checkpointing)

    @grad_checkpointing.setter
    def grad_checkpointing(self, value: bool) -> None:
        self.encoder.grad_checkpointing = self.decoder.grad_checkpointing = bool(value)
        self._arch["grad_checkpointing"] = bool(value)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """A JSON-able spec that rebuilds this tokenizer (untrained) via ``taming_core.build``."""
        q_cfg = spec_of(self.quantize)  # get_config() or the spec it was created from
        if q_cfg is None:
            raise ConfigError(f"vqgan.get_config: the quantizer {type(self.quantize).__name__} has no "
                              "get_config() and was not made by taming_core.create/build; pass a "
                              "spec dict {'name': ..., ...} so the tokenizer can be described")
        q_cfg.pop("kind", None)
        cfg: dict[str, Any] = {"kind": "tokenizer", "name": "vqgan", **self._arch, "quantizer": q_cfg}
        if self._n_embed is not None:
            cfg["n_embed"] = self._n_embed
        if self.padding_mode != "zeros":
            cfg["padding_mode"] = self.padding_mode
        if self.downsample_padding != "original":
            cfg["downsample_padding"] = self.downsample_padding
        return cfg

    # ------------------------------------------------------------------ encoding
    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def check_images(self, images: Tensor, name: str = "vqgan.encode(images)") -> None:
        """Raise unless ``images`` is float B×C×H×W in [-1, 1] with H, W divisible by f."""
        sizes = check_tensor(images, name, dims=("B", self._arch["in_channels"], "H", "W"),
                             dtype="float", value_range=IMAGE_RANGE)
        check_divisible(sizes["H"], sizes["W"], self.downsample_factor, name)

    def encode_to_prequant(self, images: Tensor) -> Tensor:
        """Images -> continuous latent after ``quant_conv`` (the quantizer's input).
        Float images of another dtype (float64, fp16, bf16) are cast to the weights' dtype."""
        self.check_images(images)
        images = images.to(self.quant_conv.weight.dtype)  # no-op when the dtypes agree
        return self.quant_conv(self.encoder(self._prepare(images)))

    def quantize_latent(self, z: Tensor) -> QuantizerOutput:
        """Quantize a latent from :meth:`encode_to_prequant`; a plugin quantizer's output is
        checked (shapes and dtypes, no device sync) where it is consumed."""
        out = self.quantize(z)
        check_quantizer_output(out, z, self.quantize, int(self.quantize.num_levels))
        return out

    def encode(self, images: Tensor) -> Encoded:
        out = self.quantize_latent(self.encode_to_prequant(images))
        return Encoded(indices=out.indices, latent=out.z_q, loss=out.loss, metrics=dict(out.metrics))

    # ------------------------------------------------------------------ decoding
    def decode_latent(self, latent: Tensor) -> Tensor:
        check_tensor(latent, "vqgan.decode_latent(latent)", dims=("B", self.embed_dim, "h", "w"),
                     dtype="float")
        return self.decoder(self.post_quant_conv(self._prepare(latent)))

    def decode_indices_to_latent(self, indices: Tensor) -> Tensor:
        levels = int(self.quantize.num_levels)
        dims: list[Any] = ["B", "h", "w"] + (["L"] if levels > 1 else [])
        sizes = check_tensor(indices, "vqgan.decode(indices)", dims=dims, dtype="long",
                             value_range=(0, self.vocab_size - 1))
        if levels > 1 and sizes["L"] != levels:
            raise ValidationError(f"vqgan.decode(indices): expected {levels} code levels in the last "
                              f"dim, got {sizes['L']}")
        return self.quantize.decode_indices(indices)

    def forward(self, images: Tensor) -> tuple[Tensor, Encoded]:
        """Reconstruct through the straight-through latent: ``(xrec, Encoded)``."""
        return self.reconstruct(images)

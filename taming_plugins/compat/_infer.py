"""Infer an original VQModel/GumbelVQ config from state-dict key names and tensor shapes.

What the keys determine (original layout, see ``taming_plugins.tokenizers._vqgan_modules``):

* ``ch``/``in_channels``: ``encoder.conv_in.weight`` (ch × in × 3 × 3);
  ``ch_mult[i]``: output channels of ``encoder.down.{i}.block.0.conv1`` / ``ch``;
  ``num_res_blocks``: number of ``encoder.down.0.block.{j}``;
  ``z_channels``: input channels of ``decoder.conv_in``; ``double_z``: ``encoder.conv_out``
  has 2·z_channels outputs; ``out_ch``: ``decoder.conv_out``; ``resamp_with_conv``: a
  ``downsample.conv`` exists.
* Attention: the levels ``i`` with ``encoder.down.{i}.attn.*`` (the decoder must attend at
  the same levels). The original config names them by resolution, and the nominal
  ``resolution`` itself leaves no trace in the weights, so the inferred config uses
  ``resolution = NOMINAL_RESOLUTION`` (256, the released models' value) and
  ``attn_resolutions = [resolution / 2**i for each such level]``: the same network.
* ``dropout`` does not show in the weights: 0.0 (no effect in eval mode).
* Quantizer: ``quantize.embedding.weight`` (K×D) -> VQModel; ``quantize.proj.weight``
  (K×C×1×1) and ``quantize.embed.weight`` (K×D) -> GumbelVQ.
* Discriminator (``loss.discriminator.main.{i}``): ``ndf`` and input channels from
  ``main.0``, ``n_layers`` = number of convs − 2, ActNorm when ``*.loc`` keys exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

from torch import Tensor

from taming_core.errors import CheckpointError

#: Nominal image size of inferred configs (only positions attention; see module doc).
NOMINAL_RESOLUTION = 256
VQMODEL = "VQModel"
GUMBELVQ = "GumbelVQ"
VQ_EMBED_KEY = "quantize.embedding.weight"
GUMBEL_PROJ_KEY = "quantize.proj.weight"
GUMBEL_EMBED_KEY = "quantize.embed.weight"
#: Keys of the original quantizers' optional index remapping (not supported).
REMAP_KEY = "quantize.used"
#: Original default of GumbelVQ's ``kl_weight``.
GUMBEL_DEFAULT_KL_WEIGHT = 1e-8
DISC_LOSS_TARGET = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
DUMMY_LOSS_TARGET = "taming.modules.losses.vqperceptual.DummyLoss"
CONV_WEIGHT_DIMS = 4


def _get(state: Mapping[str, Tensor], key: str) -> Tensor:
    try:
        return state[key]
    except KeyError:
        raise CheckpointError(f"cannot infer the VQGAN config: key {key!r} is missing "
                              "(not an original VQModel/GumbelVQ state dict?)") from None


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    """Number of consecutive ``i = 0, 1, ...`` for which ``pattern.format(i)`` is a key."""
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


def infer_kind(state: Mapping[str, Tensor]) -> str:
    """``"VQModel"`` or ``"GumbelVQ"`` from the quantizer's keys."""
    if REMAP_KEY in state:
        raise CheckpointError(f"the checkpoint uses index remapping ({REMAP_KEY!r}), which is not "
                              "supported; export it without remap")
    if GUMBEL_PROJ_KEY in state:
        return GUMBELVQ
    if VQ_EMBED_KEY in state:
        return VQMODEL
    found = sorted(k for k in state if k.startswith("quantize."))
    raise CheckpointError(f"cannot tell the quantizer: expected {VQ_EMBED_KEY!r} (VQModel) or "
                          f"{GUMBEL_PROJ_KEY!r} (GumbelVQ), found quantize keys {found or 'none'}")


def _attention_levels(state: Mapping[str, Tensor], prefix: str, n_levels: int) -> list[int]:
    return [i for i in range(n_levels) if f"{prefix}.{i}.attn.0.q.weight" in state]


def infer_ddconfig(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The original ``ddconfig`` (encoder/decoder hyper-parameters) of a state dict."""
    conv_in = _get(state, "encoder.conv_in.weight")
    ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    n_levels = _count(state, "encoder.down.{}.block.0.conv1.weight")
    num_res_blocks = _count(state, "encoder.down.0.block.{}.conv1.weight")
    if n_levels == 0 or num_res_blocks == 0:
        raise CheckpointError("cannot infer the VQGAN config: no encoder.down.0.block.0.conv1.weight")
    ch_mult = []
    for i in range(n_levels):
        out = int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0])
        if out % ch:
            raise CheckpointError(f"encoder.down.{i}.block.0.conv1.weight has {out} output channels, "
                                  f"not a multiple of ch={ch}")
        ch_mult.append(out // ch)
    enc_attn = _attention_levels(state, "encoder.down", n_levels)
    dec_attn = _attention_levels(state, "decoder.up", n_levels)
    if enc_attn != dec_attn:
        raise CheckpointError(f"encoder attends at levels {enc_attn} but decoder at {dec_attn}; "
                              "the original architecture uses the same attn_resolutions for both")
    resolution = max(NOMINAL_RESOLUTION, 2 ** (n_levels - 1))
    z_channels = int(_get(state, "decoder.conv_in.weight").shape[1])
    enc_out = int(_get(state, "encoder.conv_out.weight").shape[0])
    if enc_out not in (z_channels, 2 * z_channels):
        raise CheckpointError(f"encoder.conv_out has {enc_out} outputs but decoder.conv_in takes "
                              f"{z_channels} channels (expected z_channels or 2·z_channels)")
    return {
        "double_z": enc_out == 2 * z_channels,
        "z_channels": z_channels,
        "resolution": resolution,
        "in_channels": in_channels,
        "out_ch": int(_get(state, "decoder.conv_out.weight").shape[0]),
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": [resolution // 2 ** i for i in enc_attn],
        "dropout": 0.0,
        "resamp_with_conv": n_levels == 1 or "encoder.down.0.downsample.conv.weight" in state,
    }


def infer_discriminator_params(disc_state: Mapping[str, Tensor]) -> Optional[dict[str, Any]]:
    """``lossconfig.params`` disc entries from ``main.*`` keys (prefix removed), or None."""
    if not disc_state:
        return None
    convs = sorted(int(m.group(1)) for k, v in disc_state.items()
                   if (m := re.fullmatch(r"main\.(\d+)\.weight", k)) and v.dim() == CONV_WEIGHT_DIMS)
    if not convs or convs[0] != 0 or len(convs) < 3:
        raise CheckpointError("cannot infer the discriminator: expected an NLayerDiscriminator "
                              f"(main.0 conv, ...), found keys {sorted(disc_state)[:6]}")
    first = disc_state["main.0.weight"]
    return {
        "disc_in_channels": int(first.shape[1]),
        "disc_ndf": int(first.shape[0]),
        "disc_num_layers": len(convs) - 2,
        "use_actnorm": any(k.endswith(".loc") for k in disc_state),
    }


def infer_vqgan_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Original-style ``model.params`` of a VQModel/GumbelVQ state dict (prefix stripped).

    Keys: ``ddconfig``, ``n_embed``, ``embed_dim``, ``lossconfig`` (``target`` +
    ``params``; the DummyLoss when there is no ``loss.discriminator.*``) and, for GumbelVQ,
    ``kl_weight`` (the original default; it leaves no trace in the weights).
    """
    kind = infer_kind(state)
    codes = _get(state, VQ_EMBED_KEY if kind == VQMODEL else GUMBEL_EMBED_KEY)
    params: dict[str, Any] = {
        "embed_dim": int(codes.shape[1]),
        "n_embed": int(codes.shape[0]),
        "ddconfig": infer_ddconfig(state),
    }
    disc = infer_discriminator_params(
        {k[len("loss.discriminator."):]: v for k, v in state.items() if k.startswith("loss.discriminator.")})
    params["lossconfig"] = ({"target": DISC_LOSS_TARGET, "params": disc} if disc is not None
                            else {"target": DUMMY_LOSS_TARGET})
    if kind == GUMBELVQ:
        params["kl_weight"] = GUMBEL_DEFAULT_KL_WEIGHT
    return params

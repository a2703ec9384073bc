"""Load LlamaGen checkpoints (FoundationVision/LlamaGen): its VQ tokenizer and its
class-conditional GPTs.

Files (the Hub repo ``FoundationVision/LlamaGen``): ``vq_ds16_c2i.pt``/``vq_ds8_c2i.pt``
(tokenizers) and ``c2i_{B,L,XL,XXL,3B}_{256,384}.pt`` (priors). Each is
``{"model": state_dict}`` (training checkpoints add ``optimizer``, ``steps`` and an
``argparse.Namespace`` under ``args``; ``{"module": ...}`` and ``{"state_dict": ...}``
load too), read with ``weights_only=True`` allowing ``argparse.Namespace`` and nothing
else. :func:`~taming_plugins.compat.load_taming_checkpoint` dispatches here when it sees
LlamaGen keys, so ``taming convert``, ``--tokenizer`` and ``Pipeline.from_pretrained``
accept these files.

Tokenizer (``VQModel``)
    The network is the original VQGAN with other module names, so it loads into the
    ``vqgan`` tokenizer (no second copy of the architecture): ``encoder.conv_blocks.i.res.j``
    -> ``encoder.down.i.block.j`` (``attn``, ``downsample`` alike), ``mid.0/1/2`` ->
    ``mid.block_1/attn_1/block_2``, and ``decoder.conv_blocks.k`` -> ``decoder.up.{n-1-k}``
    (LlamaGen lists decoder levels from the coarsest). Attention sits at the coarsest level
    only, ``double_z`` is false; ``ch``, ``ch_mult``, ``z_channels``, ``num_res_blocks``,
    codebook size and code width are read from the shapes (released files: ``ch=128``).
    The quantizer is ``vq`` with ``l2_normalize=True`` (normalised latents and codes,
    LlamaGen's ``codebook_l2_norm``) and beta 0.25 on the commitment term.
    ``quantize.codebook_used`` (a training-time usage window, not a weight) is ignored.

Prior (``Transformer``, ``model_type="c2i"``)
    Keys equal the ``llamagen`` prior's (:mod:`taming_plugins.priors.llamagen`). Read from
    the shapes: width, depth, image vocabulary, classes (class table rows − 1, the last
    row being the null class), SwiGLU width; ``n_kv_head`` follows once the head count is
    known. The head count is not in the weights: it comes from the config, or from the
    preset with the same width and depth (:data:`GPT_PRESETS`, LlamaGen's ``GPT_models``).
    The token grid (RoPE) comes from the config (``block_size`` = image tokens, or
    ``image_size``/``downsample_size``), else from the file name's image size
    (``c2i_B_256.pt`` -> 256/16 = a 16×16 grid).
    Ignored: ``freqs_cis``, ``causal_mask`` and ``layers.*.attention.kv_cache.*`` (caches
    of a model saved after sampling).

Every other key must load: missing, unexpected or mis-shaped keys are an error that
names them (see :func:`~taming_plugins.compat._state.load_exact`).

Differences
-----------
* Class conditioning uses our vocabulary layout: class ``y`` is the prefix token
  ``cond_offset + y`` (``cond_offset`` = the tokenizer's codebook size), the null class
  is ``y = num_classes``; see the prior's module docs.
* LlamaGen's prior drops class labels itself in training; ours leaves that to the
  conditioner transforms. ``drop_path`` is not implemented (no effect in eval mode).
* The tokenizer's entropy loss (``entropy_loss_ratio``, 0 in the released configs) maps to
  the ``vq`` quantizer's ``entropy_weight``, whose soft assignment differs in detail.
* Text-conditional (``t2i``) models are refused with one line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from taming_core.config import load_config
from taming_core.errors import CheckpointError, ConfigError

from ..priors.llamagen import PRESETS as GPT_PRESETS
from ..priors.llamagen import LlamaGenPrior
from ..quantizers.vq import DEFAULT_BETA
from ..tokenizers.vqgan import VQGANTokenizer
from ._infer import infer_ddconfig
from ._state import drop_ignored, load_exact

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
VQ_KIND = "VQModel"
GPT_KIND = "Transformer"
#: A key only LlamaGen's VQ encoder has, and one only its GPT has.
VQ_MARKER = "encoder.conv_blocks.0.res.0.conv1.weight"
GPT_MARKER = "tok_embeddings.weight"
T2I_MARKER = "cls_embedding.cap_proj.fc1.weight"
CLASS_TABLE = "cls_embedding.embedding_table.weight"
#: Keys deliberately not loaded (fnmatch patterns).
VQ_IGNORED_KEYS = ("quantize.codebook_used",)
GPT_IGNORED_KEYS = ("freqs_cis", "causal_mask", "layers.*.attention.kv_cache.*")
#: LlamaGen's tokenizer presets (``VQ_models``): the released files use ``ch=128``.
VQ_PRESETS: dict[str, dict[str, Any]] = {
    "vq_ds16": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "z_channels": 256, "num_res_blocks": 2,
                "codebook_size": 16384, "codebook_embed_dim": 8},
    "vq_ds8": {"ch": 128, "ch_mult": [1, 2, 2, 4], "z_channels": 256, "num_res_blocks": 2,
               "codebook_size": 16384, "codebook_embed_dim": 8},
}
PRESETS = (*GPT_PRESETS, *VQ_PRESETS)
#: LlamaGen's ``downsample_size`` for the released c2i models (vq_ds16 tokens).
DEFAULT_DOWNSAMPLE = 16
#: ``c2i_B_256.pt`` / ``c2i_XL_384.pt``: the image size in a released prior's file name.
FILE_IMAGE_SIZE = re.compile(r"_(\d{2,4})(?:\.[A-Za-z]+)?$")
#: ModelArgs fields of the GPT the loader uses (others are training settings).
GPT_ARGS = ("dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "ffn_dim_multiplier",
            "rope_base", "norm_eps", "num_classes", "vocab_size", "cls_token_num", "block_size",
            "model_type")


@dataclass
class LlamaGenCheckpoint:
    """A LlamaGen file, loaded (modules in eval mode).

    Attributes:
        kind: ``"VQModel"`` (tokenizer) or ``"Transformer"`` (prior).
        tokenizer: the ``vqgan`` tokenizer of a VQ file, else None.
        prior: the ``llamagen`` prior of a GPT file, else None.
        config: the architecture used, in LlamaGen's ``ModelArgs`` names.
        preset: the preset name used or matched (``GPT-B``, ``vq_ds16``...), or None.
        ignored_keys: checkpoint keys deliberately not loaded.
        inferred: True when nothing but the weights (and presets) described the model.
        extra: other top-level entries (``steps``, ``args``...; not the optimizer state).
    """

    kind: str
    tokenizer: Optional[VQGANTokenizer] = None
    prior: Optional[LlamaGenPrior] = None
    config: dict[str, Any] = field(default_factory=dict)
    preset: Optional[str] = None
    ignored_keys: list[str] = field(default_factory=list)
    inferred: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def detect(state: Mapping[str, Tensor]) -> Optional[str]:
    """``"VQModel"`` / ``"Transformer"`` for LlamaGen state dicts, None otherwise."""
    if VQ_MARKER in state:
        return VQ_KIND
    if GPT_MARKER in state and any(k.startswith("layers.") for k in state):
        return GPT_KIND
    return None


def parse_config(config: Union[PathLike, Mapping[str, Any], None]) -> tuple[Optional[str], dict[str, Any]]:
    """``(preset or None, ModelArgs fields)`` of a config: a preset name, a mapping / JSON /
    YAML file of LlamaGen ``ModelArgs`` fields (optionally under ``model_args``, with
    ``preset``, ``image_size``, ``downsample_size`` and, for tokenizers, ``ch``), or None."""
    if config is None:
        return None, {}
    if isinstance(config, str) and config in PRESETS and not Path(config).exists():
        return config, {}
    cfg = dict(load_config(config))
    args = dict(cfg.get("model_args", {}))
    for key, value in cfg.items():
        if key != "model_args":
            args.setdefault(key, value)
    if "encoder_decoder_ch" in args:  # the reference fixtures' name for ch
        args.setdefault("ch", args.pop("encoder_decoder_ch"))
    preset = args.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"preset: unknown LlamaGen preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return preset, args


# --------------------------------------------------------------------------- tokenizer
def _vq_key(key: str, n_levels: int) -> str:
    """A LlamaGen VQModel key in the ``vqgan`` tokenizer's layout."""
    m = re.fullmatch(r"(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)(\..*)", key)
    if m:
        part, level, sub, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        stage = "down" if part == "encoder" else "up"
        if part == "decoder":
            level = n_levels - 1 - level
        return f"{part}.{stage}.{level}.{'block' if sub == 'res' else sub}{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(\d)(\..*)", key)
    if m:
        name = {"0": "block_1", "1": "attn_1", "2": "block_2"}.get(m.group(2))
        if name is not None:
            return f"{m.group(1)}.mid.{name}{m.group(3)}"
    return key


def to_vqgan_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a LlamaGen VQModel state dict (ignored keys removed) to our layout."""
    n_levels = 0
    while f"encoder.conv_blocks.{n_levels}.res.0.conv1.weight" in state:
        n_levels += 1
    return {_vq_key(k, n_levels): v for k, v in state.items()}


def _llamagen_vq_key(key: str, n_levels: int) -> str:
    """The inverse of :func:`_vq_key`."""
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn|downsample|upsample)(\..*)", key)
    if m:
        part, level, sub, rest = m.group(1), int(m.group(3)), m.group(4), m.group(5)
        if part == "decoder":
            level = n_levels - 1 - level
        return f"{part}.conv_blocks.{level}.{'res' if sub == 'block' else sub}{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|attn_1|block_2)(\..*)", key)
    if m:
        return f"{m.group(1)}.mid.{('block_1', 'attn_1', 'block_2').index(m.group(2))}{m.group(3)}"
    return key


def from_vqgan_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``vqgan`` tokenizer state dict in LlamaGen's VQModel key layout (the way back)."""
    n_levels = 0
    while f"encoder.down.{n_levels}.block.0.conv1.weight" in state:
        n_levels += 1
    return {_llamagen_vq_key(k, n_levels): v for k, v in state.items()}


def load_vq_state(state_dict: Mapping[str, Tensor],
                  config: Union[PathLike, Mapping[str, Any], None] = None,
                  where: str = "LlamaGen VQModel") -> LlamaGenCheckpoint:
    """Build and load the ``vqgan`` tokenizer of a LlamaGen VQModel state dict."""
    preset, args = parse_config(config)
    state, ignored = drop_ignored(state_dict, VQ_IGNORED_KEYS)
    ours = to_vqgan_state(state)
    dd = infer_ddconfig(ours)
    if "quantize.embedding.weight" not in ours:
        raise CheckpointError(f"{where}: no quantize.embedding.weight (the codebook)")
    codes = ours["quantize.embedding.weight"]
    found = {"ch": dd["ch"], "ch_mult": dd["ch_mult"], "z_channels": dd["z_channels"],
             "num_res_blocks": dd["num_res_blocks"], "codebook_size": int(codes.shape[0]),
             "codebook_embed_dim": int(codes.shape[1])}
    expected = {**(VQ_PRESETS[preset] if preset in VQ_PRESETS else {}),
                **{k: args[k] for k in ("ch", "z_channels", "codebook_size", "codebook_embed_dim")
                   if k in args}}
    if "encoder_ch_mult" in args:
        expected["ch_mult"] = list(args["encoder_ch_mult"])
    if args.get("decoder_ch_mult", args.get("encoder_ch_mult")) != args.get("encoder_ch_mult"):
        raise ConfigError(f"{where}: encoder_ch_mult and decoder_ch_mult differ; the vqgan tokenizer "
                          "uses one ch_mult for both")
    clash = [f"{k}={found[k]} (config: {v})" for k, v in expected.items() if k in found and found[k] != v]
    if clash:
        raise CheckpointError(f"{where}: the weights do not match the config: {', '.join(clash)}")
    if preset is not None and preset not in VQ_PRESETS:
        raise ConfigError(f"{where}: {preset!r} is a GPT preset; tokenizer presets: {', '.join(VQ_PRESETS)}")
    if dd["double_z"] or len(dd["attn_resolutions"]) != 1 or \
            dd["attn_resolutions"][0] != dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1):
        raise CheckpointError(f"{where}: not LlamaGen's VQ layout (attention only at the coarsest "
                              f"level, single z): got attention at {dd['attn_resolutions']}")
    if not args.get("codebook_l2_norm", True):
        raise ConfigError(f"{where}: codebook_l2_norm false is not supported (the released models "
                          "normalise codes)")
    quantizer = {"name": "vq", "codebook_size": found["codebook_size"], "dim": found["codebook_embed_dim"],
                 "beta": float(args.get("commit_loss_beta", DEFAULT_BETA)), "l2_normalize": True,
                 "entropy_weight": float(args.get("entropy_loss_ratio", 0.0))}
    dd["dropout"] = float(args.get("dropout_p", 0.0))
    tokenizer = VQGANTokenizer(**dd, embed_dim=found["codebook_embed_dim"], quantizer=quantizer)
    load_exact(tokenizer, ours, f"{where} (weights renamed to the vqgan layout)")
    tokenizer.eval()
    config_out = {**found, "encoder_ch_mult": found["ch_mult"], "decoder_ch_mult": found["ch_mult"],
                  "codebook_l2_norm": True, "commit_loss_beta": quantizer["beta"],
                  "entropy_loss_ratio": quantizer["entropy_weight"], "dropout_p": dd["dropout"]}
    config_out.pop("ch_mult")
    matched = preset or next((n for n, p in VQ_PRESETS.items()
                              if all(found[k] == v for k, v in p.items())), None)
    return LlamaGenCheckpoint(kind=VQ_KIND, tokenizer=tokenizer, config=config_out, preset=matched,
                              ignored_keys=ignored, inferred=config is None)


# --------------------------------------------------------------------------- prior
def _grid_size(args: Mapping[str, Any], path: Optional[PathLike], where: str) -> int:
    if args.get("block_size") is not None:
        tokens = int(args["block_size"])
    else:
        size = args.get("image_size")
        if size is None and path is not None:
            m = FILE_IMAGE_SIZE.search(Path(path).name)
            size = int(m.group(1)) if m else None
        if size is None:
            raise ConfigError(f"{where}: cannot tell the token grid (the rotary embedding depends on "
                              "it): give block_size (image tokens) or image_size in the config, or keep "
                              "the released file name (e.g. c2i_B_256.pt)")
        side = int(size) // int(args.get("downsample_size", DEFAULT_DOWNSAMPLE))
        tokens = side * side
    side = int(round(tokens ** 0.5))
    if side * side != tokens or side <= 0:
        raise ConfigError(f"{where}: block_size {tokens} is not a square number of image tokens")
    return side


def _heads(args: Mapping[str, Any], preset: Optional[str], dim: int, n_layer: int,
           where: str) -> tuple[int, Optional[str]]:
    if args.get("n_head") is not None:
        return int(args["n_head"]), preset
    if preset is not None:
        if preset not in GPT_PRESETS:
            raise ConfigError(f"{where}: {preset!r} is a tokenizer preset; GPT presets: {', '.join(GPT_PRESETS)}")
        p = GPT_PRESETS[preset]
        if (p["dim"], p["n_layer"]) != (dim, n_layer):
            raise CheckpointError(f"{where}: preset {preset} has dim {p['dim']} and {p['n_layer']} layers, "
                                  f"the weights dim {dim} and {n_layer} layers")
        return p["n_head"], preset
    for name, p in GPT_PRESETS.items():
        if (p["dim"], p["n_layer"]) == (dim, n_layer):
            return p["n_head"], name
    raise ConfigError(f"{where}: the head count is not in the weights and no preset has dim {dim} with "
                      f"{n_layer} layers; give n_head in the config")


def load_gpt_state(state_dict: Mapping[str, Tensor],
                   config: Union[PathLike, Mapping[str, Any], None] = None,
                   path: Optional[PathLike] = None, *,
                   cond_offset: Optional[int] = None) -> LlamaGenCheckpoint:
    """Build and load the ``llamagen`` prior of a LlamaGen c2i ``Transformer`` state dict.

    ``cond_offset`` places the class ids in the prior's vocabulary (default: right after
    the image ids, the pipeline's default)."""
    where = str(path) if path is not None else "LlamaGen Transformer"
    if T2I_MARKER in state_dict:
        raise CheckpointError(f"{where}: a text-conditional (t2i) LlamaGen model; only class-"
                              "conditional (c2i) models are supported")
    preset, args = parse_config(config)
    if args.get("model_type", "c2i") != "c2i":
        raise ConfigError(f"{where}: model_type {args['model_type']!r} is not supported (c2i only)")
    if int(args.get("cls_token_num", 1)) != 1:
        raise ConfigError(f"{where}: cls_token_num {args['cls_token_num']} is not supported (c2i uses 1)")
    state, ignored = drop_ignored(state_dict, GPT_IGNORED_KEYS)
    for key in (GPT_MARKER, CLASS_TABLE, "layers.0.attention.wqkv.weight", "layers.0.feed_forward.w1.weight"):
        if key not in state:
            raise CheckpointError(f"{where}: key {key!r} is missing (not a LlamaGen c2i Transformer?)")
    vocab, dim = (int(s) for s in state[GPT_MARKER].shape)
    n_layer = 0
    while f"layers.{n_layer}.attention.wqkv.weight" in state:
        n_layer += 1
    n_head, matched = _heads(args, preset, dim, n_layer, where)
    if dim % n_head:
        raise CheckpointError(f"{where}: width {dim} does not divide into {n_head} heads")
    head_dim = dim // n_head
    qkv_rows = int(state["layers.0.attention.wqkv.weight"].shape[0])
    kv2 = qkv_rows // head_dim - n_head
    if qkv_rows % head_dim or kv2 <= 0 or kv2 % 2:
        raise CheckpointError(f"{where}: wqkv has {qkv_rows} rows, which is no (n_head + 2·n_kv_head)"
                              f"·head_dim with n_head={n_head}, head_dim={head_dim}")
    n_kv_head = kv2 // 2
    if args.get("n_kv_head") is not None and int(args["n_kv_head"]) != n_kv_head:
        raise CheckpointError(f"{where}: the config says n_kv_head={args['n_kv_head']}, the weights "
                              f"{n_kv_head}")
    table_rows = int(state[CLASS_TABLE].shape[0])
    num_classes = table_rows - 1
    if args.get("num_classes") is not None and int(args["num_classes"]) != num_classes:
        raise CheckpointError(f"{where}: the class table has {table_rows} rows; expected num_classes + 1 "
                              f"(the null class) with num_classes={args['num_classes']}")
    if args.get("vocab_size") is not None and int(args["vocab_size"]) != vocab:
        raise CheckpointError(f"{where}: the config says vocab_size={args['vocab_size']}, the weights {vocab}")
    grid = _grid_size(args, path, where)
    prior = LlamaGenPrior(vocab, num_classes, grid, n_layer=n_layer, n_head=n_head, dim=dim,
                          n_kv_head=n_kv_head,
                          ffn_hidden=int(state["layers.0.feed_forward.w1.weight"].shape[0]),
                          rope_base=float(args.get("rope_base", 10000.0)),
                          norm_eps=float(args.get("norm_eps", 1e-5)), cond_offset=cond_offset)
    load_exact(prior, state, f"{where}: LlamaGen Transformer weights")
    prior.eval()
    config_out = {"dim": dim, "n_layer": n_layer, "n_head": n_head, "n_kv_head": n_kv_head,
                  "vocab_size": vocab, "num_classes": num_classes, "block_size": grid * grid,
                  "cls_token_num": 1, "model_type": "c2i", "rope_base": prior.get_config()["rope_base"],
                  "norm_eps": prior.get_config()["norm_eps"]}
    return LlamaGenCheckpoint(kind=GPT_KIND, prior=prior, config=config_out, preset=matched,
                              ignored_keys=ignored, inferred=config is None)


def load_llamagen_state(state: Mapping[str, Tensor], config: Union[PathLike, Mapping[str, Any], None],
                        path: PathLike, extra: Optional[Mapping[str, Any]] = None) -> LlamaGenCheckpoint:
    """Dispatch a LlamaGen state dict to the tokenizer or prior loader (see module doc)."""
    kind = detect(state)
    if kind == VQ_KIND:
        try:
            ckpt = load_vq_state(state, config, str(path))
        except CheckpointError as exc:
            msg = str(exc)
            raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    elif kind == GPT_KIND:
        ckpt = load_gpt_state(state, config, path)
    else:
        raise CheckpointError(f"{path}: not a LlamaGen VQModel or Transformer state dict")
    ckpt.extra = {k: v for k, v in (extra or {}).items() if k != "optimizer"}
    log.info("loaded LlamaGen %s from %s (preset %s; ignored %d keys)", ckpt.kind, path, ckpt.preset,
             len(ckpt.ignored_keys))
    return ckpt

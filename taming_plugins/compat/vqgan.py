"""Load and save original taming-transformers ``VQModel`` / ``GumbelVQ`` checkpoints.

An original checkpoint is a Lightning ``.ckpt``: ``{"state_dict": {...}, "global_step",
"epoch", ...}``. Its keys map one to one onto our modules:

* ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``, ``quantize.*``
  -> the ``vqgan`` tokenizer (``quantize.embedding.weight`` -> quantizer ``vq`` with
  ``legacy_beta=True``, beta 0.25; ``quantize.proj.*`` + ``quantize.embed.weight`` ->
  quantizer ``gumbel``, fed by ``quant_conv`` with ``z_channels`` outputs);
* ``loss.discriminator.*`` -> the ``patchgan`` discriminator (BatchNorm or ActNorm);
* ``loss.perceptual_loss.*`` (frozen LPIPS) and ``loss.logvar`` are ignored
  (:data:`IGNORED_KEYS`); every other key must load, and any missing or unexpected key
  is an error that names it.

The config is the original YAML (``model.target`` + ``model.params``) or is inferred
from the weights (:func:`~taming_plugins.compat._infer.infer_vqgan_config`).

Behaviour notes: loaded modules are in eval mode. A loaded GumbelVQ picks the argmax
code in eval mode, whereas the original still drew Gumbel noise there; in training mode
both sample. ``dropout`` is not stored in the weights (inferred configs use 0.0).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from taming_core.config import load_config
from taming_core.errors import CheckpointError, ConfigError
from taming_core.io import atomic_path

from ..discriminators.patchgan import PatchGANDiscriminator
from ..quantizers.gumbel import GumbelQuantizer
from ..quantizers.vq import DEFAULT_BETA, VectorQuantizer
from ..tokenizers.vqgan import VQGANTokenizer
from ._infer import (DISC_LOSS_TARGET, DUMMY_LOSS_TARGET, GUMBEL_DEFAULT_KL_WEIGHT, GUMBELVQ,
                     VQMODEL, infer_discriminator_params, infer_kind, infer_vqgan_config)
from ._state import (StateDict, drop_ignored, load_exact, save_lightning_checkpoint,
                     split_prefix, with_prefix)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: Checkpoint keys that are deliberately not loaded (fnmatch patterns).
IGNORED_KEYS = ("loss.perceptual_loss.*", "loss.logvar")
DISC_PREFIX = "loss.discriminator."
TARGETS = {VQMODEL: "taming.models.vqgan.VQModel", GUMBELVQ: "taming.models.vqgan.GumbelVQ"}
#: Original Encoder/Decoder defaults for optional ddconfig keys.
DDCONFIG_DEFAULTS = {"double_z": True, "dropout": 0.0, "resamp_with_conv": True}
DDCONFIG_REQUIRED = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels",
                     "resolution", "z_channels")
#: Original Decoder options that VQGAN never used; accepted only when false.
DDCONFIG_UNSUPPORTED = ("give_pre_end", "tanh_out")
#: Original VQLPIPSWithDiscriminator defaults of the discriminator arguments.
DISC_DEFAULTS = {"disc_in_channels": 3, "disc_ndf": 64, "disc_num_layers": 3, "use_actnorm": False}
#: Gumbel temperature at which the original GumbelQuantize starts (``temp_init``).
GUMBEL_TEMP_INIT = 1.0
TEMPERATURE_SCHEDULER_TARGET = "taming.lr_scheduler.LambdaWarmUpCosineScheduler"


@dataclass
class TamingCheckpoint:
    """An original VQModel/GumbelVQ checkpoint, loaded.

    Attributes:
        tokenizer: the ``vqgan`` tokenizer (eval mode).
        discriminator: the ``patchgan`` discriminator from ``loss.discriminator.*`` (eval
            mode), or None when the checkpoint has none.
        config: the original-style ``model.params`` (``ddconfig``, ``n_embed``,
            ``embed_dim``, ``lossconfig``...), given or inferred.
        kind: ``"VQModel"`` or ``"GumbelVQ"``.
        ignored_keys: checkpoint keys deliberately not loaded (see :data:`IGNORED_KEYS`).
        inferred: True when ``config`` was inferred from the weights.
        extra: other top-level checkpoint entries (``global_step``, ``epoch``...).
    """

    tokenizer: VQGANTokenizer
    discriminator: Optional[PatchGANDiscriminator]
    config: dict[str, Any]
    kind: str
    ignored_keys: list[str] = field(default_factory=list)
    inferred: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def original_config(self) -> dict[str, Any]:
        """``{"model": {"target": ..., "params": ...}}`` as in the original YAML."""
        return {"model": {"target": TARGETS[self.kind], "params": self.config}}


# --------------------------------------------------------------------------- configs
def parse_original_config(config: Union[PathLike, Mapping[str, Any]]) -> tuple[Optional[str], dict[str, Any]]:
    """``(kind or None, model.params)`` of an original YAML (path or dict).

    Accepts ``{"model": {"target", "params"}}`` or the inner ``{"target", "params"}``.
    """
    cfg = load_config(config)
    model = cfg.get("model", cfg)
    if not isinstance(model, Mapping) or "params" not in model:
        raise ConfigError(f"original config: expected 'model.target' and 'model.params', got top-level "
                          f"keys {sorted(cfg)}")
    target = model.get("target")
    kind = None
    if target is not None:
        kind = str(target).rsplit(".", 1)[-1]
        if kind not in TARGETS:
            raise ConfigError(f"original config: model.target {target!r} is not a VQModel or GumbelVQ "
                              f"(supported: {', '.join(TARGETS.values())})")
    params = model["params"]
    if not isinstance(params, Mapping):
        raise ConfigError(f"original config: model.params must be a mapping, got {type(params).__name__}")
    return kind, dict(params)


def _ddconfig_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    dd = params.get("ddconfig")
    if not isinstance(dd, Mapping):
        raise ConfigError("model.params.ddconfig: missing or not a mapping")
    dd = {**DDCONFIG_DEFAULTS, **dd}
    missing = [k for k in DDCONFIG_REQUIRED if k not in dd]
    if missing:
        raise ConfigError(f"model.params.ddconfig: missing {', '.join(missing)}")
    for key in DDCONFIG_UNSUPPORTED:
        if dd.pop(key, False):
            raise ConfigError(f"model.params.ddconfig.{key}: true is not supported by the vqgan tokenizer")
    unknown = sorted(set(dd) - set(DDCONFIG_REQUIRED) - set(DDCONFIG_DEFAULTS))
    if unknown:
        raise ConfigError(f"model.params.ddconfig: unknown keys {', '.join(unknown)}")
    return dd


def build_tokenizer(kind: str, params: Mapping[str, Any]) -> VQGANTokenizer:
    """An untrained ``vqgan`` tokenizer with the architecture of original ``params``."""
    if params.get("remap") is not None:
        raise ConfigError("model.params.remap: index remapping is not supported")
    for key in ("n_embed", "embed_dim"):
        if key not in params:
            raise ConfigError(f"model.params.{key}: missing")
    dd = _ddconfig_kwargs(params)
    if kind == VQMODEL:
        quantizer: dict[str, Any] = {"name": "vq", "beta": DEFAULT_BETA, "legacy_beta": True}
        q_channels = None
    else:
        quantizer = {"name": "gumbel", "kl_weight": float(params.get("kl_weight", GUMBEL_DEFAULT_KL_WEIGHT)),
                     "temperature": GUMBEL_TEMP_INIT, "straight_through": True}
        q_channels = int(dd["z_channels"])  # the original GumbelQuantize's proj input
    return VQGANTokenizer(**dd, embed_dim=int(params["embed_dim"]), n_embed=int(params["n_embed"]),
                          quantizer=quantizer, quant_conv_channels=q_channels)


def _disc_params(params: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """Disc arguments of a ``lossconfig`` whose target has a discriminator, else None."""
    loss = params.get("lossconfig")
    if not isinstance(loss, Mapping) or "Discriminator" not in str(loss.get("target", "")):
        return None
    given = dict(loss.get("params") or {})
    return {k: given.get(k, default) for k, default in DISC_DEFAULTS.items()}


def build_discriminator(disc_params: Mapping[str, Any]) -> PatchGANDiscriminator:
    """An untrained PatchGAN from original ``lossconfig.params`` disc entries."""
    return PatchGANDiscriminator(in_channels=int(disc_params["disc_in_channels"]),
                                 ndf=int(disc_params["disc_ndf"]),
                                 n_layers=int(disc_params["disc_num_layers"]),
                                 use_actnorm=bool(disc_params["use_actnorm"]))


# --------------------------------------------------------------------------- loading
def load_vqgan_state(state_dict: Mapping[str, Tensor], config_params: Optional[Mapping[str, Any]] = None,
                     *, expected_kind: Optional[str] = None,
                     ) -> tuple[VQGANTokenizer, Optional[PatchGANDiscriminator], dict[str, Any]]:
    """Build and load a tokenizer (+ discriminator) from an original VQModel/GumbelVQ state
    dict whose keys start at ``encoder.``/``quantize.``/``loss.`` (outer prefixes such as
    ``first_stage_model.`` already stripped).

    Args:
        state_dict: the tensors.
        config_params: original ``model.params`` (``ddconfig``, ``n_embed``, ``embed_dim``,
            ``lossconfig``...), or None to infer them from the weights.
        expected_kind: ``"VQModel"``/``"GumbelVQ"`` when a config names its target; weights
            of the other kind are an error.

    Returns:
        ``(tokenizer, discriminator or None, info)``, modules in eval mode; ``info`` has
        ``kind``, ``config`` (the params used), ``ignored_keys`` and ``inferred``.
    """
    state, ignored = drop_ignored(state_dict, IGNORED_KEYS)
    kind = infer_kind(state)
    if expected_kind is not None and expected_kind != kind:
        raise CheckpointError(f"the config says {expected_kind} but the weights are a {kind}")
    inferred = config_params is None
    params = infer_vqgan_config(state) if config_params is None else dict(config_params)
    tokenizer = build_tokenizer(kind, params)
    disc_state = split_prefix(state, DISC_PREFIX)
    model_state = {k: v for k, v in state.items() if not k.startswith(DISC_PREFIX)}
    load_exact(tokenizer, model_state, f"{kind} weights")
    discriminator = None
    if disc_state:
        disc_params = _disc_params(params) or infer_discriminator_params(disc_state)
        discriminator = build_discriminator(disc_params)  # type: ignore[arg-type]
        load_exact(discriminator, disc_state, f"discriminator weights ({DISC_PREFIX}*)")
        discriminator.eval()
    tokenizer.eval()
    info = {"kind": kind, "config": params, "ignored_keys": ignored, "inferred": inferred}
    return tokenizer, discriminator, info


def load_vqmodel_checkpoint(state: StateDict, extra: Mapping[str, Any], ckpt_path: PathLike,
                            config: Union[PathLike, Mapping[str, Any], None] = None) -> TamingCheckpoint:
    """A ``VQModel``/``GumbelVQ`` checkpoint's state dict (read by
    :func:`~taming_plugins.compat.original.load_taming_checkpoint`) -> :class:`TamingCheckpoint`."""
    kind_given, params = parse_original_config(config) if config is not None else (None, None)
    try:
        tokenizer, disc, info = load_vqgan_state(state, params, expected_kind=kind_given)
    except CheckpointError as exc:
        raise CheckpointError(f"{ckpt_path}: {exc}") from None
    log.info("loaded %s from %s (%s config; ignored %d keys)", info["kind"], ckpt_path,
             "inferred" if info["inferred"] else "given", len(info["ignored_keys"]))
    return TamingCheckpoint(tokenizer=tokenizer, discriminator=disc, config=info["config"],
                            kind=info["kind"], ignored_keys=info["ignored_keys"],
                            inferred=info["inferred"], extra=dict(extra))


# --------------------------------------------------------------------------- saving
def original_params(tokenizer: VQGANTokenizer,
                    discriminator: Optional[PatchGANDiscriminator] = None) -> tuple[str, dict[str, Any]]:
    """``(kind, model.params)`` describing our modules in the original config layout.

    Raises :class:`ConfigError` for anything the original code cannot express (another
    quantizer, a code projection, cosine codes, a non-PatchGAN discriminator...).
    """
    if not isinstance(tokenizer, VQGANTokenizer):
        raise ConfigError(f"save_taming_checkpoint: expected a vqgan tokenizer, "
                          f"got {type(tokenizer).__name__}")
    if tokenizer.padding_mode != "zeros":
        raise ConfigError(f"save_taming_checkpoint: the original code pads with zeros only, this "
                          f"tokenizer with {tokenizer.padding_mode!r} (padding_mode)")
    if tokenizer.downsample_padding != "original":
        raise ConfigError(f"save_taming_checkpoint: the original code pads right/bottom before "
                          f"downsampling, this tokenizer {tokenizer.downsample_padding!r} (downsample_padding)")
    q = tokenizer.quantize
    dd = tokenizer.ddconfig
    params: dict[str, Any] = {"embed_dim": tokenizer.embed_dim, "n_embed": tokenizer.vocab_size,
                              "ddconfig": dd}
    if isinstance(q, VectorQuantizer):
        if q.code_dim != q.dim or q.l2_normalize:
            raise ConfigError("save_taming_checkpoint: the original VectorQuantizer has no code "
                              "projection or l2-normalised codes")
        kind = VQMODEL
    elif isinstance(q, GumbelQuantizer):
        if not tokenizer.quant_conv_channels == tokenizer.embed_dim == dd["z_channels"]:
            raise ConfigError("save_taming_checkpoint: an original GumbelVQ needs embed_dim == z_channels "
                              f"== quant_conv channels, got {tokenizer.embed_dim}, {dd['z_channels']}, "
                              f"{tokenizer.quant_conv_channels}")
        kind = GUMBELVQ
        temp = float(q.temperature)
        params["kl_weight"] = q.kl_weight
        params["temperature_scheduler_config"] = {
            "target": TEMPERATURE_SCHEDULER_TARGET,
            "params": {"warm_up_steps": 0, "max_decay_steps": 1, "lr_start": temp, "lr_max": temp,
                       "lr_min": temp}}
    else:
        raise ConfigError(f"save_taming_checkpoint: the original code has no {type(q).__name__}; "
                          "only the vq and gumbel quantizers can be exported")
    if tokenizer.quant_conv_channels != tokenizer.embed_dim:
        raise ConfigError(f"save_taming_checkpoint: quant_conv must output embed_dim="
                          f"{tokenizer.embed_dim} channels, got {tokenizer.quant_conv_channels}")
    if discriminator is None:
        params["lossconfig"] = {"target": DUMMY_LOSS_TARGET}
    elif isinstance(discriminator, PatchGANDiscriminator):
        params["lossconfig"] = {"target": DISC_LOSS_TARGET, "params": {
            "disc_start": 0, "disc_in_channels": discriminator.in_channels,
            "disc_ndf": discriminator.ndf, "disc_num_layers": discriminator.n_layers,
            "use_actnorm": discriminator.use_actnorm}}
    else:
        raise ConfigError(f"save_taming_checkpoint: only a patchgan discriminator can be exported, "
                          f"got {type(discriminator).__name__}")
    return kind, params


def save_taming_checkpoint(path: PathLike, tokenizer: VQGANTokenizer,
                           discriminator: Optional[PatchGANDiscriminator] = None, *,
                           config_path: Optional[PathLike] = None, global_step: int = 0,
                           epoch: int = 0) -> dict[str, Any]:
    """Write our modules as an original Lightning ``.ckpt`` (atomically).

    Keys follow the original layout (the discriminator under ``loss.discriminator.``).
    Returns the original YAML config ``{"model": {"target", "params"}}``, also written to
    ``config_path`` when given.
    """
    kind, params = original_params(tokenizer, discriminator)
    state: StateDict = dict(tokenizer.state_dict())
    if discriminator is not None:
        state.update(with_prefix(discriminator.state_dict(), DISC_PREFIX))
    save_lightning_checkpoint(path, state, global_step=int(global_step), epoch=int(epoch))
    config = {"model": {"target": TARGETS[kind], "params": params}}
    if config_path is not None:
        import yaml

        with atomic_path(config_path) as tmp:
            Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log.info("saved %s checkpoint with %d tensors to %s", kind, len(state), path)
    return config

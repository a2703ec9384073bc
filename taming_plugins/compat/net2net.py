"""Load original ``Net2NetTransformer`` checkpoints (stage-2 GPT + its first stage).

Key groups of the Lightning state dict:

* ``transformer.*`` -> the ``gpt`` prior (minGPT names are ours); the stored causal
  mask ``transformer.blocks.N.attn.mask`` is ignored (:data:`IGNORED_KEYS`).
* ``first_stage_model.*`` -> the ``vqgan`` tokenizer, through
  :func:`~taming_plugins.compat.vqgan.load_vqgan_state`.
* ``cond_stage_model.*`` -> a second ``vqgan`` tokenizer for VQGAN-tokenized conditions
  (depth, segmentation...); conditions without weights (SOS, class labels, the first
  stage itself) are described by :attr:`Net2NetCheckpoint.cond_stage`.

Every other key is an error naming it. The original project YAML is required: the
number of attention heads and the conditioning cannot be read from the weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from torch import Tensor

from taming_core.config import load_config
from taming_core.errors import CheckpointError, ConfigError

from ..priors.gpt import GPT
from ..tokenizers.vqgan import VQGANTokenizer
from ._state import drop_ignored, list_keys, load_exact, split_prefix
from .vqgan import load_vqgan_state

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
NET2NET_TARGET = "taming.models.cond_transformer.Net2NetTransformer"
#: Keys deliberately not loaded (fnmatch): the causal mask buffer of every block.
IGNORED_KEYS = ("transformer.blocks.*.attn.mask",)
PREFIXES = {"transformer": "transformer.", "first_stage": "first_stage_model.",
            "cond_stage": "cond_stage_model."}
#: Original minGPT config keys and the ``gpt`` prior's argument names (same names).
GPT_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "embd_pdrop",
            "resid_pdrop", "attn_pdrop", "n_unmasked")
GPT_REQUIRED = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
UNCONDITIONAL = "__is_unconditional__"
FIRST_STAGE = "__is_first_stage__"
IDENTITY_PERMUTER = "taming.modules.transformer.permuter.Identity"
#: Net2NetTransformer defaults of the settings kept on the result.
DEFAULT_SOS_TOKEN = 0
DEFAULT_PKEEP = 1.0


@dataclass
class Net2NetCheckpoint:
    """An original Net2NetTransformer checkpoint, loaded (modules in eval mode).

    Attributes:
        tokenizer: the first stage (``vqgan``), decodes sampled grids.
        prior: the ``gpt`` prior over raw token ids.
        sos_token: the id prefixed to every sequence by unconditional models.
        unconditional: True when the condition is only the SOS token.
        cond_stage: ``"unconditional"``, ``"first_stage"`` (the condition is tokenized
            by ``tokenizer``), ``"vqgan"`` (by ``cond_tokenizer``) or the original
            target name of a weight-less condition stage (e.g. ``...SOSProvider``).
        cond_tokenizer: the ``cond_stage_model`` tokenizer when the checkpoint has one.
        config: the original ``model.params``.
        ignored_keys: keys deliberately not loaded.
    """

    tokenizer: VQGANTokenizer
    prior: GPT
    sos_token: int
    unconditional: bool
    cond_stage: str
    cond_tokenizer: Optional[VQGANTokenizer] = None
    config: dict[str, Any] = field(default_factory=dict)
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def first_stage_key(self) -> str:
        """Batch key of the images in the original data pipeline."""
        return str(self.config.get("first_stage_key", "image"))

    @property
    def cond_stage_key(self) -> str:
        """Batch key of the condition in the original data pipeline."""
        return str(self.config.get("cond_stage_key", "depth"))

    @property
    def pkeep(self) -> float:
        """Probability of keeping a token during training (original corruption)."""
        return float(self.config.get("pkeep", DEFAULT_PKEEP))


def _net2net_params(config: Union[PathLike, Mapping[str, Any], None], where: str) -> dict[str, Any]:
    if config is None:
        raise CheckpointError(f"{where}: a Net2NetTransformer checkpoint needs its original project "
                              "YAML (config=...): the number of heads and the conditioning cannot "
                              "be read from the weights")
    cfg = load_config(config)
    model = cfg.get("model", cfg)
    if not isinstance(model, Mapping) or not isinstance(model.get("params"), Mapping):
        raise ConfigError(f"{where}: expected 'model.target' and 'model.params' in the config, got "
                          f"top-level keys {sorted(cfg)}")
    target = model.get("target")
    if target is not None and str(target).rsplit(".", 1)[-1] != NET2NET_TARGET.rsplit(".", 1)[-1]:
        raise ConfigError(f"{where}: model.target {target!r} is not {NET2NET_TARGET}")
    return dict(model["params"])


def _section(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    section = params.get(key)
    if not isinstance(section, Mapping):
        raise ConfigError(f"model.params.{key}: missing or not a mapping")
    inner = section.get("params", {})
    if not isinstance(inner, Mapping):
        raise ConfigError(f"model.params.{key}.params: expected a mapping, got {type(inner).__name__}")
    return dict(inner)


def build_prior(params: Mapping[str, Any]) -> GPT:
    """An untrained ``gpt`` prior from original ``transformer_config.params``."""
    missing = [k for k in GPT_REQUIRED if k not in params]
    if missing:
        raise ConfigError(f"model.params.transformer_config.params: missing {', '.join(missing)}")
    unknown = sorted(set(params) - set(GPT_KEYS))
    if unknown:
        raise ConfigError(f"model.params.transformer_config.params: unknown keys {', '.join(unknown)}")
    kwargs = {k: params[k] for k in GPT_KEYS if k in params}
    return GPT(**kwargs)


def _check_permuter(params: Mapping[str, Any]) -> None:
    permuter = params.get("permuter_config")
    if permuter is None:
        return
    target = permuter.get("target") if isinstance(permuter, Mapping) else permuter
    if target != IDENTITY_PERMUTER:
        raise ConfigError(f"model.params.permuter_config: only {IDENTITY_PERMUTER} is supported, "
                          f"got {target!r}")


def _load_cond_stage(params: Mapping[str, Any], state: Mapping[str, Tensor],
                     where: str) -> tuple[str, Optional[VQGANTokenizer]]:
    """(cond_stage description, cond tokenizer or None); as in the original,
    ``unconditional: true`` overrides any cond_stage_config."""
    cond_cfg = params.get("cond_stage_config")
    if params.get("unconditional", False):
        cond_cfg = UNCONDITIONAL
    cond_state = split_prefix(state, PREFIXES["cond_stage"])
    if cond_cfg in (UNCONDITIONAL, FIRST_STAGE):
        if cond_state:
            raise CheckpointError(f"{where}: cond_stage_config is {cond_cfg!r} but the checkpoint has "
                                  f"cond_stage_model keys: {list_keys(cond_state)}")
        return ("unconditional" if cond_cfg == UNCONDITIONAL else "first_stage"), None
    if not isinstance(cond_cfg, Mapping) or "target" not in cond_cfg:
        raise ConfigError(f"model.params.cond_stage_config: expected {UNCONDITIONAL!r}, "
                          f"{FIRST_STAGE!r} or a target mapping, got {cond_cfg!r}")
    if not cond_state:
        return str(cond_cfg["target"]), None
    try:
        cond_tok, _, _ = load_vqgan_state(cond_state, _section(params, "cond_stage_config"))
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: cond_stage_model: {exc}") from None
    return "vqgan", cond_tok


def load_net2net(state_dict: Mapping[str, Tensor], config: Union[PathLike, Mapping[str, Any], None],
                 path: PathLike) -> Net2NetCheckpoint:
    """Build a :class:`Net2NetCheckpoint` from a flat Net2NetTransformer state dict.

    Args:
        state_dict: the checkpoint's ``state_dict`` (keys with their original prefixes).
        config: the original project YAML (path or mapping); required.
        path: the checkpoint path, for messages.
    """
    where = str(path)
    params = _net2net_params(config, where)
    _check_permuter(params)
    state, ignored = drop_ignored(state_dict, IGNORED_KEYS)
    unknown = [k for k in state if not k.startswith(tuple(PREFIXES.values()))]
    if unknown:
        raise CheckpointError(f"{where}: unexpected keys outside {', '.join(PREFIXES.values())}: "
                              f"{list_keys(unknown)}")
    prior = build_prior(_section(params, "transformer_config"))
    load_exact(prior, split_prefix(state, PREFIXES["transformer"]),
               f"{where}: transformer weights")
    first_state = split_prefix(state, PREFIXES["first_stage"])
    if not first_state:
        raise CheckpointError(f"{where}: no first_stage_model.* keys (the VQGAN is missing)")
    try:
        tokenizer, _, _ = load_vqgan_state(first_state, _section(params, "first_stage_config"))
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: first_stage_model: {exc}") from None
    cond_stage, cond_tok = _load_cond_stage(params, state, where)
    unconditional = cond_stage == "unconditional"
    prior.eval()
    log.info("loaded Net2NetTransformer from %s (%s, prior %s)", where, cond_stage,
             prior.extra_repr())
    return Net2NetCheckpoint(tokenizer=tokenizer, prior=prior,
                             sos_token=int(params.get("sos_token", DEFAULT_SOS_TOKEN)),
                             unconditional=unconditional, cond_stage=cond_stage,
                             cond_tokenizer=cond_tok, config=params, ignored_keys=ignored)


#: Original weight-less condition stages that map to a registered conditioner.
SOS_PROVIDER = "SOSProvider"
LABELATOR = "Labelator"
#: Sampler of a converted pipeline (the original sample scripts use top-k 100).
DEFAULT_TOP_K = 100


def _grid_for(ckpt: Net2NetCheckpoint, cond_len: int) -> tuple[int, int]:
    """The token grid of a converted pipeline: the first stage's nominal resolution / f,
    or the largest square that fits the prior's context."""
    f = ckpt.tokenizer.downsample_factor
    ddconfig = _section(ckpt.config, "first_stage_config").get("ddconfig", {})
    side = int(ddconfig.get("resolution", 0)) // f
    room = ckpt.prior.block_size + 1 - cond_len
    if side < 1 or side * side > room:
        side = int(room ** 0.5)
    return side, side


def net2net_conditioner(ckpt: Net2NetCheckpoint) -> tuple[dict[str, Any], int]:
    """(conditioner spec, cond_offset) reproducing the original's condition prefix.

    * unconditional / ``SOSProvider``: ``sos``, the SOS token id at ``cond_offset``;
    * ``Labelator`` (class-conditional): ``class_label`` without a null id, class ids
      shared with image ids (``cond_offset`` 0), as the original concatenates them.

    VQGAN-tokenized conditions (depth, segmentation, the first stage) are spatial
    inputs the ``sample`` command cannot supply; they raise :class:`ConfigError`.
    """
    if ckpt.unconditional:
        return {"name": "sos"}, ckpt.sos_token
    cond_cfg = ckpt.config.get("cond_stage_config")
    target = str(cond_cfg.get("target", "")) if isinstance(cond_cfg, Mapping) else str(cond_cfg)
    params = dict(cond_cfg.get("params") or {}) if isinstance(cond_cfg, Mapping) else {}
    short = target.rsplit(".", 1)[-1]
    if short == SOS_PROVIDER:
        return {"name": "sos"}, int(params.get("sos_token", ckpt.sos_token))
    if short == LABELATOR:
        return {"name": "class_label", "num_classes": int(params.get("n_classes", 1000)),
                "null_token": False}, 0
    raise ConfigError(f"model.params.cond_stage_config: {target or ckpt.cond_stage!r} conditions on "
                      "images (a VQGAN-tokenized map); only unconditional, SOSProvider and Labelator "
                      "checkpoints convert to a pipeline")


def net2net_pipeline(ckpt: Net2NetCheckpoint) -> Any:
    """A :class:`taming_core.Pipeline` of a Net2NetTransformer checkpoint: first stage,
    transformer, the SOS/condition layout, the first stage's grid and a top-k sampler."""
    from taming_core import Pipeline, create, create_from_spec

    spec, cond_offset = net2net_conditioner(ckpt)
    conditioner = create_from_spec("conditioner", spec)
    sampler = create("sampler", "autoregressive", top_k=min(DEFAULT_TOP_K, ckpt.tokenizer.vocab_size),
                     vocab_limit=ckpt.tokenizer.vocab_size)
    return Pipeline(ckpt.tokenizer, ckpt.prior, sampler, conditioner, cond_offset=cond_offset,
                    grid=_grid_for(ckpt, cond_len=1)).eval()

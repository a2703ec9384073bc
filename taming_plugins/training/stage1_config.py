"""Configuration of the stage-1 (tokenizer) trainer: schema, defaults, validation.

A run config is a dict (or a YAML/JSON file) with five sections; every key is
optional except ``tokenizer`` (defaults below)::

    tokenizer:            # any registered tokenizer spec, built with taming_core.build
      name: vqgan
      ch: 128
      ch_mult: [1, 1, 2, 2, 4]
      num_res_blocks: 2
      attn_resolutions: [16]
      z_channels: 256
      embed_dim: 256
      n_embed: 1024
      quantizer: {name: vq}
    loss:                 # any registered loss with the VQGANLoss interface
      name: vqgan
      disc_start: 0
      perceptual: {name: lpips}       # or null; {name: lpips, allow_random_backbone: true} offline
      discriminator: {name: patchgan}
      gan_objective: hinge            # hinge | vanilla | non_saturating
    data:
      train: photos       # "photos" | "fashion-mnist" | an image folder
      val: null           # default: the train spec with split "val"
      image_size: 256
      batch_size: 4
      num_workers: 0
      train_kwargs: {}    # extra dataset arguments (e.g. {length: 4096} for photos)
      val_kwargs: {}
      val_batches: 2      # batches of the validation set used for val metrics / grids
    optim:
      base_learning_rate: 4.5e-6
      scale_lr: true      # original rule: lr = accumulate_grad_batches · world_size · batch_size · base_lr
      learning_rate: null # set to use this lr as is (overrides the rule)
      betas: [0.5, 0.9]   # Adam, for both the tokenizer and the discriminator
      accumulate_grad_batches: 1
      grad_clip: null     # max global grad norm (each optimizer separately)
      ema_decay: null     # e.g. 0.999: keep an EMA of the tokenizer weights (used for validation)
      bf16: false         # bfloat16 autocast for forward passes
      fused: auto         # Adam kernels: auto (fused on CUDA, foreach on CPU) | false
    train:
      steps: 1000         # optimizer steps (one tokenizer + one discriminator update each)
      seed: 0
      out: runs/tokenizer
      device: auto
      log_every: 10       # JSONL metrics / progress-bar refresh
      val_every: 500
      image_every: 500    # reconstruction grid PNGs (inputs row above reconstructions row)
      ckpt_every: 500
      keep_last: 3
      best_metric: val/l1 # chooses the "best" checkpoint (lower is better)
      progress: true      # tqdm bar
      compile: false      # torch.compile the tokenizer (true, or a backend name such as aot_eager)
      distributed: auto   # auto: DDP when launched by torchrun (WORLD_SIZE > 1) | off

The original taming-transformers LR rule (``main.py``): the configured
``base_learning_rate`` is multiplied by ``accumulate_grad_batches · num_gpus ·
batch_size``; e.g. 4.5e-6 · 1 · 1 · 12 = 5.4e-5 for its ImageNet config on one GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from taming_core.config import load_config, merge_configs
from taming_core.errors import ConfigError
from taming_core.validation import check_positive

SECTIONS = ("tokenizer", "loss", "data", "optim", "train")

DEFAULTS: dict[str, Any] = {
    "loss": {"name": "vqgan", "disc_start": 0, "perceptual": {"name": "lpips"},
             "discriminator": {"name": "patchgan"}, "gan_objective": "hinge"},
    "data": {"train": "photos", "val": None, "image_size": 256, "batch_size": 4, "num_workers": 0,
             "train_kwargs": {}, "val_kwargs": {}, "val_batches": 2},
    "optim": {"base_learning_rate": 4.5e-6, "scale_lr": True, "learning_rate": None,
              "betas": [0.5, 0.9], "accumulate_grad_batches": 1, "grad_clip": None,
              "ema_decay": None, "bf16": False, "fused": "auto"},
    "train": {"steps": 1000, "seed": 0, "out": "runs/tokenizer", "device": "auto", "log_every": 10,
              "val_every": 500, "image_every": 500, "ckpt_every": 500, "keep_last": 3,
              "best_metric": "val/l1", "progress": True, "compile": False, "distributed": "auto"},
}

#: Sections whose keys are fixed (the component sections accept the component's kwargs).
_FIXED_SECTIONS = ("data", "optim", "train")
_POSITIVE_INTS = {"data": ("image_size", "batch_size", "val_batches"),
                  "optim": ("accumulate_grad_batches",),
                  "train": ("steps", "log_every", "val_every", "image_every", "ckpt_every", "keep_last")}



def resolve_config(config: Any) -> dict[str, Any]:
    """Defaults + ``config`` (dict or YAML/JSON path), validated; returns a new dict."""
    raw = load_config(config)
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config section; expected {', '.join(SECTIONS)}")
    if not isinstance(raw.get("tokenizer"), Mapping) or "name" not in raw["tokenizer"]:
        raise ConfigError("tokenizer: required, a spec such as {name: vqgan, ...}")
    cfg = merge_configs(DEFAULTS, raw)
    loss = raw.get("loss")
    if isinstance(loss, Mapping):  # the vqgan defaults fill a vqgan spec; other losses stand alone
        is_vqgan = loss.get("name", DEFAULTS["loss"]["name"]) == DEFAULTS["loss"]["name"]
        cfg["loss"] = merge_configs(DEFAULTS["loss"], loss) if is_vqgan else copy.deepcopy(dict(loss))
    for section in _FIXED_SECTIONS:
        extra = [k for k in cfg[section] if k not in DEFAULTS[section]]
        if extra:
            raise ConfigError(f"{section}.{extra[0]}: unknown key; expected one of "
                              f"{', '.join(DEFAULTS[section])}")
    for section, keys in _POSITIVE_INTS.items():
        for key in keys:
            try:
                check_positive(cfg[section][key], f"{section}.{key}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    betas = cfg["optim"]["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {betas!r}")
    return cfg


def learning_rate(optim: Mapping[str, Any], batch_size: int, world_size: int = 1) -> float:
    """The learning rate of both optimizers (see the module docstring for the rule)."""
    if optim.get("learning_rate") is not None:
        return float(optim["learning_rate"])
    base = float(optim["base_learning_rate"])
    if not optim.get("scale_lr", True):
        return base
    return int(optim["accumulate_grad_batches"]) * world_size * batch_size * base

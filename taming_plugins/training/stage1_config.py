"""Configuration of the stage-1 (tokenizer) trainer: schema, defaults and the LR rule.

The schema is :class:`~taming_plugins.training.config.TokenizerTrainConfig` (one config
style for both stages, see :mod:`taming_plugins.training.config`); this module keeps
:func:`resolve_config` (the validated config as a dict) and :func:`learning_rate`.

A run config is a dict (or a YAML/JSON file) with five sections; every key is
optional except ``tokenizer`` (defaults below)::

    tokenizer:            # any registered tokenizer spec (docs/training.md has a VQGAN f16)
      {name: vqgan, ch: 128, ch_mult: [1, 1, 2, 2, 4], ..., n_embed: 1024, quantizer: {name: vq}}
    loss:                 # any registered AutoencoderLoss (kind autoencoder_loss)
      name: vqgan
      disc_start: 0
      perceptual: {name: lpips}       # or null; auto: lpips when VGG16's weights are on disk, else
                                      # none (the run stores the choice); {name: lpips,
                                      # allow_random_backbone: true} for tests offline
      pixel_loss: l1                  # or mse (squared error: what PSNR measures)
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
      max_items: null     # train on the first N items only
      cache_dir: null     # (stage 2 only) token cache
      encode_batch_size: 32  # (stage 2 only)
    optim:
      base_learning_rate: 4.5e-6
      scale_lr: true      # original rule: lr = accumulate_grad_batches · world_size · batch_size · base_lr
      learning_rate: null # set to use this lr as is (overrides the rule)
      betas: [0.5, 0.9]   # Adam, for both the tokenizer and the discriminator
      weight_decay: 0.0
      warmup_steps: 0     # linear LR warm-up
      lr_decay: none      # or cosine: to 0 at train.steps after the warm-up
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
      divergence_factor: 100   # stop when total_loss > 100x its running median (null: off)
      divergence_window: 50    # logged values in that median

The original taming-transformers LR rule (``main.py``): the configured
``base_learning_rate`` is multiplied by ``accumulate_grad_batches · num_gpus ·
batch_size``; e.g. 4.5e-6 · 1 · 1 · 12 = 5.4e-5 for its ImageNet config on one GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import DEFAULT_LOSS, TokenizerTrainConfig

SECTIONS = ("tokenizer", "loss", "data", "optim", "train")
#: The defaults of every section (from the config dataclasses).
DEFAULTS: dict[str, Any] = {k: v for k, v in TokenizerTrainConfig(tokenizer={"name": "?"}).to_dict().items()
                            if k != "tokenizer"}
DEFAULTS["loss"] = dict(DEFAULT_LOSS)


def resolve_config(config: Any) -> dict[str, Any]:
    """Defaults + ``config`` (dict or YAML/JSON path), validated; returns a new dict."""
    return TokenizerTrainConfig.from_dict(config).to_dict()


def learning_rate(optim: Mapping[str, Any], batch_size: int, world_size: int = 1) -> float:
    """The learning rate of both optimizers (see the module docstring for the rule)."""
    if optim.get("learning_rate") is not None:
        return float(optim["learning_rate"])
    base = float(optim["base_learning_rate"])
    if not optim.get("scale_lr", True):
        return base
    return int(optim["accumulate_grad_batches"]) * world_size * batch_size * base

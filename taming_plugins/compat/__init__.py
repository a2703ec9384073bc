"""Interoperability with original taming-transformers checkpoints.

* :func:`load_taming_checkpoint` - a ``VQModel``/``GumbelVQ`` ``.ckpt`` (+ optional
  original YAML) -> :class:`TamingCheckpoint` (tokenizer, discriminator, config, kind);
  ``Net2NetTransformer`` checkpoints are dispatched to ``compat.net2net``.
* :func:`save_taming_checkpoint` - the way back, to a ``.ckpt`` the original code loads.
* :func:`load_vqgan_state` / :func:`infer_vqgan_config` - building blocks for loaders of
  checkpoints that embed a VQGAN (e.g. a Net2Net ``first_stage_model.*``).
* LlamaGen files (``vq_ds16_c2i.pt``, ``c2i_B_256.pt``...) load through
  :func:`load_taming_checkpoint` too (:mod:`taming_plugins.compat.llamagen`) and give a
  :class:`LlamaGenCheckpoint`.
* :func:`save_converted` / :func:`load_converted` - our own format (safetensors + JSON
  configs buildable with ``taming_core.build``), used by ``taming convert``.
"""

from ._infer import infer_vqgan_config
from .converted import load_converted, save_converted
from .llamagen import LlamaGenCheckpoint
from .original import load_taming_checkpoint
from .vqgan import (IGNORED_KEYS, TamingCheckpoint, load_vqgan_state, parse_original_config,
                    save_taming_checkpoint)

__all__ = [
    "IGNORED_KEYS", "LlamaGenCheckpoint", "TamingCheckpoint", "infer_vqgan_config", "load_converted", "load_taming_checkpoint",
    "load_vqgan_state", "parse_original_config", "save_converted", "save_taming_checkpoint",
]

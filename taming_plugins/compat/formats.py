"""The ``original`` checkpoint format: taming ``.ckpt`` and LlamaGen ``.pt`` files as
pipeline parts, for ``Pipeline.from_pretrained`` (:mod:`taming_core.hub`) and
``taming convert``.

:func:`pipeline_parts` turns what :func:`~taming_plugins.compat.load_taming_checkpoint`
returns into ``Pipeline`` keyword arguments:

* a VQModel/GumbelVQ or a LlamaGen VQ file -> ``tokenizer``;
* a Net2NetTransformer -> the parts of ``net2net_pipeline`` (tokenizer, prior, the
  SOS/class condition layout, grid and sampler);
* a LlamaGen c2i GPT -> ``prior``, the ``class_label`` conditioner (with the null class),
  an ``autoregressive`` sampler limited to image ids, the square ``grid`` and the
  prior's ``cond_offset``; the tokenizer comes from another file.

Each also gives ``card``: licence and source for the model card. The ``converted``
format reads directories written by ``taming convert`` (``model.safetensors`` +
``config.json``) the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import taming_core
from taming_core import CheckpointFormat, register
from taming_core.errors import CheckpointError

from .converted import CONFIG_FILE as CONVERTED_CONFIG
from .converted import WEIGHTS_FILE as CONVERTED_WEIGHTS
from .converted import load_converted
from .llamagen import GPT_KIND, LlamaGenCheckpoint
from .net2net import Net2NetCheckpoint, net2net_pipeline
from .original import load_taming_checkpoint
from .vqgan import TamingCheckpoint

SUFFIXES = (".ckpt", ".pt", ".pth")
#: Licences as stated by the authors (repository LICENSE files / Hub model cards).
TAMING_CARD = {"license": "mit", "source": "CompVis/taming-transformers"}
LLAMAGEN_CARD = {"license": "mit", "source": "FoundationVision/LlamaGen"}


def pipeline_parts(ckpt: Any, source: Optional[str] = None) -> dict[str, Any]:
    """``Pipeline`` keyword arguments (+ ``card``) of a loaded original checkpoint."""
    if isinstance(ckpt, TamingCheckpoint):
        parts: dict[str, Any] = {"tokenizer": ckpt.tokenizer, "card": dict(TAMING_CARD)}
    elif isinstance(ckpt, Net2NetCheckpoint):
        pipe = net2net_pipeline(ckpt)  # SOS/class layout, grid and sampler of the original
        parts = {"tokenizer": pipe.tokenizer, "prior": pipe.prior, "sampler": pipe.sampler,
                 "conditioner": pipe.conditioner, "cond_offset": pipe.cond_offset, "grid": pipe.grid,
                 "card": dict(TAMING_CARD)}
    elif isinstance(ckpt, LlamaGenCheckpoint):
        card = {**LLAMAGEN_CARD, "datasets": ["imagenet-1k"]}
        if ckpt.kind == GPT_KIND:
            prior = ckpt.prior
            side = int(round((prior.block_size - 1) ** 0.5))
            parts = {"prior": prior,
                     "conditioner": taming_core.create("conditioner", "class_label",
                                                       num_classes=prior.num_classes),
                     "sampler": taming_core.create("sampler", "autoregressive",
                                                   vocab_limit=prior.image_vocab_size),
                     "grid": (side, side), "cond_offset": prior.cond_offset, "card": card}
        else:
            parts = {"tokenizer": ckpt.tokenizer, "card": card}
    else:
        raise CheckpointError(f"{source}: a {type(ckpt).__name__} cannot be used as pipeline parts")
    if source is not None:
        parts["card"]["source"] = f"{parts['card']['source']} ({Path(source).name})"
    return parts


@register("checkpoint_format", "original")
class OriginalCheckpoints(CheckpointFormat):
    """taming-transformers ``.ckpt`` and LlamaGen ``.pt`` files (read with weights_only)."""

    def accepts(self, path: Any) -> bool:
        p = Path(path)
        return p.is_file() and p.suffix.lower() in SUFFIXES

    def load_parts(self, path: Any, *, config: Any = None) -> dict[str, Any]:
        return pipeline_parts(load_taming_checkpoint(path, config), str(path))


@register("checkpoint_format", "converted")
class ConvertedCheckpoints(CheckpointFormat):
    """Directories written by ``taming convert`` from a taming VQGAN/GumbelVQ."""

    def accepts(self, path: Any) -> bool:
        p = Path(path)
        return p.is_dir() and (p / CONVERTED_CONFIG).is_file() and (p / CONVERTED_WEIGHTS).is_file()

    def load_parts(self, path: Any, *, config: Any = None) -> dict[str, Any]:
        return pipeline_parts(load_converted(path), str(path))

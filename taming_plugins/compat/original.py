"""The front door for original taming-transformers ``.ckpt`` files: reads the checkpoint
once and hands it to the loader of its model type.

Import graph (no cycle): ``original`` -> ``vqgan``, ``original`` -> ``net2net`` ->
``vqgan`` and ``original`` -> ``llamagen`` -> ``_infer``; ``vqgan`` imports none of the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

from . import llamagen
from ._state import read_checkpoint
from .vqgan import load_vqmodel_checkpoint

PathLike = Union[str, os.PathLike]


def load_taming_checkpoint(ckpt_path: PathLike,
                           config: Union[PathLike, Mapping[str, Any], None] = None) -> Any:
    """Load an original taming-transformers checkpoint.

    ``VQModel``/``GumbelVQ`` checkpoints give a :class:`~taming_plugins.compat.vqgan.TamingCheckpoint`.
    Checkpoints with ``transformer.*`` keys (``Net2NetTransformer``) are handed to
    ``taming_plugins.compat.net2net.load_net2net(state_dict, config, path)``, LlamaGen
    files (``vq_ds16_c2i.pt``, ``c2i_B_256.pt``...) to
    :func:`taming_plugins.compat.llamagen.load_llamagen_state`, which returns a
    ``LlamaGenCheckpoint`` (there ``config`` may also be a preset name such as ``"GPT-B"``).

    Args:
        ckpt_path: the ``.ckpt``/``.pt`` file (read with ``weights_only=True``).
        config: the original YAML (path or dict with ``model.target``/``model.params``),
            or None to infer the architecture from key names and tensor shapes.
    """
    state, extra = read_checkpoint(ckpt_path)
    if llamagen.detect(state) is not None:  # LlamaGen files ({"model": ...}) come through here too
        return llamagen.load_llamagen_state(state, config, ckpt_path, extra)
    if any(k.startswith("transformer.") for k in state):
        from . import net2net  # the prior's loader (and its GPT plugin) only when needed

        return net2net.load_net2net(state, config, ckpt_path)
    return load_vqmodel_checkpoint(state, extra, ckpt_path, config)

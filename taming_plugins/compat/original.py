"""The front door for original taming-transformers ``.ckpt`` files: reads the checkpoint
once and hands it to the loader of its model type.

Import graph (no cycle): ``original`` -> ``vqgan`` and ``original`` -> ``net2net`` ->
``vqgan``; ``vqgan`` imports neither of the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

from ._state import read_checkpoint
from .vqgan import load_vqmodel_checkpoint

PathLike = Union[str, os.PathLike]


def load_taming_checkpoint(ckpt_path: PathLike,
                           config: Union[PathLike, Mapping[str, Any], None] = None) -> Any:
    """Load an original taming-transformers checkpoint.

    ``VQModel``/``GumbelVQ`` checkpoints give a :class:`~taming_plugins.compat.vqgan.TamingCheckpoint`.
    Checkpoints with ``transformer.*`` keys (``Net2NetTransformer``) are handed to
    ``taming_plugins.compat.net2net.load_net2net(state_dict, config, path)``.

    Args:
        ckpt_path: the ``.ckpt`` file (read with ``weights_only=True``).
        config: the original YAML (path or dict with ``model.target``/``model.params``),
            or None to infer the architecture from key names and tensor shapes.
    """
    state, extra = read_checkpoint(ckpt_path)
    if any(k.startswith("transformer.") for k in state):
        from . import net2net  # the prior's loader (and its GPT plugin) only when needed

        return net2net.load_net2net(state, config, ckpt_path)
    return load_vqmodel_checkpoint(state, extra, ckpt_path, config)

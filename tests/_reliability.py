"""Small pipelines shared by the tests/test_reliability_*.py files (issue 12)."""

from __future__ import annotations

import copy
from typing import Any

import taming_core

CODES = 16
TOKENIZER = {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
             "attn_resolutions": [], "z_channels": 32, "resolution": 16, "embed_dim": 4,
             "quantizer": {"name": "vq", "codebook_size": CODES, "dim": 4}}
#: An unconditional pipeline (sos) with a 2×2 token grid; images are 4×4 pixels (f = 2).
CONFIG: dict[str, Any] = {
    "tokenizer": TOKENIZER,
    "prior": {"name": "gpt", "vocab_size": CODES + 1, "block_size": 8, "n_layer": 1, "n_head": 2,
              "n_embd": 16},
    "sampler": {"name": "autoregressive", "top_k": 4},
    "conditioner": {"name": "sos"}, "grid": [2, 2]}


def config(**changes: Any) -> dict[str, Any]:
    """A deep copy of :data:`CONFIG` with top-level keys replaced."""
    cfg = copy.deepcopy(CONFIG)
    cfg.update(changes)
    return cfg


def pipeline(**changes: Any) -> taming_core.Pipeline:
    return taming_core.Pipeline.from_config(config(**changes))

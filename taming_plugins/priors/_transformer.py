"""Transformer blocks shared by the transformer priors (``gpt``, ``maskgit``).

The layout and parameter names follow minGPT (``taming.modules.transformer.mingpt``):
``ln1``, ``attn.key/query/value/proj``, ``ln2``, ``mlp.0``/``mlp.2``, so original
Net2NetTransformer weights load unchanged. One flag separates the families:
``causal=True`` (the autoregressive ``gpt``: position t attends to positions <= t) or
``causal=False`` (the bidirectional ``maskgit``: every position attends to every other).

The model code is plain PyTorch; the CPU fast path for few-row decoding
(:func:`taming_core.ops.fast_decoding`) is applied by the samplers, not here.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core.errors import ValidationError
from taming_core.validation import check_positive

#: Hidden width of the MLP relative to ``n_embd`` (minGPT).
MLP_EXPANSION = 4
#: Standard deviation of the normal initialisation of Linear and Embedding weights (minGPT).
INIT_STD = 0.02


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate key/query/value projections.

    ``causal`` (default True) masks attention to later positions when no explicit mask
    is given; ``causal=False`` attends both ways.
    """

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float, resid_pdrop: float, *,
                 causal: bool = True) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(resid_pdrop)
        self.attn_pdrop = attn_pdrop
        self.n_head = n_head
        self.causal = bool(causal)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None,
                cache: Optional[tuple[Tensor, Tensor, int]] = None) -> Tensor:
        """x: B×T×C. ``mask`` (bool T×S, True = attend) or None for the block's default
        (causal or full); ``cache`` = (keys, values, start) layer views B×H×L×d written at
        [start, start+T) (causal attention only)."""
        b, t, c = x.shape
        shape = (b, t, self.n_head, c // self.n_head)
        q, k, v = (lin(x).view(shape).transpose(1, 2) for lin in (self.query, self.key, self.value))
        causal = self.causal and mask is None
        if cache is not None:
            keys, values, start = cache
            keys.narrow(2, start, t).copy_(k)
            values.narrow(2, start, t).copy_(v)
            k, v = keys.narrow(2, 0, start + t), values.narrow(2, 0, start + t)
            # A single query at the end attends everything cached: no mask needed.
            causal = causal and start == 0
        drop = self.attn_pdrop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop,
                                           is_causal=causal and t > 1)
        y = self.proj(y.transpose(1, 2).reshape(b, t, c))
        # Dropout modules are skipped outside training: identities cost a call per step.
        return self.resid_drop(y) if self.training else y


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float, resid_pdrop: float, *,
                 causal: bool = True) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, attn_pdrop, resid_pdrop, causal=causal)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, MLP_EXPANSION * n_embd),
            nn.GELU(),  # exact erf GELU, as nn.GELU() in the original
            nn.Linear(MLP_EXPANSION * n_embd, n_embd),
            nn.Dropout(resid_pdrop),
        )

    def forward(self, x: Tensor, mask: Optional[Tensor] = None,
                cache: Optional[tuple[Tensor, Tensor, int]] = None) -> Tensor:
        x = x + self.attn(self.ln1(x), mask=mask, cache=cache)
        fc, act, out, drop = self.mlp
        y = out(act(fc(self.ln2(x))))
        return x + (drop(y) if self.training else y)


def init_weights(module: nn.Module) -> None:
    """minGPT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_transformer_args(owner: str, *, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                           n_embd: int, embd_pdrop: float, resid_pdrop: float, attn_pdrop: float) -> None:
    """One-line errors for a transformer prior's size and dropout arguments."""
    for value, name in ((vocab_size, "vocab_size"), (block_size, "block_size"),
                        (n_layer, "n_layer"), (n_head, "n_head"), (n_embd, "n_embd")):
        check_positive(value, f"{owner}({name})")
    if n_embd % n_head:
        raise ValidationError(f"{owner}(n_embd, n_head): n_embd must be divisible by n_head, "
                              f"got n_embd={n_embd}, n_head={n_head}")
    for value, name in ((embd_pdrop, "embd_pdrop"), (resid_pdrop, "resid_pdrop"),
                        (attn_pdrop, "attn_pdrop")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValidationError(f"{owner}({name}): expected a probability in [0, 1), got {value!r}")


def build_trunk(model: nn.Module, *, input_vocab: int, output_vocab: int, block_size: int,
                n_layer: int, n_head: int, n_embd: int, embd_pdrop: float, resid_pdrop: float,
                attn_pdrop: float, causal: bool) -> None:
    """Give ``model`` the minGPT trunk under minGPT's names (``tok_emb``, ``pos_emb``,
    ``drop``, ``blocks``, ``ln_f``, ``head``) and initialise it as minGPT does."""
    model.tok_emb = nn.Embedding(input_vocab, n_embd)
    model.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
    model.drop = nn.Dropout(embd_pdrop)
    model.blocks = nn.Sequential(*[Block(n_embd, n_head, attn_pdrop, resid_pdrop, causal=causal)
                                   for _ in range(n_layer)])
    model.ln_f = nn.LayerNorm(n_embd)
    model.head = nn.Linear(n_embd, output_vocab, bias=False)
    model.apply(init_weights)


def linear_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """minGPT rule: weight decay on Linear weights only, none on biases, LayerNorm,
    embeddings and position embeddings."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and pname == "weight" else no_decay).append(param)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]

"""The ``gpt`` prior: a decoder-only transformer with the original minGPT layout.

Parameter names follow ``taming.modules.transformer.mingpt.GPT`` (``tok_emb``,
``pos_emb``, ``blocks.N.ln1/attn.key/query/value/proj/ln2/mlp.0/mlp.2``, ``ln_f``,
``head``) so weights of original Net2NetTransformer checkpoints load unchanged; the
original's ``attn.mask`` buffer is not kept (attention is causal through
:func:`torch.nn.functional.scaled_dot_product_attention`).

Incremental decoding uses :class:`GPTCache`, preallocated per-layer key/value tensors
that a prefill or a one-token step writes in place (no concatenation per step). The
blocks are shared with the ``maskgit`` prior (:mod:`._transformer`, ``causal=True`` here);
the CPU fast path of one-token steps (:func:`taming_core.ops.fast_decoding`) is applied by
the samplers, so this module reads like minGPT.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import Tensor

from taming_core import AutoregressivePrior, PriorCache, ValidationError, register
from taming_core.validation import check_positive, check_tensor, check_token_ids, embed_tokens

from ._transformer import INIT_STD, MLP_EXPANSION, Block, build_trunk, check_transformer_args, linear_decay_groups

logger = logging.getLogger(__name__)

__all__ = ["GPT", "GPTCache", "Block", "INIT_STD", "MLP_EXPANSION"]

#: AdamW betas of the original stage-2 training.
DEFAULT_BETAS = (0.9, 0.95)


class GPTCache(PriorCache):
    """Preallocated key/value cache: ``keys``/``values`` are n_layer×B×H×max_len×d.

    :meth:`GPT.forward_cached` writes positions ``[length, length + t)`` in place and
    advances ``length``; :meth:`truncate` and :meth:`reset` only move ``length``.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 *, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def batch_size(self) -> int:
        """Number of sequences the cache holds."""
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        """Number of positions allocated."""
        return self.keys.shape[3]

    def reset(self) -> None:
        """Forget every cached position (keeps the allocated memory)."""
        self.length = 0

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` positions."""
        check_positive(length, "GPTCache.truncate(length)", allow_zero=True)
        if length > self.length:
            raise ValidationError(f"GPTCache.truncate(length): expected at most the cached "
                                  f"length {self.length}, got {length}")
        self.length = length


@register("prior", "gpt")
class GPT(AutoregressivePrior):
    """minGPT decoder-only transformer prior (original Net2NetTransformer layout).

    Args:
        vocab_size: number of token ids (image codes plus SOS/condition ids).
        block_size: maximum sequence length (size of the learned position embedding).
        n_layer, n_head, n_embd: depth, heads and width; ``n_embd`` must divide by ``n_head``.
        embd_pdrop, resid_pdrop, attn_pdrop: dropout rates (active in training mode only).
        n_unmasked: the first ``n_unmasked`` positions attend to each other bidirectionally
            (the original's option; 0 = fully causal).
    """

    def __init__(self, vocab_size: int, block_size: int, *, n_layer: int = 12, n_head: int = 8,
                 n_embd: int = 256, embd_pdrop: float = 0.0, resid_pdrop: float = 0.0,
                 attn_pdrop: float = 0.0, n_unmasked: int = 0) -> None:
        super().__init__()
        check_transformer_args("gpt", vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                               n_head=n_head, n_embd=n_embd, embd_pdrop=embd_pdrop,
                               resid_pdrop=resid_pdrop, attn_pdrop=attn_pdrop)
        check_positive(n_unmasked, "gpt(n_unmasked)", allow_zero=True)
        self._config: dict[str, Any] = dict(
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, embd_pdrop=float(embd_pdrop), resid_pdrop=float(resid_pdrop),
            attn_pdrop=float(attn_pdrop), n_unmasked=n_unmasked)
        build_trunk(self, input_vocab=vocab_size, output_vocab=vocab_size,
                    block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    embd_pdrop=embd_pdrop, resid_pdrop=resid_pdrop, attn_pdrop=attn_pdrop,
                    causal=True)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return int(self._config["vocab_size"])

    @property
    def block_size(self) -> int:
        return int(self._config["block_size"])

    @property
    def n_layer(self) -> int:
        """Number of transformer blocks."""
        return int(self._config["n_layer"])

    @property
    def n_head(self) -> int:
        """Number of attention heads."""
        return int(self._config["n_head"])

    @property
    def n_embd(self) -> int:
        """Embedding width."""
        return int(self._config["n_embd"])

    def get_config(self) -> dict[str, Any]:
        """A JSON-able spec that rebuilds this prior (untrained) via ``taming_core.build``."""
        return {"kind": "prior", "name": "gpt", **self._config}

    # ------------------------------------------------------------------ masks
    def _mask(self, start: int, t: int, device: torch.device) -> Optional[Tensor]:
        """Bool T×(start+T) attention mask, or None when plain causal attention applies."""
        n_unmasked = int(self._config["n_unmasked"])
        if t == 1 and start >= n_unmasked:
            return None
        if start == 0 and n_unmasked <= 1:
            return None
        rows = torch.arange(start, start + t, device=device)[:, None]
        cols = torch.arange(start + t, device=device)[None, :]
        mask = cols <= rows
        if n_unmasked:
            mask |= (rows < n_unmasked) & (cols < n_unmasked)
        return mask

    def _check_tokens(self, tokens: Tensor, name: str, start: int = 0) -> int:
        sizes = check_tensor(tokens, name, dims=("B", "T"), dtype="long")
        t = sizes["T"]
        if start + t > self.block_size:
            raise ValidationError(f"{name}: positions {start}..{start + t - 1} exceed the block "
                                  f"size {self.block_size} of this prior")
        return t

    def _embed(self, tokens: Tensor, start: int, name: str = "gpt(tokens)") -> Tensor:
        """Token + position embeddings. Ids outside the vocabulary raise a ValidationError:
        on CPU from the embedding's IndexError (free), on other devices by an explicit check
        in eval mode for more than one token (prefills; training steps and single-token
        decoding steps stay free of device syncs)."""
        t = tokens.shape[1]
        if tokens.device.type != "cpu" and not self.training and t > 1:
            check_token_ids(tokens, self.vocab_size, name)
        emb = embed_tokens(self.tok_emb, tokens, name)
        return self.drop(emb + self.pos_emb[:, start:start + t])

    def _logits(self, x: Tensor) -> Tensor:
        return self.head(self.ln_f(x))

    # ------------------------------------------------------------------ Prior API
    def forward(self, tokens: Tensor) -> Tensor:
        """Long B×T ids (T <= block_size) -> float logits B×T×V; position t predicts t+1."""
        t = self._check_tokens(tokens, "gpt.forward(tokens)")
        x = self._embed(tokens, 0, "gpt.forward(tokens)")
        mask = self._mask(0, t, tokens.device)
        for block in self.blocks:
            x = block(x, mask=mask)
        return self._logits(x)

    def new_cache(self, batch_size: int, max_len: int, *, device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> GPTCache:
        """Preallocate a :class:`GPTCache` for ``batch_size`` sequences of ``max_len`` tokens."""
        check_positive(batch_size, "gpt.new_cache(batch_size)")
        check_positive(max_len, "gpt.new_cache(max_len)")
        if max_len > self.block_size:
            raise ValidationError(f"gpt.new_cache(max_len): expected at most the block size "
                                  f"{self.block_size}, got {max_len}")
        ref = self.pos_emb
        return GPTCache(self.n_layer, batch_size, self.n_head, max_len, self.n_embd // self.n_head,
                        device=device or ref.device, dtype=dtype or ref.dtype)

    def forward_cached(self, tokens: Tensor, cache: PriorCache) -> Tensor:
        """Append Long B×t ``tokens`` at positions ``cache.length...`` and return their
        logits B×t×V (a prefill when t > 1, a decoding step when t == 1)."""
        if not isinstance(cache, GPTCache):
            raise ValidationError(f"gpt.forward_cached(cache): expected a GPTCache from "
                                  f"gpt.new_cache(), got {type(cache).__name__}")
        start = cache.length
        t = self._check_tokens(tokens, "gpt.forward_cached(tokens)", start)
        if tokens.shape[0] != cache.batch_size or start + t > cache.max_len:
            raise ValidationError(
                f"gpt.forward_cached(tokens): the cache holds {cache.batch_size} sequences of "
                f"{cache.max_len} positions ({start} used), got {tuple(tokens.shape)} tokens")
        x = self._embed(tokens, start, "gpt.forward_cached(tokens)")
        mask = self._mask(start, t, tokens.device)
        for layer, block in enumerate(self.blocks):
            x = block(x, mask=mask, cache=(cache.keys[layer], cache.values[layer], start))
        cache.length = start + t
        return self._logits(x)

    # ------------------------------------------------------------------ training
    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """minGPT rule: weight decay on Linear weights only, none on biases, LayerNorm,
        embeddings and the position embedding."""
        return linear_decay_groups(self, weight_decay)

    def configure_optimizers(self, lr: float, weight_decay: float = 0.01,
                             betas: tuple[float, float] = DEFAULT_BETAS) -> torch.optim.AdamW:
        """AdamW with the original betas (0.9, 0.95) and decay on Linear weights only."""
        check_positive(lr, "gpt.configure_optimizers(lr)", integer=False)
        check_positive(weight_decay, "gpt.configure_optimizers(weight_decay)", integer=False,
                       allow_zero=True)
        return torch.optim.AdamW(self.parameter_groups(weight_decay), lr=lr, betas=betas)

    def extra_repr(self) -> str:
        c = self._config
        return (f"vocab_size={c['vocab_size']}, block_size={c['block_size']}, n_layer="
                f"{c['n_layer']}, n_head={c['n_head']}, n_embd={c['n_embd']}, "
                f"params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M")


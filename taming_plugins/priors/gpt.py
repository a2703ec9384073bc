"""The ``gpt`` prior: a decoder-only transformer with the original minGPT layout.

Parameter names follow ``taming.modules.transformer.mingpt.GPT`` (``tok_emb``,
``pos_emb``, ``blocks.N.ln1/attn.key/query/value/proj/ln2/mlp.0/mlp.2``, ``ln_f``,
``head``) so weights of original Net2NetTransformer checkpoints load unchanged; the
original's ``attn.mask`` buffer is not kept (attention is causal through
:func:`torch.nn.functional.scaled_dot_product_attention`).

Incremental decoding uses :class:`GPTCache`, preallocated per-layer key/value tensors
that a prefill or a one-token step writes in place (no concatenation per step).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core import AutoregressivePrior, PriorCache, ValidationError, register
from taming_core.ops import decode_linear
from taming_core.validation import check_positive, check_tensor, check_token_ids, token_range_error

logger = logging.getLogger(__name__)

#: Hidden width of the MLP relative to ``n_embd`` (minGPT).
MLP_EXPANSION = 4
#: Standard deviation of the normal initialisation of Linear and Embedding weights (minGPT).
INIT_STD = 0.02
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


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate key/query/value projections."""

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float, resid_pdrop: float) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(resid_pdrop)
        self.attn_pdrop = attn_pdrop
        self.n_head = n_head

    def forward(self, x: Tensor, mask: Optional[Tensor] = None,
                cache: Optional[tuple[Tensor, Tensor, int]] = None) -> Tensor:
        """x: B×T×C. ``mask`` (bool T×S, True = attend) or None for plain causal;
        ``cache`` = (keys, values, start) layer views B×H×L×d written at [start, start+T)."""
        b, t, c = x.shape
        shape = (b, t, self.n_head, c // self.n_head)
        q, k, v = (decode_linear(x, lin).view(shape).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        causal = mask is None
        if cache is not None:
            keys, values, start = cache
            keys.narrow(2, start, t).copy_(k)
            values.narrow(2, start, t).copy_(v)
            k, v = keys.narrow(2, 0, start + t), values.narrow(2, 0, start + t)
            # A single query at the end attends everything cached: no mask needed.
            causal = mask is None and start == 0
        drop = self.attn_pdrop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop,
                                           is_causal=causal and t > 1)
        y = decode_linear(y.transpose(1, 2).reshape(b, t, c), self.proj)
        # Dropout modules are skipped outside training: identities cost a call per step.
        return self.resid_drop(y) if self.training else y


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, n_embd: int, n_head: int, attn_pdrop: float, resid_pdrop: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, attn_pdrop, resid_pdrop)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, MLP_EXPANSION * n_embd),
            nn.GELU(),  # exact erf GELU, as nn.GELU() in the original
            nn.Linear(MLP_EXPANSION * n_embd, n_embd),
            nn.Dropout(resid_pdrop),
        )

    def forward(self, x: Tensor, mask: Optional[Tensor] = None,
                cache: Optional[tuple[Tensor, Tensor, int]] = None) -> Tensor:
        x = x + self.attn(self.ln1(x), mask=mask, cache=cache)
        # The MLP's layers are called one by one so its Linears take decode_linear.
        fc, act, out, drop = self.mlp
        y = decode_linear(act(decode_linear(self.ln2(x), fc)), out)
        return x + (drop(y) if self.training else y)


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
        for value, name in ((vocab_size, "vocab_size"), (block_size, "block_size"),
                            (n_layer, "n_layer"), (n_head, "n_head"), (n_embd, "n_embd")):
            check_positive(value, f"gpt({name})")
        check_positive(n_unmasked, "gpt(n_unmasked)", allow_zero=True)
        if n_embd % n_head:
            raise ValidationError(f"gpt(n_embd, n_head): n_embd must be divisible by n_head, "
                                  f"got n_embd={n_embd}, n_head={n_head}")
        for value, name in ((embd_pdrop, "embd_pdrop"), (resid_pdrop, "resid_pdrop"),
                            (attn_pdrop, "attn_pdrop")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValidationError(f"gpt({name}): expected a probability in [0, 1), got {value!r}")
        self._config: dict[str, Any] = dict(
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, embd_pdrop=float(embd_pdrop), resid_pdrop=float(resid_pdrop),
            attn_pdrop=float(attn_pdrop), n_unmasked=n_unmasked)
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.drop = nn.Dropout(embd_pdrop)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, attn_pdrop, resid_pdrop)
                                      for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """minGPT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

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
        try:
            emb = self.tok_emb(tokens)
        except IndexError:
            raise token_range_error(tokens, self.vocab_size, name) from None
        return self.drop(emb + self.pos_emb[:, start:start + t])

    def _logits(self, x: Tensor) -> Tensor:
        return decode_linear(self.ln_f(x), self.head)

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
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for module in self.modules():
            for pname, param in module.named_parameters(recurse=False):
                (decay if isinstance(module, nn.Linear) and pname == "weight" else no_decay).append(param)
        return [{"params": decay, "weight_decay": float(weight_decay)},
                {"params": no_decay, "weight_decay": 0.0}]

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


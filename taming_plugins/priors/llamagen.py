"""The ``llamagen`` prior: LlamaGen's class-conditional Llama transformer (Sun et al. 2024).

Parameter names follow LlamaGen's ``autoregressive/models/gpt.py`` ``Transformer`` so
released ``c2i_*.pt`` state dicts load one to one (``taming_plugins.compat.llamagen``)::

    cls_embedding.embedding_table   (num_classes + 1)×dim, the last row is the null class
    tok_embeddings                  image_vocab_size×dim
    layers.N.attention_norm / ffn_norm          RMSNorm scales
    layers.N.attention.wqkv / wo                fused q|k|v projection (grouped k/v heads)
    layers.N.feed_forward.w1 / w3 / w2          SwiGLU: w2(silu(w1 x) · w3 x)
    norm, output                                final RMSNorm and the image-token head

No Linear has a bias. Positions carry a 2-D rotary embedding over the token grid
(``grid_size``×``grid_size``, raster order): the first half of every head's channels
rotates with the row, the second half with the column, adjacent channel pairs form
the rotated complex numbers. The class token (position 0) gets a zero rotation table,
so its queries and keys are zero vectors, exactly as in LlamaGen. The CPU fast path of
few-row decoding steps (:func:`taming_core.ops.fast_decoding`) is applied by the samplers.

Vocabulary layout (how class conditioning reaches a generic sampler)
--------------------------------------------------------------------
The prior sees one sequence ``[class token, image tokens...]`` in *our* id space:

* ids ``[0, image_vocab_size)`` are image tokens (embedded by ``tok_embeddings``);
* ids ``cond_offset + y`` (``y`` in ``[0, num_classes]``, ``num_classes`` = the null
  class) are class tokens, embedded by the prior's own class table. ``cond_offset``
  defaults to ``image_vocab_size``: the ``Pipeline`` default, so the ``class_label``
  conditioner (``null_token=True``) with the pipeline's offset gives these ids.

Position 0 is always the class token; every later position an image token. Logits cover
``vocab_size = cond_offset + num_classes + 1`` ids as the :class:`~taming_core.Prior`
contract asks, but only image ids get real logits: the others hold the dtype's lowest
finite value (never drawn; finite so that guidance arithmetic stays finite). Samplers
need no LlamaGen knowledge: the condition is an ordinary one-token prefix, and the
classifier-free-guidance null condition is the prefix ``cond_offset + num_classes``.

Differences from LlamaGen
-------------------------
* Class-label dropout for guidance training is not inside the prior (LlamaGen's
  ``LabelEmbedder`` drops labels in train mode): our conditioner transforms do it, as
  for every prior. ``drop_path`` (stochastic depth) is not implemented; the released
  models were trained with ``drop_path_rate`` 0.0 (B) and 0.1+ (larger models), which
  does not matter in eval mode.
* Only class-conditional models (``model_type="c2i"``, one class token); LlamaGen's
  text-conditional ``t2i`` models (caption projection) are not supported.
* The cache holds only written positions and attends over them (LlamaGen allocates a
  multiple of 8 and masks the rest); the results are the same.
* Logits of non-image ids are padded as described above (LlamaGen outputs image ids only).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core import AutoregressivePrior, PriorCache, ValidationError, register
from taming_core.validation import check_positive, check_tensor

from .gpt import GPTCache

#: LlamaGen's model presets (``GPT_models``): depth, heads and width. The head count is the
#: one architecture number a state dict does not show.
PRESETS: dict[str, dict[str, int]] = {
    "GPT-B": {"n_layer": 12, "n_head": 12, "dim": 768},
    "GPT-L": {"n_layer": 24, "n_head": 16, "dim": 1024},
    "GPT-XL": {"n_layer": 36, "n_head": 20, "dim": 1280},
    "GPT-XXL": {"n_layer": 48, "n_head": 24, "dim": 1536},
    "GPT-XXXL": {"n_layer": 48, "n_head": 40, "dim": 2560},
    "GPT-1B": {"n_layer": 22, "n_head": 32, "dim": 2048},
    "GPT-3B": {"n_layer": 24, "n_head": 32, "dim": 3200},
}
#: Standard deviation of the normal initialisation (LlamaGen ``initializer_range``).
INIT_STD = 0.02
#: One class token per sequence (LlamaGen c2i).
CLS_TOKEN_NUM = 1


def find_multiple(n: int, k: int) -> int:
    """The smallest multiple of ``k`` that is >= ``n``."""
    return n if n % k == 0 else n + k - n % k


def ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """LlamaGen's SwiGLU width: 2/3 of 4·dim, times the multiplier, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return find_multiple(hidden, multiple_of)


def rope_table_2d(grid_size: int, head_dim: int, base: float, prefix: int) -> Tensor:
    """(prefix + grid_size²)×(head_dim/2)×2 cos/sin table; the prefix rows are zero."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size), freqs)                   # g × head_dim/4
    rows = angles[:, None, :].expand(-1, grid_size, -1)
    cols = angles[None, :, :].expand(grid_size, -1, -1)
    grid = torch.cat([rows, cols], dim=-1)                                 # g × g × head_dim/2
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(prefix, half, 2), table])


def rope_factors(table: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel factors of a cos/sin table (T×d/2×2): ``cos`` repeated over each pair
    and ``sin`` as (−sin, +sin), both T×d, so that rotating is two products and a sum."""
    cos, sin = table[..., 0], table[..., 1]
    return (torch.stack([cos, cos], dim=-1).flatten(-2).contiguous(),
            torch.stack([-sin, sin], dim=-1).flatten(-2).contiguous())


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs (a, b) of x (B×T×H×d) to (a·cos − b·sin, b·cos + a·sin)
    in float32; ``cos``/``sin`` are T×d factors from :func:`rope_factors`. (Negating sin
    is exact, so this equals the pairwise formula bit for bit.)"""
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)             # (b, a) per pair
    out = xf * cos[None, :, None, :] + swapped * sin[None, :, None, :]
    return out.type_as(x)


class RMSNorm(nn.Module):
    """Root-mean-square norm (computed in float32) with a learned scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def _single_query_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of one query per head (a decoding step) over every cached key, with
    three small matmuls: B×H×1×d queries, B×G×S×d keys/values (G divides H, grouped
    heads share them). On CPU this is several times cheaper per call than the fused
    SDPA kernel, whose set-up dominates at one query."""
    b, h, _, d = q.shape
    g = k.shape[1]
    qg = q.reshape(b, g, h // g, d)                                        # B×G×(H/G)×d
    att = torch.softmax((qg @ k.transpose(-2, -1)) * d ** -0.5, dim=-1)   # B×G×(H/G)×S
    return (att @ v).reshape(b, h, 1, d)


class Attention(nn.Module):
    """Causal self-attention with a fused ``wqkv`` projection and grouped k/v heads."""

    def __init__(self, dim: int, n_head: int, n_kv_head: int, attn_dropout_p: float,
                 resid_dropout_p: float) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, dim // n_head
        self.wqkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Optional[Tensor],
                cache: Optional[tuple[Tensor, Tensor, int]] = None) -> Tensor:
        b, t, c = x.shape
        kv = self.n_kv_head * self.head_dim
        qk, v = self.wqkv(x).split([c + kv, kv], dim=-1)
        # queries and keys are adjacent in wqkv's output: one rotation for both
        qk = apply_rope(qk.view(b, t, self.n_head + self.n_kv_head, self.head_dim), *rope)
        q, k = qk.transpose(1, 2).split([self.n_head, self.n_kv_head], dim=1)
        v = v.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        causal = mask is None and t > 1
        if cache is not None:
            keys, values, start = cache
            keys.narrow(2, start, t).copy_(k)
            values.narrow(2, start, t).copy_(v)
            k, v = keys.narrow(2, 0, start + t), values.narrow(2, 0, start + t)
            causal = causal and start == 0
        if t == 1 and not self.training:
            y = _single_query_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal,
                dropout_p=self.attn_dropout_p if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head)
        y = self.wo(y.transpose(1, 2).reshape(b, t, c))
        return self.resid_dropout(y) if self.training else y


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int, dropout_p: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        y = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.ffn_dropout(y) if self.training else y


class TransformerBlock(nn.Module):
    """Pre-norm Llama block: x + attention(norm(x)), then + feed_forward(norm(.))."""

    def __init__(self, dim: int, n_head: int, n_kv_head: int, hidden: int, norm_eps: float,
                 attn_dropout_p: float, resid_dropout_p: float, ffn_dropout_p: float) -> None:
        super().__init__()
        self.attention = Attention(dim, n_head, n_kv_head, attn_dropout_p, resid_dropout_p)
        self.feed_forward = FeedForward(dim, hidden, ffn_dropout_p)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Optional[Tensor],
                cache: Optional[tuple[Tensor, Tensor, int]] = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class ClassEmbedding(nn.Module):
    """The class table (``embedding_table``, one row per class plus the null class)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


def _probability(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValidationError(f"llamagen({name}): expected a probability in [0, 1), got {value!r}")
    return float(value)


@register("prior", "llamagen")
class LlamaGenPrior(AutoregressivePrior):
    """LlamaGen class-conditional transformer (RMSNorm, SwiGLU, 2-D RoPE, class prefix).

    Args:
        image_vocab_size: codebook size of the tokenizer (16384 for LlamaGen's VQ).
        num_classes: class labels ``[0, num_classes)``; one more row is the null class.
        grid_size: side of the square token grid the rotary embedding covers
            (16 for 256-pixel models on ds16 tokens, 24 for 384).
        preset: a LlamaGen model name (``GPT-B``, ``GPT-L``, ``GPT-XL``, ``GPT-XXL``,
            ``GPT-XXXL``, ``GPT-1B``, ``GPT-3B``) giving ``n_layer``/``n_head``/``dim``;
            explicit values win.
        n_layer, n_head, dim: depth, heads and width (``dim`` divisible by ``n_head``).
        n_kv_head: key/value heads (grouped-query attention); default ``n_head``.
        multiple_of, ffn_dim_multiplier: SwiGLU width rule (see :func:`ffn_hidden_size`);
            ``ffn_hidden`` sets the width directly instead.
        rope_base, norm_eps: rotary base and RMSNorm epsilon.
        cond_offset: id of class 0 in the prior's vocabulary (default ``image_vocab_size``).
        token_dropout_p, attn_dropout_p, resid_dropout_p, ffn_dropout_p: dropout rates
            (training only).
        vocab_size, block_size: the sizes a token layout needs (the stage-2 trainer passes
            them); each must equal what the arguments above give. Not part of the config.
    """

    def __init__(self, image_vocab_size: int = 16384, num_classes: int = 1000, grid_size: int = 16, *,
                 preset: Optional[str] = None, n_layer: Optional[int] = None,
                 n_head: Optional[int] = None, dim: Optional[int] = None,
                 n_kv_head: Optional[int] = None, multiple_of: int = 256,
                 ffn_dim_multiplier: Optional[float] = None, ffn_hidden: Optional[int] = None,
                 rope_base: float = 10000.0, norm_eps: float = 1e-5,
                 cond_offset: Optional[int] = None, token_dropout_p: float = 0.0,
                 attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0,
                 ffn_dropout_p: float = 0.0, vocab_size: Optional[int] = None,
                 block_size: Optional[int] = None) -> None:
        super().__init__()
        arch: dict[str, Optional[int]] = {"n_layer": None, "n_head": None, "dim": None}
        if preset is not None:
            if preset not in PRESETS:
                raise ValidationError(f"llamagen(preset): unknown preset {preset!r}; expected one of "
                                      f"{', '.join(PRESETS)}")
            arch.update(PRESETS[preset])
        for key, value in (("n_layer", n_layer), ("n_head", n_head), ("dim", dim)):
            if value is not None:
                arch[key] = value
        missing = [k for k, v in arch.items() if v is None]
        if missing:
            raise ValidationError(f"llamagen: {', '.join(missing)} not given; pass them or a preset "
                                  f"({', '.join(PRESETS)})")
        n_layer, n_head, dim = int(arch["n_layer"]), int(arch["n_head"]), int(arch["dim"])  # type: ignore[arg-type]
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        for value, name in ((image_vocab_size, "image_vocab_size"), (num_classes, "num_classes"),
                            (grid_size, "grid_size"), (n_layer, "n_layer"), (n_head, "n_head"),
                            (dim, "dim"), (n_kv_head, "n_kv_head"), (multiple_of, "multiple_of")):
            check_positive(value, f"llamagen({name})")
        if dim % n_head or (dim // n_head) % 4:
            raise ValidationError(f"llamagen(dim, n_head): dim must divide into n_head heads of a "
                                  f"width divisible by 4 (2-D rotary pairs), got dim={dim}, n_head={n_head}")
        if n_head % n_kv_head:
            raise ValidationError(f"llamagen(n_kv_head): must divide n_head={n_head}, got {n_kv_head}")
        cond_offset = image_vocab_size if cond_offset is None else cond_offset
        check_positive(cond_offset, "llamagen(cond_offset)")
        if cond_offset < image_vocab_size:
            raise ValidationError(f"llamagen(cond_offset): class ids must follow the image ids, "
                                  f"expected >= {image_vocab_size}, got {cond_offset}")
        hidden = ffn_hidden if ffn_hidden is not None else ffn_hidden_size(dim, multiple_of, ffn_dim_multiplier)
        check_positive(hidden, "llamagen(ffn_hidden)")
        drops = {name: _probability(value, name) for name, value in (
            ("token_dropout_p", token_dropout_p), ("attn_dropout_p", attn_dropout_p),
            ("resid_dropout_p", resid_dropout_p), ("ffn_dropout_p", ffn_dropout_p))}
        self._config: dict[str, Any] = dict(
            image_vocab_size=image_vocab_size, num_classes=num_classes, grid_size=grid_size,
            n_layer=n_layer, n_head=n_head, dim=dim, n_kv_head=n_kv_head, ffn_hidden=hidden,
            rope_base=float(rope_base), norm_eps=float(norm_eps), cond_offset=cond_offset, **drops)
        self.cls_embedding = ClassEmbedding(num_classes, dim)
        self.tok_embeddings = nn.Embedding(image_vocab_size, dim)
        self.tok_dropout = nn.Dropout(drops["token_dropout_p"])
        self.layers = nn.ModuleList(
            TransformerBlock(dim, n_head, n_kv_head, hidden, float(norm_eps), drops["attn_dropout_p"],
                             drops["resid_dropout_p"], drops["ffn_dropout_p"]) for _ in range(n_layer))
        self.norm = RMSNorm(dim, float(norm_eps))
        self.output = nn.Linear(dim, image_vocab_size, bias=False)
        self.register_buffer("rope", rope_table_2d(grid_size, dim // n_head, float(rope_base),
                                                   CLS_TOKEN_NUM), persistent=False)
        cos, sin = rope_factors(self.rope)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()
        # The stage-2 trainer passes the sizes its token layout needs: they must agree.
        for given, own, name in ((vocab_size, self.vocab_size, "vocab_size"),
                                 (block_size, self.block_size, "block_size")):
            if given is not None and given != own:
                raise ValidationError(
                    f"llamagen({name}): the token layout needs {given}, but image_vocab_size="
                    f"{image_vocab_size}, num_classes={num_classes}, grid_size={grid_size} give {own} "
                    f"(vocab_size = cond_offset + num_classes + 1, block_size = 1 + grid_size²)")

    def reset_parameters(self) -> None:
        """LlamaGen initialisation: N(0, 0.02) Linear/Embedding weights, a zero output head."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        nn.init.zeros_(self.output.weight)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """``cond_offset + num_classes + 1``: image ids, then class ids and the null class."""
        return int(self._config["cond_offset"] + self._config["num_classes"] + 1)

    @property
    def block_size(self) -> int:
        """The class token plus ``grid_size²`` image positions."""
        return CLS_TOKEN_NUM + int(self._config["grid_size"]) ** 2

    @property
    def image_vocab_size(self) -> int:
        """Number of image token ids (the width of the real logits)."""
        return int(self._config["image_vocab_size"])

    @property
    def num_classes(self) -> int:
        """Number of real class labels."""
        return int(self._config["num_classes"])

    @property
    def cond_offset(self) -> int:
        """Id of class 0 in the prior's vocabulary."""
        return int(self._config["cond_offset"])

    @property
    def null_token(self) -> int:
        """The prior-vocabulary id of the null class (the guidance null condition)."""
        return self.cond_offset + self.num_classes

    def class_tokens(self, labels: Tensor) -> Tensor:
        """Long B labels (``num_classes`` = null) -> Long B×1 prefix tokens."""
        return (labels.long() + self.cond_offset).reshape(-1, 1)

    def get_config(self) -> dict[str, Any]:
        """A JSON-able spec that rebuilds this prior (untrained) via ``taming_core.build``."""
        return {"kind": "prior", "name": "llamagen", **self._config}

    # ------------------------------------------------------------------ forward
    def _check_tokens(self, tokens: Tensor, name: str, start: int, check_values: bool) -> int:
        t = check_tensor(tokens, name, dims=("B", "T"), dtype="long")["T"]
        if start + t > self.block_size:
            raise ValidationError(f"{name}: positions {start}..{start + t - 1} exceed the block size "
                                  f"{self.block_size} of this prior (1 class token + "
                                  f"{self._config['grid_size']}² image tokens)")
        # Value checks only on CPU tensors and outside one-token steps: on an accelerator
        # they would synchronise with the device on every training step.
        if check_values and tokens.device.type == "cpu":
            if start == 0 and t > 0:
                check_tensor(tokens[:, :1], f"{name}[:, 0] (the class token)", dtype="long",
                             value_range=(self.cond_offset, self.null_token))
            image = tokens[:, max(0, CLS_TOKEN_NUM - start):]
            if image.numel():
                check_tensor(image, f"{name} (image tokens)", dtype="long",
                             value_range=(0, self.image_vocab_size - 1))
        return t

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        n_cls = max(0, min(CLS_TOKEN_NUM - start, tokens.shape[1]))
        if n_cls == 0:
            x = self.tok_embeddings(tokens)
        elif n_cls == tokens.shape[1]:
            x = self.cls_embedding(tokens - self.cond_offset)
        else:
            x = torch.cat([self.cls_embedding(tokens[:, :n_cls] - self.cond_offset),
                           self.tok_embeddings(tokens[:, n_cls:])], dim=1)
        return self.tok_dropout(x) if self.training else x

    def _mask(self, start: int, t: int, device: torch.device) -> Optional[Tensor]:
        """None (plain causal or a single query) or a bool t×(start+t) mask."""
        if t == 1 or start == 0:
            return None
        rows = torch.arange(start, start + t, device=device)[:, None]
        return torch.arange(start + t, device=device)[None, :] <= rows

    def _logits(self, x: Tensor) -> Tensor:
        logits = self.output(self.norm(x)).float()
        pad = self.vocab_size - self.image_vocab_size
        filler = logits.new_full((*logits.shape[:-1], pad), torch.finfo(logits.dtype).min)
        return torch.cat([logits, filler], dim=-1)

    def _run(self, tokens: Tensor, start: int, cache: Optional[GPTCache]) -> Tensor:
        t = tokens.shape[1]
        x = self._embed(tokens, start)
        rope = (self.rope_cos[start:start + t], self.rope_sin[start:start + t])
        mask = self._mask(start, t, tokens.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, None if cache is None else (cache.keys[i], cache.values[i], start))
        return self._logits(x)

    def forward(self, tokens: Tensor) -> Tensor:
        """Long B×T ``[class token, image tokens...]`` -> float logits B×T×V; position t
        predicts image token t (position 0, the class token, predicts the first)."""
        self._check_tokens(tokens, "llamagen.forward(tokens)", 0, True)
        return self._run(tokens, 0, None)

    def new_cache(self, batch_size: int, max_len: int, *, device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> GPTCache:
        """Preallocate a key/value cache (``n_kv_head`` heads per layer)."""
        check_positive(batch_size, "llamagen.new_cache(batch_size)")
        check_positive(max_len, "llamagen.new_cache(max_len)")
        if max_len > self.block_size:
            raise ValidationError(f"llamagen.new_cache(max_len): expected at most the block size "
                                  f"{self.block_size}, got {max_len}")
        ref = self.output.weight
        c = self._config
        return GPTCache(c["n_layer"], batch_size, c["n_kv_head"], max_len, c["dim"] // c["n_head"],
                        device=device or ref.device, dtype=dtype or ref.dtype)

    def forward_cached(self, tokens: Tensor, cache: PriorCache) -> Tensor:
        """Append Long B×t tokens at positions ``cache.length...``; logits B×t×V."""
        if not isinstance(cache, GPTCache):
            raise ValidationError(f"llamagen.forward_cached(cache): expected a cache from "
                                  f"llamagen.new_cache(), got {type(cache).__name__}")
        start = cache.length
        t = tokens.shape[1] if tokens.dim() == 2 else -1
        # Per-step calls (t == 1) skip the value checks: they synchronise with the device.
        t = self._check_tokens(tokens, "llamagen.forward_cached(tokens)", start, t != 1)
        if tokens.shape[0] != cache.batch_size or start + t > cache.max_len:
            raise ValidationError(
                f"llamagen.forward_cached(tokens): the cache holds {cache.batch_size} sequences of "
                f"{cache.max_len} positions ({start} used), got {tuple(tokens.shape)} tokens")
        logits = self._run(tokens, start, cache)
        cache.length = start + t
        return logits

    def configure_optimizers(self, lr: float, weight_decay: float = 0.05,
                             betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
        """AdamW as LlamaGen trains (decay on weights of 2+ dims, none on norm scales)."""
        check_positive(lr, "llamagen.configure_optimizers(lr)", integer=False)
        return torch.optim.AdamW(self.parameter_groups(weight_decay), lr=lr, betas=betas)

    def extra_repr(self) -> str:
        c = self._config
        return (f"image_vocab_size={c['image_vocab_size']}, num_classes={c['num_classes']}, "
                f"grid_size={c['grid_size']}, n_layer={c['n_layer']}, n_head={c['n_head']}, "
                f"n_kv_head={c['n_kv_head']}, dim={c['dim']}, "
                f"params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M")

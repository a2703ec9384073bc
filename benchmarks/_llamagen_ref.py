"""A re-implementation of LlamaGen's sampling loop (``autoregressive/models/generate.py``
with the ``Transformer`` forward of ``gpt.py``) on the weights of our ``llamagen`` prior,
for ``benchmarks/sampling.py``.

What it reproduces, step for step: ``setup_caches`` (zeroed per-layer key/value caches of
``find_multiple(T + new, 8)`` positions, a B×L×L lower-triangular mask), the prefill of
the class token(s) with ``input_pos = arange(T)``, then one ``decode_one_token`` per
token: the cache written by index (``k_cache[:, :, input_pos] = k``), keys/values
repeated per query head, attention over the whole cache with the mask row
``causal_mask[:B, None, input_pos]``, RoPE applied in float32 by the stacked-pairs
formula, ``logits.float()``; guidance ``uncond + (cond − uncond)·scale``; greedy =
``topk(softmax(logits / max(T, 1e-5)), 1)``. Every Linear is called as a module
(``F.linear``), as there. The CUDA-only ``sdp_kernel`` context is left out (CPU run).
Written from the LlamaGen source for measurement only; no code is copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from taming_plugins.priors.llamagen import LlamaGenPrior, find_multiple

CACHE_MULTIPLE = 8


def _rope(x: Tensor, freqs: Tensor) -> Tensor:
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


class LlamaGenLoop:
    """LlamaGen's ``generate`` on a :class:`LlamaGenPrior`'s modules."""

    def __init__(self, prior: LlamaGenPrior) -> None:
        self.p = prior
        cfg = prior.get_config()
        self.n_head, self.n_kv = cfg["n_head"], cfg["n_kv_head"]
        self.head_dim = cfg["dim"] // cfg["n_head"]
        self.freqs = prior.rope  # same table as LlamaGen's precompute_freqs_cis_2d

    def setup_caches(self, batch: int, length: int) -> None:
        length = find_multiple(length, CACHE_MULTIPLE)
        shape = (batch, self.n_head, length, self.head_dim)
        self.k = [torch.zeros(shape) for _ in self.p.layers]
        self.v = [torch.zeros(shape) for _ in self.p.layers]
        mask = torch.tril(torch.ones(length, length, dtype=torch.bool))
        self.causal_mask = mask.unsqueeze(0).repeat(batch, 1, 1)

    def forward(self, idx: Tensor | None, cond: Tensor | None, input_pos: Tensor) -> Tensor:
        p = self.p
        h = p.cls_embedding(cond).unsqueeze(1) if cond is not None else p.tok_embeddings(idx)
        bs = h.shape[0]
        mask = self.causal_mask[:bs, None, input_pos]
        freqs = self.freqs[input_pos]
        for i, layer in enumerate(p.layers):
            att = layer.attention
            x = layer.attention_norm(h)
            b, t, c = x.shape
            kv = self.n_kv * self.head_dim
            q, k, v = att.wqkv(x).split([c, kv, kv], dim=-1)
            q = _rope(q.view(b, t, self.n_head, self.head_dim), freqs).transpose(1, 2)
            k = _rope(k.view(b, t, self.n_kv, self.head_dim), freqs).transpose(1, 2)
            v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            self.k[i][:, :, input_pos] = k
            self.v[i][:, :, input_pos] = v
            keys = self.k[i].repeat_interleave(self.n_head // self.n_kv, dim=1)
            values = self.v[i].repeat_interleave(self.n_head // self.n_kv, dim=1)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=False)
            h = h + att.wo(y.transpose(1, 2).contiguous().view(b, t, c))
            ff = layer.feed_forward
            hn = layer.ffn_norm(h)
            h = h + ff.w2(F.silu(ff.w1(hn)) * ff.w3(hn))
        return p.output(p.norm(h)).float()

    @staticmethod
    def _greedy(logits: Tensor, temperature: float = 1.0) -> Tensor:
        probs = F.softmax(logits[:, -1, :] / max(temperature, 1e-5), dim=-1)
        return torch.topk(probs, k=1, dim=-1)[1]

    @staticmethod
    def _guide(logits: Tensor, scale: float) -> Tensor:
        cond, uncond = torch.split(logits, len(logits) // 2, dim=0)
        return uncond + (cond - uncond) * scale

    @torch.no_grad()
    def generate(self, labels: Tensor, steps: int, cfg_scale: float = 1.0) -> Tensor:
        """Greedy tokens B×steps for class ``labels`` (Long B)."""
        guided = cfg_scale > 1.0
        cond = torch.cat([labels, torch.full_like(labels, self.p.num_classes)]) if guided else labels
        b = labels.shape[0]
        self.setup_caches(cond.shape[0], 1 + steps)
        seq = torch.empty((b, steps), dtype=torch.int)
        logits = self.forward(None, cond, torch.arange(0, 1))
        token = self._greedy(self._guide(logits, cfg_scale) if guided else logits)
        seq[:, 0:1] = token
        input_pos = torch.tensor([1], dtype=torch.int)
        for i in range(1, steps):
            x = torch.cat([token, token]) if guided else token
            logits = self.forward(x.view(-1, 1), None, input_pos)
            token = self._greedy(self._guide(logits, cfg_scale) if guided else logits)
            input_pos += 1
            seq[:, i:i + 1] = token
        return seq.long()

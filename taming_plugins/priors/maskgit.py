"""The ``maskgit`` prior: a bidirectional transformer over partly masked token grids.

MaskGIT (Chang et al. 2022), the discrete absorbing-state form of diffusion over
codebook tokens: image tokens are replaced by a learned mask token, and the network
predicts every image token from all the others at once (attention both ways). The
``maskgit`` sampler then decodes a grid in a few parallel steps, unmasking the most
confident predictions first.

The transformer blocks are the GPT's (:mod:`._transformer`, with ``causal=False``); the
sequence is ``[condition prefix, image tokens]`` as for the GPT, so the same
conditioners (SOS, class labels, spatial c-VQGAN tokens) and the same vocabulary layout
apply. The input vocabulary has one more id than the output vocabulary: the mask token,
``mask_id == vocab_size``, which the network never predicts.

Training objective (:meth:`MaskGIT.loss`): for each sequence draw r ~ U(0, 1), mask
``ceil(cos(πr/2)·T)`` of its T image tokens chosen uniformly at random, and take the
cross-entropy of the masked positions only.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from taming_core import MaskedPrior, ValidationError, register
from taming_core.validation import check_tensor, embed_tokens, token_range_error

from ._transformer import build_trunk, check_transformer_args, linear_decay_groups

__all__ = ["MaskGIT", "cosine_mask_ratio"]


def cosine_mask_ratio(r: Tensor) -> Tensor:
    """The cosine masking schedule γ(r) = cos(πr/2): the fraction of masked tokens at
    progress r ∈ [0, 1] (1 at r = 0, 0 at r = 1)."""
    return torch.cos(r * (math.pi / 2))


@register("prior", "maskgit")
class MaskGIT(MaskedPrior):
    """Bidirectional transformer prior (MaskGIT) with a learned mask token.

    Args:
        vocab_size: output vocabulary (image codes plus condition ids); the mask token is
            the extra input id ``vocab_size``.
        block_size: maximum length of ``[condition prefix, image tokens]``.
        n_layer, n_head, n_embd: depth, heads and width; ``n_embd`` must divide by ``n_head``.
        embd_pdrop, resid_pdrop, attn_pdrop: dropout rates (training mode only).
    """

    def __init__(self, vocab_size: int, block_size: int, *, n_layer: int = 12, n_head: int = 8,
                 n_embd: int = 256, embd_pdrop: float = 0.0, resid_pdrop: float = 0.0,
                 attn_pdrop: float = 0.0) -> None:
        super().__init__()
        check_transformer_args("maskgit", vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                               n_head=n_head, n_embd=n_embd, embd_pdrop=embd_pdrop,
                               resid_pdrop=resid_pdrop, attn_pdrop=attn_pdrop)
        self._config: dict[str, Any] = dict(
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, embd_pdrop=float(embd_pdrop), resid_pdrop=float(resid_pdrop),
            attn_pdrop=float(attn_pdrop))
        build_trunk(self, input_vocab=vocab_size + 1, output_vocab=vocab_size,  # + the mask token
                    block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    embd_pdrop=embd_pdrop, resid_pdrop=resid_pdrop, attn_pdrop=attn_pdrop,
                    causal=False)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return int(self._config["vocab_size"])

    @property
    def block_size(self) -> int:
        return int(self._config["block_size"])

    @property
    def mask_id(self) -> int:
        return int(self._config["vocab_size"])

    def get_config(self) -> dict[str, Any]:
        """A JSON-able spec that rebuilds this prior (untrained) via ``taming_core.build``."""
        return {"kind": "prior", "name": "maskgit", **self._config}

    # ------------------------------------------------------------------ MaskedPrior API
    def forward(self, tokens: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        """Long B×T image tokens (masked ones equal :attr:`mask_id`) and an optional Long
        B×L condition prefix -> float logits B×T×V at every image position."""
        sizes = check_tensor(tokens, "maskgit.forward(tokens)", dims=("B", "T"), dtype="long")
        seq = tokens
        if condition is not None:
            check_tensor(condition, "maskgit.forward(condition)", dims=(sizes["B"], "L"), dtype="long")
            seq = torch.cat([condition, tokens], dim=1)
        n = seq.shape[1]
        if n > self.block_size:
            raise ValidationError(f"maskgit.forward(tokens): {n - sizes['T']} condition + "
                                  f"{sizes['T']} image tokens exceed the block size "
                                  f"{self.block_size} of this prior")
        x = self.drop(embed_tokens(self.tok_emb, seq, "maskgit.forward(tokens)") + self.pos_emb[:, :n])
        x = self.blocks(x)
        return self.head(self.ln_f(x[:, n - sizes["T"]:]))

    def loss(self, tokens: Tensor, condition: Optional[Tensor] = None, *,
             generator: Optional[torch.Generator] = None, inputs: Optional[Tensor] = None) -> Tensor:
        """Masked-token cross-entropy (see the module docstring).

        ``generator`` draws the ratios and the masked positions (on its own device).
        ``inputs`` (e.g. pkeep-corrupted tokens) fill the visible positions; the masked
        positions hold :attr:`mask_id` and their targets are ``tokens``.
        """
        b, t = tokens.shape
        device = generator.device if generator is not None else tokens.device
        r = torch.rand(b, generator=generator, device=device).to(tokens.device)
        n_mask = torch.ceil(cosine_mask_ratio(r) * t).clamp_(1, t).long()
        scores = torch.rand(b, t, generator=generator, device=device).to(tokens.device)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        masked = ranks < n_mask[:, None]
        fed = tokens if inputs is None else inputs
        logits = self(fed.masked_fill(masked, self.mask_id), condition)
        try:
            return F.cross_entropy(logits[masked].float(), tokens[masked])
        except IndexError:  # a target id outside the vocabulary (the error path only)
            raise token_range_error(tokens, self.vocab_size, "maskgit.loss(tokens)") from None

    # ------------------------------------------------------------------ training
    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The GPT's rule: weight decay on Linear weights only."""
        return linear_decay_groups(self, weight_decay)

    def extra_repr(self) -> str:
        c = self._config
        return (f"vocab_size={c['vocab_size']} (+ mask), block_size={c['block_size']}, "
                f"n_layer={c['n_layer']}, n_head={c['n_head']}, n_embd={c['n_embd']}, "
                f"params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M")

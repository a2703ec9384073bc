"""Logit filtering shared by the samplers: temperature, top-k, top-p, greedy.

:class:`SamplingOptions` validates the settings once (at sampler construction) and
:meth:`SamplingOptions.choose` turns one row of next-token logits per sequence into
token ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from taming_core import ValidationError


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set every logit below the k-th largest of its row to -inf (B×V -> B×V)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability
    reaches ``p`` (always at least the most likely one); others become -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # drop a token when the tokens before it already reach p
    drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


#: Smallest accepted temperature: logits up to 1e32 in magnitude divided by it stay
#: finite in float32 (the division runs in float32 whatever the logits' dtype).
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingOptions:
    """How next tokens are drawn from logits.

    Attributes:
        temperature: logits are divided by it (> 0); ignored when ``greedy``.
        top_k: keep only the k most likely tokens (> 0) or None.
        top_p: nucleus probability in (0, 1] or None.
        greedy: take the argmax instead of sampling (deterministic).
        vocab_limit: only ids ``< vocab_limit`` may be drawn (e.g. exclude the SOS id
            of an unconditional model); None allows the whole vocabulary.
    """

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    greedy: bool = False
    vocab_limit: Optional[int] = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                or not t >= MIN_TEMPERATURE:
            raise ValidationError(f"temperature: expected a finite number >= {MIN_TEMPERATURE:g} "
                                  f"(smaller ones overflow the scaled logits; use greedy=True for "
                                  f"argmax decoding), got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
            raise ValidationError(f"top_k: expected None or an integer > 0, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))
                              or not 0 < p <= 1):
            raise ValidationError(f"top_p: expected None or a number in (0, 1], got {p!r}")
        lim = self.vocab_limit
        if lim is not None and (isinstance(lim, bool) or not isinstance(lim, int) or lim <= 0):
            raise ValidationError(f"vocab_limit: expected None or an integer > 0, got {lim!r}")
        if not isinstance(self.greedy, bool):
            raise ValidationError(f"greedy: expected True or False, got {self.greedy!r}")

    def check_vocab(self, vocab_size: int) -> None:
        """Raise when ``vocab_limit`` exceeds the prior's vocabulary."""
        if self.vocab_limit is not None and self.vocab_limit > vocab_size:
            raise ValidationError(f"vocab_limit: expected at most the prior's vocabulary size "
                                  f"{vocab_size}, got {self.vocab_limit}")

    def filter(self, logits: Tensor) -> Tensor:
        """Apply vocab limit, temperature, top-k and top-p to B×V logits."""
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits = logits[..., :self.vocab_limit]
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature  # fp16/bf16 logits would overflow
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None and self.top_p < 1.0:
            logits = top_p_filter(logits, self.top_p)
        return logits

    def choose(self, logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """B×V next-token logits -> Long B token ids."""
        if self.greedy:
            if self.vocab_limit is not None:
                logits = logits[..., :self.vocab_limit]
            return logits.argmax(dim=-1)
        probs = torch.softmax(self.filter(logits).float(), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

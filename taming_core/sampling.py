"""Public helpers for writing a :class:`~taming_core.Sampler`: the condition and
``vocab_limit`` handling every built-in sampler uses, so a plugin sampler meets the same
contract with a few calls.

* :class:`SamplingOptions` -- temperature, top-k, top-p, greedy and ``vocab_limit`` (only
  ids ``< vocab_limit`` may be drawn: a pipeline sets it to the image vocabulary so
  condition ids such as SOS or class tokens are never sampled as image tokens);
  validated once, applied per step by :meth:`SamplingOptions.choose`.
* :func:`prefix_condition` -- the ``condition`` argument of :meth:`Sampler.sample`
  (None + ``sos_token``, Long B×L prefix tokens, or a Long B×H×W grid aligned with the
  sampled grid) normalised to a Long B×L prefix, range-checked against the prior's
  vocabulary and broadcast from batch 1.
* :func:`check_guidance`, :func:`stack_null_prefix`, :func:`guide` -- classifier-free
  guidance: the [conditional; unconditional] batch and the combination of its logits.
* :func:`require_family` -- refuse a prior of another family than the sampler drives,
  naming the registered samplers that fit it.
* :func:`check_grid`, :func:`expand_batch`, :func:`check_token_range` -- argument checks
  with one-line :class:`~taming_core.ValidationError` messages.

These helpers know no implementation: they use only torch and the core interfaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .errors import ValidationError
from .interfaces import Prior, Sampler
from .validation import check_positive, check_tensor

__all__ = ["MIN_TEMPERATURE", "SamplingOptions", "as_null_condition", "check_grid", "check_guidance", "check_token_range",
           "expand_batch", "guide", "prefix_condition", "require_family", "samplers_for",
           "stack_null_prefix", "top_k_filter", "top_p_filter"]


def samplers_for(family: str) -> list[str]:
    """Registered sampler names whose declared :attr:`Sampler.family` is ``family``."""
    from .registry import entries  # registry lookups load the plugins

    return sorted(e.name for e in entries("sampler")
                  if isinstance(e.obj, type) and issubclass(e.obj, Sampler) and e.obj.family == family)


def require_family(prior: object, family: str, name: str) -> Prior:
    """Raise unless ``prior`` is a :class:`~taming_core.Prior` of ``family`` (the family of
    the sampler that calls it); the one-line error names the samplers that fit it."""
    if not isinstance(prior, Prior):
        raise ValidationError(f"{name}: expected a taming_core.Prior, got {type(prior).__name__}")
    if prior.family != family:
        fitting = samplers_for(prior.family)
        hint = f"use {', '.join(fitting)}" if fitting else "no registered sampler drives that family"
        raise ValidationError(f"{name}: this sampler drives {family} priors, got {type(prior).__name__} "
                              f"(family {prior.family}); {hint}")
    return prior


def check_grid(grid: object, name: str) -> tuple[int, int]:
    """Validate a (height, width) grid of positive ints."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise ValidationError(f"{name}: expected a (height, width) pair, got {grid!r}")
    for i, size in enumerate(grid):
        check_positive(size, f"{name}[{i}]")
    return int(grid[0]), int(grid[1])


def check_guidance(scale: object, null_condition: Optional[Tensor], name: str) -> float:
    """Validate a classifier-free guidance scale (1.0 = off; otherwise a null condition
    for the unconditional branch is required)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValidationError(f"{name}: expected a finite number, got {scale!r}")
    if scale != 1.0 and null_condition is None:
        raise ValidationError(f"{name}: a scale other than 1.0 needs null_condition (the "
                              "condition of the unconditional branch)")
    return float(scale)


def as_null_condition(value: object, name: str) -> Optional[Tensor]:
    """A sampler's ``null_condition`` as a Long tensor: None, a tensor, or nested lists of
    ints (the form a saved ``pipeline.json`` stores it in)."""
    if value is None or isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)):
        try:
            tensor = torch.tensor(value)
        except (TypeError, ValueError):
            tensor = None
        if tensor is not None and tensor.dtype == torch.long and tensor.dim() >= 1:
            return tensor
    raise ValidationError(f"{name}: expected a Long tensor or nested lists of ints, got {value!r}")


def guide(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ``l_u + scale·(l_c − l_u)`` for logits stacked
    [conditional; unconditional] along the batch."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def stack_null_prefix(prefix: Tensor, null_condition: Optional[Tensor], vocab_size: int,
                      name: str) -> Tensor:
    """[prefix; null prefix] stacked along the batch for guidance. ``null_condition`` is
    Long 1×L or B×L prefix tokens with the condition's length L."""
    if not isinstance(null_condition, Tensor) or null_condition.dim() != 2:
        shape = tuple(null_condition.shape) if isinstance(null_condition, Tensor) else \
            type(null_condition).__name__
        raise ValidationError(f"{name}: expected a Long 1×L or B×L prefix with the condition's "
                              f"length L={prefix.shape[1]}, got {shape}")
    null = prefix_condition(null_condition, (0, 0), prefix.shape[0], None, vocab_size, name,
                            prefix.device)
    if null.shape[1] != prefix.shape[1]:
        raise ValidationError(f"{name}: expected the condition's length {prefix.shape[1]}, "
                              f"got {null.shape[1]}")
    return torch.cat([prefix, null], dim=0)


def expand_batch(x: Tensor, batch_size: int, name: str) -> Tensor:
    """Broadcast a condition with batch 1 to ``batch_size``; any other mismatch raises."""
    if x.shape[0] == batch_size:
        return x
    if x.shape[0] == 1:
        return x.expand(batch_size, *x.shape[1:])
    raise ValidationError(f"{name}: expected a batch of {batch_size} (or 1), got "
                          f"{x.shape[0]} in shape {tuple(x.shape)}")


def check_token_range(x: Tensor, vocab_size: int, name: str) -> None:
    """Raise when ids fall outside the prior's vocabulary."""
    check_tensor(x, name, dtype="long", value_range=(0, vocab_size - 1))


def prefix_condition(condition: Optional[Tensor], grid: tuple[int, int], batch_size: int,
                     sos_token: Optional[int], vocab_size: int, name: str,
                     device: torch.device) -> Tensor:
    """Normalise a condition to Long B×L prefix tokens.

    * ``None``: the sampler's ``sos_token`` as a one-token prefix (the original
      unconditional Net2NetTransformer); without ``sos_token`` this raises, because the
      first token cannot be predicted from nothing.
    * Long B×L: used as is (SOS, class tokens, condition-tokenizer ids...).
    * Long B×H×W spatially aligned with ``grid``: flattened row-major into a prefix, as
      the original conditional models do (the prior sees [condition, image]).
    """
    if condition is None:
        if sos_token is None:
            raise ValidationError(
                f"{name}: condition is None and no sos_token is set; pass Long B×L prefix "
                "tokens (e.g. the SOS id) or create the sampler with sos_token=<id>")
        if sos_token >= vocab_size:
            raise ValidationError(f"{name}: sos_token {sos_token} is not an id of the prior's "
                                  f"vocabulary; expected at most {vocab_size - 1}")
        return torch.full((batch_size, 1), sos_token, dtype=torch.long, device=device)
    check_tensor(condition, name, dtype="long")
    if condition.dim() == 3:
        h, w = condition.shape[1:]
        if (h, w) != tuple(grid):
            raise ValidationError(f"{name}: a spatial condition must match the grid "
                                  f"{grid[0]}×{grid[1]}, got {h}×{w}")
        condition = condition.reshape(condition.shape[0], h * w)
    elif condition.dim() != 2:
        raise ValidationError(f"{name}: expected Long B×L prefix tokens or a B×H×W grid, got "
                              f"shape {tuple(condition.shape)}")
    check_token_range(condition, vocab_size, name)
    return expand_batch(condition.to(device), batch_size, name)



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

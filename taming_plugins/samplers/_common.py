"""Helpers shared by the samplers: argument checks, condition handling, eval mode."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from torch import Tensor

from taming_core import Prior, Sampler, ValidationError, entries
from taming_core.interfaces import ProgressCallback
from taming_core.ops import fast_decoding
from taming_core.validation import check_positive, check_tensor


def check_grid(grid: object, name: str) -> tuple[int, int]:
    """Validate a (height, width) grid of positive ints."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise ValidationError(f"{name}: expected a (height, width) pair, got {grid!r}")
    for i, size in enumerate(grid):
        check_positive(size, f"{name}[{i}]")
    return int(grid[0]), int(grid[1])


def samplers_for(family: str) -> list[str]:
    """Registered sampler names whose declared :attr:`Sampler.family` is ``family``."""
    return sorted(e.name for e in entries("sampler")
                  if isinstance(e.obj, type) and issubclass(e.obj, Sampler) and e.obj.family == family)


def check_prior(prior: object, name: str, family: str = "autoregressive") -> Prior:
    """Raise unless ``prior`` implements the Prior interface and belongs to ``family``
    (the family of the sampler that calls it); the error names the samplers that fit."""
    if not isinstance(prior, Prior):
        raise ValidationError(f"{name}: expected a taming_core.Prior, got {type(prior).__name__}")
    if prior.family != family:
        fitting = samplers_for(prior.family)
        hint = f"use {', '.join(fitting)}" if fitting else "no registered sampler drives that family"
        raise ValidationError(f"{name}: this sampler drives {family} priors, got {type(prior).__name__} "
                              f"(family {prior.family}); {hint}")
    return prior


def check_sos(sos_token: Optional[int], name: str) -> None:
    """Validate an optional start-of-sequence id."""
    if sos_token is not None:
        check_positive(sos_token, name, allow_zero=True)


def check_progress(progress: Optional[ProgressCallback], name: str) -> None:
    """Validate an optional ``progress(done, total)`` callback."""
    if progress is not None and not callable(progress):
        raise ValidationError(f"{name}: expected a callable progress(done, total) or None, "
                              f"got {type(progress).__name__}")


def check_guidance(scale: object, null_condition: Optional[Tensor], name: str) -> float:
    """Validate a classifier-free guidance scale (1.0 = off; otherwise a null condition
    for the unconditional branch is required)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValidationError(f"{name}: expected a finite number, got {scale!r}")
    if scale != 1.0 and null_condition is None:
        raise ValidationError(f"{name}: a scale other than 1.0 needs null_condition (the "
                              "condition of the unconditional branch)")
    return float(scale)


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


@contextlib.contextmanager
def sampling_mode(prior: Prior) -> Iterator[None]:
    """Run the prior in eval mode without autograd, restoring its training flag; its
    Linear layers take the CPU few-row fast path (:func:`taming_core.ops.fast_decoding`)
    meanwhile."""
    was_training = prior.training
    prior.eval()
    try:
        with torch.inference_mode(), fast_decoding(prior):
            yield
    finally:
        prior.train(was_training)


def prior_device(prior: Prior) -> torch.device:
    """Device of the prior's first parameter (CPU for parameter-less priors)."""
    for p in prior.parameters():
        return p.device
    return torch.device("cpu")

"""Training-time token transforms of the stage-2 prior.

* :func:`random_replace` -- the original Net2NetTransformer's ``pkeep``: during training
  each *input* image token is kept with probability ``pkeep`` and otherwise replaced by
  a uniformly random id in ``[0, vocab_size)`` (the original draws from the whole prior
  vocabulary). The targets stay the clean tokens, so the prior learns to be robust to
  its own sampling errors.
* :func:`drop_condition` -- classifier-free guidance training: each sample's condition is
  replaced by the conditioner's null condition with probability ``p``, so one prior
  learns both p(x | c) and p(x).

Both take an optional :class:`torch.Generator` so the randomness is reproducible (and
restorable on resume).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from taming_core.errors import ValidationError
from taming_core.interfaces import Conditioner
from taming_core.validation import check_positive, check_tensor


def _check_probability(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValidationError(f"{name}: expected a probability in [0, 1], got {value!r}")


def _uniform(shape: torch.Size, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def random_replace(tokens: Tensor, pkeep: float, vocab_size: int, *,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """Keep each id of Long ``tokens`` with probability ``pkeep``, else draw it uniformly
    from ``[0, vocab_size)``; returns a new tensor (``tokens`` itself when ``pkeep == 1``)."""
    check_tensor(tokens, "random_replace(tokens)", dtype="integer")
    _check_probability(pkeep, "random_replace(pkeep)")
    check_positive(vocab_size, "random_replace(vocab_size)")
    if pkeep >= 1.0:
        return tokens
    keep = _uniform(tokens.shape, generator, tokens.device) < pkeep
    gen_device = generator.device if generator is not None else tokens.device
    random_ids = torch.randint(vocab_size, tokens.shape, generator=generator, device=gen_device,
                               dtype=tokens.dtype).to(tokens.device)
    return torch.where(keep, tokens, random_ids)


def drop_condition(cond: Tensor, conditioner: Conditioner, p: float, *,
                   generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Replace whole samples of local condition ids ``cond`` (Long B×...) by the null
    condition with probability ``p``.

    Returns ``(tokens, dropped)`` where ``dropped`` is a bool B mask.
    """
    check_tensor(cond, "drop_condition(cond)", dtype="integer")
    _check_probability(p, "drop_condition(p)")
    batch = cond.shape[0]
    if p <= 0.0:
        return cond, torch.zeros(batch, dtype=torch.bool, device=cond.device)
    null = conditioner.null_condition(cond)
    dropped = _uniform(torch.Size([batch]), generator, cond.device) < p
    mask = dropped.view(batch, *([1] * (cond.dim() - 1)))
    return torch.where(mask, null, cond), dropped

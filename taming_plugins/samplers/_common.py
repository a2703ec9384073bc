"""Helpers shared by the built-in samplers: argument checks and eval mode.

The condition and ``vocab_limit`` handling is public API in :mod:`taming_core.sampling`
(plugin samplers use it too); it is re-exported here for the built-in modules.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from taming_core import Prior, ValidationError
from taming_core.interfaces import ProgressCallback
from taming_core.ops import fast_decoding
from taming_core.sampling import (as_null_condition, check_grid, check_guidance,  # noqa: F401
                                  check_token_range, expand_batch, guide, prefix_condition,
                                  require_family, samplers_for, stack_null_prefix)
from taming_core.validation import check_positive


def check_prior(prior: object, name: str, family: str = "autoregressive") -> Prior:
    """:func:`taming_core.sampling.require_family` (the built-ins' older spelling)."""
    return require_family(prior, family, name)


def check_sos(sos_token: Optional[int], name: str) -> None:
    """Validate an optional start-of-sequence id."""
    if sos_token is not None:
        check_positive(sos_token, name, allow_zero=True)


def check_progress(progress: Optional[ProgressCallback], name: str) -> None:
    """Validate an optional ``progress(done, total)`` callback."""
    if progress is not None and not callable(progress):
        raise ValidationError(f"{name}: expected a callable progress(done, total) or None, "
                              f"got {type(progress).__name__}")


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

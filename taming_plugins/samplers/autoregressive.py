"""The ``autoregressive`` sampler: raster-order sampling with the prior's KV cache.

For grids whose prefix + tokens fit the prior's block size; larger grids need the
``sliding_window`` sampler.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from taming_core import Prior, Sampler, ValidationError, register
from taming_core.interfaces import ProgressCallback
from taming_core.validation import check_positive

from ._common import (as_null_condition, check_grid, check_guidance, check_prior, check_progress, check_sos,
                      guide, prefix_condition, prior_device, sampling_mode, stack_null_prefix)
from ._filtering import SamplingOptions


@register("sampler", "autoregressive")
class AutoregressiveSampler(Sampler):
    """Token-by-token sampling in raster order with a preallocated KV cache.

    Args:
        temperature, top_k, top_p, greedy, vocab_limit: see
            :class:`~taming_core.sampling.SamplingOptions`.
        guidance_scale: classifier-free guidance; logits are ``l_u + s·(l_c − l_u)``
            with ``l_u`` from ``null_condition``. 1.0 disables guidance.
        null_condition: Long 1×L or B×L prefix of the unconditional branch (same length
            as the condition); required when ``guidance_scale != 1``.
        sos_token: prefix used when ``sample(condition=None)`` (the original
            unconditional models prefix an SOS id); without it a condition is required.
        progress: ``progress(done, total)`` called after every sampled token.

    ``condition`` in :meth:`sample` is Long B×L prefix tokens or a Long B×H×W grid
    aligned with ``grid`` (flattened into a prefix, as the original conditional
    models do). The prior's vocabulary holds both; the caller offsets ids.
    """

    def __init__(self, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, greedy: bool = False,
                 guidance_scale: float = 1.0, null_condition: Optional[Tensor] = None,
                 sos_token: Optional[int] = None, vocab_limit: Optional[int] = None,
                 progress: Optional[ProgressCallback] = None) -> None:
        self.options = SamplingOptions(temperature, top_k, top_p, greedy, vocab_limit)
        null_condition = as_null_condition(null_condition, "autoregressive(null_condition)")
        self.guidance_scale = check_guidance(guidance_scale, null_condition,
                                             "autoregressive(guidance_scale)")
        self.null_condition = null_condition
        check_sos(sos_token, "autoregressive(sos_token)")
        self.sos_token = sos_token
        check_progress(progress, "autoregressive(progress)")
        self.progress = progress

    def sample(self, prior: Prior, grid: tuple[int, int] = (16, 16), *, batch_size: int = 1,
               condition: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Return Long B×H×W token ids sampled in raster order."""
        prior = check_prior(prior, "autoregressive.sample(prior)", self.family)
        h, w = check_grid(grid, "autoregressive.sample(grid)")
        check_positive(batch_size, "autoregressive.sample(batch_size)")
        self.options.check_vocab(prior.vocab_size)
        device = prior_device(prior)
        prefix = prefix_condition(condition, (h, w), batch_size, self.sos_token, prior.vocab_size,
                                  "autoregressive.sample(condition)", device)
        n = h * w
        total = prefix.shape[1] + n - 1
        if total > prior.block_size:
            raise ValidationError(
                f"autoregressive.sample(grid): {prefix.shape[1]} condition tokens + {h}×{w} grid "
                f"need {total} positions but the prior's block size is {prior.block_size}; use "
                "the sliding_window sampler for larger grids")
        guided = self.guidance_scale != 1.0
        if guided:
            prefix = stack_null_prefix(prefix, self.null_condition, prior.vocab_size,
                                       "autoregressive(null_condition)")
        out = torch.empty(batch_size, n, dtype=torch.long, device=device)
        with sampling_mode(prior):
            cache = prior.new_cache(prefix.shape[0], total, device=device)
            logits = prior.forward_cached(prefix, cache)[:, -1]
            for step in range(n):
                if guided:
                    logits = guide(logits, self.guidance_scale)
                token = self.options.choose(logits, generator)
                out[:, step] = token
                if self.progress is not None:
                    self.progress(step + 1, n)
                if step + 1 < n:
                    nxt = token.repeat(2) if guided else token
                    logits = prior.forward_cached(nxt[:, None], cache)[:, -1]
        return out.view(batch_size, h, w)

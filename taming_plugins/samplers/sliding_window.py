"""The ``sliding_window`` sampler: grids larger than the prior's context.

Every token (i, j) of an H×W grid is predicted from a ``window``×``window`` crop of
the grid that contains it (and, for spatially aligned conditions, the same crop of
the condition grid), as in the original taming-transformers sampling scripts. The
prior sees ``[condition crop or prefix, sample crop]`` in raster order and the token's
logits are read at its position inside the crop. Because attention is causal, only
the crop tokens before (i, j) matter, and those were all sampled already (they
precede (i, j) in raster order of the whole grid).

Window placement (``policy``):

* ``"taming"`` — the original placement: the window is centred on the token
  (local offset ``window // 2``) except near the borders, where it stops at the edge.
  For even windows the offsets are exactly those of the original loop (for odd
  windows the window is additionally clamped inside the grid). Results equal the
  original loop's up to float rounding; it is faster because the forward pass stops at
  the token's position and reuses the KV cache while the window does not move (at
  the borders). In the interior the window moves every token, so each token there
  costs a prefill of about ``window²`` tokens.
* ``"cached"`` — the window origin moves in steps of ``stride`` (default
  ``window // 2``) rows/columns instead of every token, and each window keeps its own
  KV cache for the current band of rows: going back to a window only appends the
  tokens sampled since its last visit. Almost every token is then a one-token cached
  step, typically tens of times faster than ``"taming"``. The trade-off: a token's
  local offset in the window varies between ``(window - stride) // 2`` and
  ``(window + stride) // 2`` instead of being exactly centred, so the context left and
  above of a token ranges over ``± stride / 2`` of the original's — the model sees the
  same kind of crops as in training, but samples differ from the original placement.
  ``stride=1`` gives exactly the original placement (at about its cost).

Classifier-free guidance (``guidance_scale`` with ``null_condition``) runs every crop
twice in one batch, once with the condition and once with the null condition, and
samples from ``l_u + s·(l_c − l_u)``; both branches see the same sampled tokens.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from taming_core import Prior, PriorCache, Sampler, ValidationError, register
from taming_core.interfaces import ProgressCallback
from taming_core.validation import check_choice, check_positive, check_tensor

from ._common import (as_null_condition, check_grid, check_guidance, check_prior, check_progress, check_sos,
                      check_token_range, expand_batch, guide, prefix_condition, prior_device,
                      sampling_mode, stack_null_prefix)
from ._filtering import SamplingOptions

POLICIES = ("taming", "cached")
#: Default window edge of the original sampling scripts.
DEFAULT_WINDOW = 16

StartFn = Callable[[int, int, int], int]


def taming_start(x: int, size: int, window: int) -> int:
    """Window origin along one axis for coordinate ``x`` under the original policy."""
    if size <= window:
        return 0
    half = window // 2
    if x <= half:
        local = x
    elif size - x < half:
        local = window - (size - x)
    else:
        local = half
    return min(max(x - local, 0), size - window)


def strided_start(x: int, size: int, window: int, stride: int) -> int:
    """Window origin for ``x`` when origins move in multiples of ``stride``: the token's
    local offset stays within ``window // 2 ± stride / 2`` away from the borders."""
    if size <= window:
        return 0
    raw = stride * ((x - window // 2 + stride // 2) // stride)
    return min(max(raw, 0), size - window)


@register("sampler", "sliding_window")
class SlidingWindowSampler(Sampler):
    """Sample grids larger than the prior's context with a moving ``window``×``window`` crop.

    Args:
        window: crop edge in tokens (clipped to the grid size per axis).
        policy: ``"taming"`` (the original placement) or ``"cached"`` (window moves in
            strides and keeps per-window KV caches; much faster, see module docs).
        stride: origin step of the ``"cached"`` policy (1 ≤ stride ≤ window; default
            ``window // 2``).
        temperature, top_k, top_p, greedy, vocab_limit: see ``SamplingOptions``.
        guidance_scale: classifier-free guidance scale (1.0 disables it).
        null_condition: the unconditional branch's condition, in the form of the
            condition given to :meth:`sample` (a Long 1×H×W or B×H×W grid for spatial
            conditions, e.g. all null ids; a Long 1×L or B×L prefix of the condition's
            length otherwise); required when ``guidance_scale != 1``.
        sos_token: prefix used when ``condition`` is None.
        progress: ``progress(done, total)`` called after every token.

    ``condition`` in :meth:`sample`: a Long B×H×W grid spatially aligned with ``grid``
    (cropped with the same window; the prior sees ``window²`` condition tokens first),
    or Long B×L prefix tokens (SOS/class) placed before every crop, or None with
    ``sos_token``.
    """

    def __init__(self, window: int = DEFAULT_WINDOW, policy: str = "taming",
                 stride: Optional[int] = None, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 greedy: bool = False, guidance_scale: float = 1.0,
                 null_condition: Optional[Tensor] = None, sos_token: Optional[int] = None,
                 vocab_limit: Optional[int] = None,
                 progress: Optional[ProgressCallback] = None) -> None:
        check_positive(window, "sliding_window(window)")
        check_choice(policy, "sliding_window(policy)", POLICIES)
        if stride is not None:
            check_positive(stride, "sliding_window(stride)")
            if stride > window:
                raise ValidationError(f"sliding_window(stride): expected at most the window "
                                      f"{window}, got {stride}")
            if policy != "cached":
                raise ValidationError("sliding_window(stride): only the 'cached' policy uses a "
                                      f"stride, got policy={policy!r}")
        self.window = window
        self.policy = policy
        self.stride = stride if stride is not None else max(window // 2, 1)
        self.options = SamplingOptions(temperature, top_k, top_p, greedy, vocab_limit)
        null_condition = as_null_condition(null_condition, "sliding_window(null_condition)")
        self.guidance_scale = check_guidance(guidance_scale, null_condition,
                                             "sliding_window(guidance_scale)")
        self.null_condition = null_condition
        check_sos(sos_token, "sliding_window(sos_token)")
        self.sos_token = sos_token
        check_progress(progress, "sliding_window(progress)")
        self.progress = progress

    def _start_fn(self) -> StartFn:
        if self.policy == "taming":
            return taming_start
        stride = self.stride
        return lambda x, size, window: strided_start(x, size, window, stride)

    def _condition(self, condition: Optional[Tensor], grid: tuple[int, int], batch_size: int,
                   prior: Prior, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Return (spatial B×H×W condition or None, prefix B×L or None)."""
        name = "sliding_window.sample(condition)"
        if condition is not None and isinstance(condition, Tensor) and condition.dim() == 3:
            check_tensor(condition, name, dims=("B", grid[0], grid[1]), dtype="long")
            check_token_range(condition, prior.vocab_size, name)
            return expand_batch(condition.to(device), batch_size, name), None
        return None, prefix_condition(condition, grid, batch_size, self.sos_token,
                                      prior.vocab_size, name, device)

    def _with_null(self, spatial: Optional[Tensor], prefix: Optional[Tensor],
                   grid: tuple[int, int], batch_size: int, prior: Prior,
                   device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Stack the null condition under the condition along the batch (guidance)."""
        name = "sliding_window(null_condition)"
        null = self.null_condition
        if spatial is not None:
            check_tensor(null, name, dims=("B", grid[0], grid[1]), dtype="long")
            check_token_range(null, prior.vocab_size, name)
            return torch.cat([spatial, expand_batch(null.to(device), batch_size, name)]), None
        return None, stack_null_prefix(prefix, null, prior.vocab_size, name)  # type: ignore[arg-type]

    def sample(self, prior: Prior, grid: tuple[int, int] = (32, 32), *, batch_size: int = 1,
               condition: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Return Long B×H×W token ids."""
        prior = check_prior(prior, "sliding_window.sample(prior)", self.family)
        h, w = check_grid(grid, "sliding_window.sample(grid)")
        check_positive(batch_size, "sliding_window.sample(batch_size)")
        self.options.check_vocab(prior.vocab_size)
        device = prior_device(prior)
        spatial, prefix = self._condition(condition, (h, w), batch_size, prior, device)
        guided = self.guidance_scale != 1.0
        if guided:
            spatial, prefix = self._with_null(spatial, prefix, (h, w), batch_size, prior, device)
        rows = 2 * batch_size if guided else batch_size  # [conditional; unconditional]
        wh, ww = min(self.window, h), min(self.window, w)
        n_cond = wh * ww if spatial is not None else prefix.shape[1]  # type: ignore[union-attr]
        max_len = n_cond + wh * ww - 1
        if max_len > prior.block_size:
            raise ValidationError(
                f"sliding_window.sample: a {wh}×{ww} window with {n_cond} condition tokens needs "
                f"{max_len} positions but the prior's block size is {prior.block_size}; use a "
                "smaller window")
        start_of = self._start_fn()
        keep_many = self.policy == "cached"
        out = torch.zeros(batch_size, h, w, dtype=torch.long, device=device)
        caches: dict[tuple[int, int], PriorCache] = {}
        spare: list[PriorCache] = []
        total, done = h * w, 0
        with sampling_mode(prior):
            for i in range(h):
                i0 = start_of(i, h, wh)
                for key in [k for k in caches if k[0] != i0]:  # origins only move down
                    spare.append(caches.pop(key))
                for j in range(w):
                    j0 = start_of(j, w, ww)
                    key = (i0, j0)
                    cache = caches.get(key)
                    if cache is None:
                        if not keep_many:
                            spare.extend(caches.values())
                            caches.clear()
                        cache = spare.pop() if spare else prior.new_cache(rows, max_len,
                                                                          device=device)
                        cache.reset()
                        caches[key] = cache
                    pos = n_cond + (i - i0) * ww + (j - j0)
                    crop = out[:, i0:i0 + wh, j0:j0 + ww].reshape(batch_size, -1)
                    if guided:
                        crop = crop.repeat(2, 1)
                    cond = (spatial[:, i0:i0 + wh, j0:j0 + ww].reshape(rows, -1)
                            if spatial is not None else prefix)
                    seq = torch.cat([cond, crop], dim=1)[:, cache.length:pos]
                    logits = prior.forward_cached(seq, cache)[:, -1]
                    if guided:
                        logits = guide(logits, self.guidance_scale)
                    out[:, i, j] = self.options.choose(logits, generator)
                    done += 1
                    if self.progress is not None:
                        self.progress(done, total)
        return out

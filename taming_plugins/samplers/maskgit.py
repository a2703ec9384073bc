"""The ``maskgit`` sampler: parallel decoding of a masked prior in a few steps.

MaskGIT's iterative decoding (Chang et al. 2022), i.e. the reverse process of
absorbing-state discrete diffusion. A grid starts fully masked (or with the ``known``
tokens of ``init_tokens`` in place); at each of ``steps`` steps the prior predicts every
position at once, a token is drawn for every masked position, and the most confident
draws are committed while the rest are masked again. The number still masked after
step t is ``floor(U·γ((t+1)/steps))`` for U initially unknown tokens (at least one
fewer than before the step, so every step commits something and nothing is masked at
the end), with the schedule γ:

* ``cosine``: cos(πr/2) (MaskGIT's choice: few tokens early, many late);
* ``linear``: 1 − r;
* ``square``: 1 − r².

Confidence = log-probability of the drawn token (under the filtered distribution)
plus Gumbel noise scaled by ``choice_temperature``·(1 − t/steps), so early choices are
randomised and late ones follow the model. Committed tokens never change.

Each step is one full pass of the prior over the grid (two with classifier-free
guidance, run as one doubled batch): ``steps`` sequential network evaluations per grid
instead of one per token.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from taming_core import InpaintingSampler, MaskedPrior, ValidationError, register
from taming_core.interfaces import ProgressCallback
from taming_core.validation import check_choice, check_positive, check_tensor

from ._common import (as_null_condition, check_grid, check_guidance, check_prior, check_progress, check_sos,
                      check_token_range, expand_batch, guide, prefix_condition, prior_device,
                      sampling_mode, stack_null_prefix)
from ._filtering import SamplingOptions

__all__ = ["MaskGITSampler", "SCHEDULES", "mask_ratio", "masked_counts"]

SCHEDULES = ("cosine", "linear", "square")
#: MaskGIT's default Gumbel-noise scale of the confidence.
DEFAULT_CHOICE_TEMPERATURE = 4.5
_EPS = 1e-20


def mask_ratio(schedule: str, r: float) -> float:
    """γ(r): the fraction of the unknown tokens still masked at progress r ∈ [0, 1]."""
    if schedule == "cosine":
        return math.cos(math.pi / 2 * r)
    if schedule == "linear":
        return 1.0 - r
    if schedule == "square":
        return 1.0 - r * r
    raise ValidationError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")


def masked_counts(unknown: Tensor, steps: int, schedule: str) -> Tensor:
    """Long B×steps: how many of each sequence's ``unknown`` (Long B) tokens are still
    masked after each step (see the module docstring); the last column is 0."""
    counts = []
    prev = unknown.long()
    for t in range(steps):
        target = torch.floor(unknown.double() * mask_ratio(schedule, (t + 1) / steps)).long()
        target = torch.minimum(target, (prev - 1).clamp(min=0))
        if t == steps - 1:
            target = torch.zeros_like(target)
        counts.append(target)
        prev = target
    return torch.stack(counts, dim=1)


@register("sampler", "maskgit")
class MaskGITSampler(InpaintingSampler):
    """Confidence-ordered parallel decoding of a masked prior (MaskGIT).

    Args:
        steps: number of decoding steps (network passes), >= 1 (default 12).
        schedule: masking schedule, ``cosine`` (default), ``linear`` or ``square``.
        choice_temperature: scale of the Gumbel noise on the confidence at step 0; it
            decays linearly, (1 − t/steps). 0 ranks by log-probability alone.
        temperature, top_k, top_p, greedy, vocab_limit: applied to the token logits, see
            :class:`~taming_plugins.samplers._filtering.SamplingOptions`.
        guidance_scale, null_condition: classifier-free guidance, as in ``autoregressive``.
        sos_token: prefix used when ``sample(condition=None)``; without one an
            unconditional grid is decoded with no prefix at all.
        progress: ``progress(done, steps)`` called after every step.

    ``condition`` is Long B×L prefix tokens or a Long B×H×W grid aligned with ``grid``
    (flattened into the prefix). :meth:`inpaint` (also ``sample(init_tokens=, known=)``)
    keeps the known tokens exactly and generates the others.
    """

    family = "masked"

    def __init__(self, steps: int = 12, schedule: str = "cosine",
                 choice_temperature: float = DEFAULT_CHOICE_TEMPERATURE, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                 guidance_scale: float = 1.0, null_condition: Optional[Tensor] = None,
                 sos_token: Optional[int] = None, vocab_limit: Optional[int] = None,
                 progress: Optional[ProgressCallback] = None) -> None:
        check_positive(steps, "maskgit(steps)")
        check_choice(schedule, "maskgit(schedule)", SCHEDULES)
        if isinstance(choice_temperature, bool) or not isinstance(choice_temperature, (int, float)) \
                or not math.isfinite(choice_temperature) or choice_temperature < 0:
            raise ValidationError(f"maskgit(choice_temperature): expected a finite number >= 0, got "
                                  f"{choice_temperature!r}")
        self.steps = int(steps)
        self.schedule = schedule
        self.choice_temperature = float(choice_temperature)
        self.options = SamplingOptions(temperature, top_k, top_p, greedy, vocab_limit)
        null_condition = as_null_condition(null_condition, "maskgit(null_condition)")
        self.guidance_scale = check_guidance(guidance_scale, null_condition, "maskgit(guidance_scale)")
        self.null_condition = null_condition
        check_sos(sos_token, "maskgit(sos_token)")
        self.sos_token = sos_token
        check_progress(progress, "maskgit(progress)")
        self.progress = progress

    # ------------------------------------------------------------------ public API
    def sample(self, prior: MaskedPrior, grid: tuple[int, int] = (16, 16), *,  # type: ignore[override]
               batch_size: int = 1, condition: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, init_tokens: Optional[Tensor] = None,
               known: Optional[Tensor] = None) -> Tensor:
        """Return Long B×H×W token ids; with ``init_tokens`` and ``known`` the known
        tokens are kept (see :meth:`inpaint`)."""
        prior = check_prior(prior, "maskgit.sample(prior)", self.family)  # type: ignore[assignment]
        h, w = check_grid(grid, "maskgit.sample(grid)")
        check_positive(batch_size, "maskgit.sample(batch_size)")
        if (init_tokens is None) != (known is None):
            raise ValidationError("maskgit.sample(init_tokens, known): give both (the tokens and "
                                  "the Bool mask of those to keep) or neither")
        device = prior_device(prior)
        if known is None:
            tokens = torch.full((batch_size, h * w), prior.mask_id, dtype=torch.long, device=device)
            keep = torch.zeros(batch_size, h * w, dtype=torch.bool, device=device)
        else:
            tokens, keep = self._known_grid(prior, init_tokens, known, (h, w), batch_size, device)
        return self._decode(prior, tokens, keep, (h, w), condition, generator)

    def inpaint(self, prior: MaskedPrior, init_tokens: Tensor, known: Tensor, *,  # type: ignore[override]
                condition: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
        """Fill the unknown positions of Long B×H×W ``init_tokens`` (``known``: Bool H×W
        or B×H×W, True = keep exactly); inpainting and outpainting alike."""
        check_tensor(init_tokens, "maskgit.inpaint(init_tokens)", dims=("B", "H", "W"), dtype="long")
        b, h, w = init_tokens.shape
        return self.sample(prior, (h, w), batch_size=b, condition=condition, generator=generator,
                           init_tokens=init_tokens, known=known)

    # ------------------------------------------------------------------ internals
    def _known_grid(self, prior: MaskedPrior, init_tokens: Tensor, known: Tensor,
                    grid: tuple[int, int], batch_size: int,
                    device: torch.device) -> tuple[Tensor, Tensor]:
        h, w = grid
        check_tensor(known, "maskgit.sample(known)", dtype="bool")
        if known.shape[-2:] != (h, w) or known.dim() not in (2, 3):
            raise ValidationError(f"maskgit.sample(known): expected a Bool {h}×{w} or B×{h}×{w} mask "
                                  f"matching the grid, got shape {tuple(known.shape)}")
        check_tensor(init_tokens, "maskgit.sample(init_tokens)", dtype="long")
        if init_tokens.dim() not in (2, 3) or init_tokens.shape[-2:] != (h, w):
            raise ValidationError(f"maskgit.sample(init_tokens): expected Long B×{h}×{w} tokens "
                                  f"matching the grid, got shape {tuple(init_tokens.shape)}")
        limit = self.options.vocab_limit or prior.vocab_size
        check_token_range(init_tokens, limit, "maskgit.sample(init_tokens)")
        keep = expand_batch(known.reshape(-1, h * w).to(device), batch_size, "maskgit.sample(known)")
        init = expand_batch(init_tokens.reshape(-1, h * w).to(device), batch_size,
                            "maskgit.sample(init_tokens)")
        tokens = torch.where(keep, init, torch.full_like(init, prior.mask_id))
        return tokens, keep.clone()

    def _decode(self, prior: MaskedPrior, tokens: Tensor, keep: Tensor, grid: tuple[int, int],
                condition: Optional[Tensor], generator: Optional[torch.Generator]) -> Tensor:
        b, n = tokens.shape
        device = tokens.device
        self.options.check_vocab(prior.vocab_size)
        prefix: Optional[Tensor] = None
        if condition is not None or self.sos_token is not None:
            prefix = prefix_condition(condition, grid, b, self.sos_token, prior.vocab_size,
                                      "maskgit.sample(condition)", device)
        cond_len = 0 if prefix is None else prefix.shape[1]
        if cond_len + n > prior.block_size:
            raise ValidationError(
                f"maskgit.sample(grid): {cond_len} condition tokens + {grid[0]}×{grid[1]} grid need "
                f"{cond_len + n} positions but the prior's block size is {prior.block_size}")
        guided = self.guidance_scale != 1.0
        if guided:
            if prefix is None:
                raise ValidationError("maskgit(guidance_scale): guidance needs a condition prefix")
            prefix = stack_null_prefix(prefix, self.null_condition, prior.vocab_size,
                                       "maskgit(null_condition)")
        counts = masked_counts((~keep).sum(dim=1), self.steps, self.schedule)
        rand_device = generator.device if generator is not None else device
        with sampling_mode(prior):
            for t in range(self.steps):
                masked = tokens == prior.mask_id
                logits = prior(tokens.repeat(2, 1) if guided else tokens, prefix)
                if guided:
                    logits = guide(logits, self.guidance_scale)
                logits = self.options.filter(logits.float())
                if self.options.greedy:
                    drawn = logits.argmax(dim=-1)
                else:
                    probs = torch.softmax(logits, dim=-1).view(b * n, -1)
                    drawn = torch.multinomial(probs, 1, generator=generator).view(b, n)
                confidence = torch.log_softmax(logits, dim=-1).gather(-1, drawn[..., None])[..., 0]
                scale = self.choice_temperature * (1.0 - t / self.steps)
                if scale > 0:
                    u = torch.rand(b, n, generator=generator, device=rand_device).to(device)
                    confidence = confidence + scale * -torch.log(-torch.log(u + _EPS) + _EPS)
                confidence = confidence.masked_fill(~masked, float("inf"))
                ranks = confidence.argsort(dim=1).argsort(dim=1)
                still_masked = ranks < counts[:, t:t + 1].to(device)
                tokens = torch.where(masked & ~still_masked, drawn, tokens)
                if self.progress is not None:
                    self.progress(t + 1, self.steps)
        return tokens.view(b, *grid)

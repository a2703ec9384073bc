"""The ``rejection`` sampler: keep the best-scored fraction of candidates (paper, Table 4).

For each requested sample, ``round(1 / acceptance_rate)`` candidates are drawn with
the same condition by an inner sampler, decoded to images by the tokenizer and scored
by a user-supplied classifier; the highest-scoring candidate is kept, so the overall
acceptance rate is the requested one.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor

from taming_core import Prior, Sampler, Tokenizer, ValidationError, create, register
from taming_core.validation import check_positive, check_tensor

from ._common import check_grid, check_prior

logger = logging.getLogger(__name__)

Classifier = Callable[[Tensor], Tensor]
SamplerSpec = Union[Sampler, Mapping[str, Any]]


def _build_sampler(spec: SamplerSpec) -> Sampler:
    if isinstance(spec, Sampler):
        return spec
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "kind")}
        return create("sampler", spec["name"], **kwargs)
    raise ValidationError(f"rejection(sampler): expected a Sampler or a spec dict "
                          f"{{'name': ..., ...}}, got {type(spec).__name__}")


@register("sampler", "rejection")
class RejectionSampler(Sampler):
    """Draw candidates with ``sampler``, keep the best-scored ones.

    Args:
        sampler: the inner sampler (instance or spec dict ``{"name": ..., **kwargs}``).
        tokenizer: decodes candidate grids to images for the classifier.
        classifier: ``classifier(images N×C×H×W) -> scores`` where scores are N floats
            (higher is better) or N×K class probabilities/logits; for the latter the
            score is the entry of ``target_class(condition)`` when given (e.g. the
            probability of the conditioned ImageNet class), else the row maximum.
        acceptance_rate: fraction of candidates kept, in (0, 1].
        candidate_batch_size: candidates drawn per inner ``sample`` call (memory bound);
            default: all candidates of one call at once.
        target_class: optional ``target_class(condition rows) -> Long N`` class ids.

    After :meth:`sample`, ``last_scores`` holds the kept candidates' scores (B).
    """

    def __init__(self, sampler: SamplerSpec, tokenizer: Tokenizer, classifier: Classifier,
                 acceptance_rate: float = 0.1, candidate_batch_size: Optional[int] = None,
                 target_class: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        self.sampler = _build_sampler(sampler)
        if not isinstance(tokenizer, Tokenizer):
            raise ValidationError(f"rejection(tokenizer): expected a taming_core.Tokenizer, "
                                  f"got {type(tokenizer).__name__}")
        if not callable(classifier):
            raise ValidationError(f"rejection(classifier): expected a callable "
                                  f"classifier(images) -> scores, got {type(classifier).__name__}")
        r = acceptance_rate
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ValidationError(f"rejection(acceptance_rate): expected a number in (0, 1], got {r!r}")
        if candidate_batch_size is not None:
            check_positive(candidate_batch_size, "rejection(candidate_batch_size)")
        self.tokenizer = tokenizer
        self.classifier = classifier
        self.acceptance_rate = float(r)
        self.candidate_batch_size = candidate_batch_size
        self.target_class = target_class
        self.last_scores: Optional[Tensor] = None

    @property
    def candidates_per_sample(self) -> int:
        """Candidates drawn for each kept sample: ``round(1 / acceptance_rate)``."""
        return max(1, round(1.0 / self.acceptance_rate))

    def _score(self, images: Tensor, condition: Optional[Tensor]) -> Tensor:
        scores = self.classifier(images)
        n = images.shape[0]
        check_tensor(scores, "rejection(classifier) output", dtype="float")
        if scores.dim() == 1 and scores.shape[0] == n:
            return scores.float()
        if scores.dim() == 2 and scores.shape[0] == n:
            if self.target_class is None:
                return scores.max(dim=1).values.float()
            if condition is None:
                raise ValidationError("rejection(target_class): needs a condition to pick classes")
            target = self.target_class(condition).to(scores.device).long().view(n, 1)
            return scores.gather(1, target).squeeze(1).float()
        raise ValidationError(f"rejection(classifier) output: expected N={n} scores or an N×K "
                              f"matrix, got shape {tuple(scores.shape)}")

    def sample(self, prior: Prior, grid: tuple[int, int] = (16, 16), *, batch_size: int = 1,
               condition: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Return Long B×H×W ids: per sample, the best of ``candidates_per_sample`` draws."""
        prior = check_prior(prior, "rejection.sample(prior)", self.sampler.family)
        grid = check_grid(grid, "rejection.sample(grid)")
        check_positive(batch_size, "rejection.sample(batch_size)")
        m = self.candidates_per_sample
        if condition is not None:
            check_tensor(condition, "rejection.sample(condition)", dtype="long")
            if condition.shape[0] not in (1, batch_size):
                raise ValidationError(f"rejection.sample(condition): expected a batch of "
                                      f"{batch_size} (or 1), got {condition.shape[0]}")
            condition = condition.expand(batch_size, *condition.shape[1:])
        # candidate c of sample b sits at row b * m + c
        cand_cond = condition.repeat_interleave(m, dim=0) if condition is not None else None
        n_total = batch_size * m
        chunk = self.candidate_batch_size or n_total
        grids, scores = [], []
        for lo in range(0, n_total, chunk):
            hi = min(lo + chunk, n_total)
            cond = cand_cond[lo:hi] if cand_cond is not None else None
            tokens = self.sampler.sample(prior, grid, batch_size=hi - lo, condition=cond,
                                         generator=generator)
            with torch.inference_mode():
                images = self.tokenizer.decode(tokens)
                scores.append(self._score(images, cond).cpu())
            grids.append(tokens)
        all_grids = torch.cat(grids).view(batch_size, m, *grid)
        all_scores = torch.cat(scores).view(batch_size, m)
        best = all_scores.argmax(dim=1)
        self.last_scores = all_scores.gather(1, best[:, None]).squeeze(1)
        logger.debug("rejection: kept %d of %d candidates", batch_size, n_total)
        return all_grids[torch.arange(batch_size), best.to(all_grids.device)]

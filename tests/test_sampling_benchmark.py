"""The baselines of ``benchmarks/sampling.py`` are faithful: on a small model their
greedy outputs equal our samplers' (so the benchmark's speed ratios compare equal work)."""

from __future__ import annotations

import torch

import taming_core
from benchmarks import sampling as bench
from taming_plugins.priors.gpt import GPT


def _model() -> GPT:
    torch.manual_seed(3)
    prior = GPT(vocab_size=41, block_size=40, n_layer=2, n_head=2, n_embd=32).eval()
    with torch.no_grad():
        prior.pos_emb.normal_(0, 1.0)
        prior.head.weight.normal_(0, 1.0)
    return prior


def test_original_forward_matches_the_prior():
    prior = _model()
    tokens = torch.randint(0, 41, (2, 40))
    with torch.no_grad():
        assert torch.allclose(bench.original_forward(prior, tokens), prior(tokens), atol=1e-5)


def test_full_forward_concat_cache_and_ours_agree():
    prior = _model()
    cond = torch.full((2, 1), 40, dtype=torch.long)
    a = bench.original_full_forward(prior, cond, 20)
    b = bench.original_concat_cache(prior, cond, 20)
    c = taming_core.create("sampler", "autoregressive", greedy=True).sample(
        prior, (4, 5), batch_size=2, condition=cond).view(2, -1)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_window_loop_matches_the_taming_policy():
    prior = _model()
    torch.manual_seed(4)
    cond = torch.randint(0, 32, (1, 7, 6))
    loop = bench.original_window_loop(prior, cond, (7, 6), 4)
    sdpa = bench.original_window_loop(prior, cond, (7, 6), 4, forward=lambda p, x: p(x))
    ours = taming_core.create("sampler", "sliding_window", window=4, policy="taming",
                              greedy=True).sample(prior, (7, 6), condition=cond)
    assert torch.equal(loop, ours) and torch.equal(sdpa, ours)

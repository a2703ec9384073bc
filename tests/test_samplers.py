"""Samplers: autoregressive (KV cache), sliding window (taming / cached), rejection."""

from __future__ import annotations

import pytest
import torch

import taming_core
from taming_core import ValidationError
from taming_plugins.priors.gpt import GPT
from taming_core.sampling import SamplingOptions, top_k_filter, top_p_filter
from taming_plugins.samplers.sliding_window import strided_start

FIXTURE = "net2net_gpt_small"


def random_prior(vocab: int = 12, block: int = 64, n_layer: int = 2, n_head: int = 2,
                 n_embd: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    prior = GPT(vocab, block, n_layer=n_layer, n_head=n_head, n_embd=n_embd).eval()
    with torch.no_grad():  # sharper, position-dependent distributions than the default init
        prior.pos_emb.normal_(0, 1.0)
        prior.head.weight.normal_(0, 1.0)
    return prior


@pytest.fixture(scope="module")
def fixture_prior():
    from taming_plugins.compat import load_taming_checkpoint
    from conftest import FIXTURES

    ckpt = load_taming_checkpoint(FIXTURES / f"{FIXTURE}.ckpt", FIXTURES / f"{FIXTURE}.yaml")
    io = torch.load(FIXTURES / f"{FIXTURE}.io.pt", weights_only=True)
    return ckpt.prior, io


# --------------------------------------------------------------------------- references
@torch.no_grad()
def full_forward_greedy(prior: GPT, prefix: torch.Tensor, n: int) -> torch.Tensor:
    """The original ``sample``: a full forward over the whole prefix every step."""
    seq = prefix
    for _ in range(n):
        seq = torch.cat([seq, prior(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prefix.shape[1]:]


def readme_start(x: int, size: int, window: int) -> int:
    """Window origin as documented in the fixture README (even windows)."""
    half = window // 2
    if x <= half:
        local = x
    elif size - x < half:
        local = window - (size - x)
    else:
        local = half
    return x - local


@torch.no_grad()
def window_greedy_reference(prior: GPT, cond, grid, window, start_fn, null=None,
                            scale: float = 1.0) -> torch.Tensor:
    """One full forward of [condition crop, sample crop] minus the last token per token;
    with ``null``, also one of [null crop, sample crop] and guided logits."""
    h, w = grid
    b = cond.shape[0]
    out = torch.zeros(b, h, w, dtype=torch.long)

    def token_logits(c_all, crop, i, j, i0, j0):
        c = (c_all[:, i0:i0 + window, j0:j0 + window].reshape(b, -1) if c_all.dim() == 3
             else c_all.expand(b, -1))
        logits = prior(torch.cat([c, crop], 1)[:, :-1])[:, -window * window:]
        return logits.view(b, window, window, -1)[:, i - i0, j - j0]

    for i in range(h):
        for j in range(w):
            i0, j0 = start_fn(i, h, window), start_fn(j, w, window)
            crop = out[:, i0:i0 + window, j0:j0 + window].reshape(b, -1)
            logits = token_logits(cond, crop, i, j, i0, j0)
            if null is not None:
                uncond = token_logits(null.expand(b, *null.shape[1:]), crop, i, j, i0, j0)
                logits = uncond + scale * (logits - uncond)
            out[:, i, j] = logits.argmax(-1)
    return out


# --------------------------------------------------------------------------- acceptance
def test_fixture_greedy_autoregressive(fixture_prior):
    prior, io = fixture_prior
    out = taming_core.create("sampler", "autoregressive", greedy=True).sample(
        prior, grid=(8, 8), batch_size=2, condition=io["greedy_cond"])
    assert torch.equal(out, io["greedy_full"].view(2, 8, 8))


def test_fixture_sliding_window_taming_policy(fixture_prior):
    prior, io = fixture_prior
    out = taming_core.create("sampler", "sliding_window", window=16, policy="taming",
                             greedy=True).sample(prior, grid=(20, 24), batch_size=1,
                                                 condition=io["window_cond"])
    assert torch.equal(out, io["window_greedy"])


# --------------------------------------------------------------------------- general
@pytest.mark.parametrize("arch,grid,prefix_len", [
    (dict(n_layer=1, n_head=1, n_embd=8, block=40), (5, 7), 1),
    (dict(n_layer=3, n_head=4, n_embd=32, block=30), (4, 6), 3),
])
def test_cached_greedy_equals_full_forward(arch, grid, prefix_len):
    prior = random_prior(block=arch["block"], n_layer=arch["n_layer"], n_head=arch["n_head"],
                         n_embd=arch["n_embd"])
    prefix = torch.randint(0, 12, (3, prefix_len))
    out = taming_core.create("sampler", "autoregressive", greedy=True).sample(
        prior, grid, batch_size=3, condition=prefix)
    want = full_forward_greedy(prior, prefix, grid[0] * grid[1])
    assert out.shape == (3, *grid) and torch.equal(out.view(3, -1), want)


def test_spatial_condition_is_a_flattened_prefix():
    prior = random_prior()
    cond = torch.randint(0, 12, (2, 3, 4))
    out = taming_core.create("sampler", "autoregressive", greedy=True).sample(
        prior, (3, 4), batch_size=2, condition=cond)
    assert torch.equal(out.view(2, -1), full_forward_greedy(prior, cond.view(2, -1), 12))


@pytest.mark.parametrize("grid,window,spatial", [((7, 9), 4, True), ((6, 5), 4, False),
                                                  ((3, 8), 6, True)])
def test_taming_policy_equals_documented_policy(grid, window, spatial):
    prior = random_prior(block=2 * window * window)
    b = 2
    cond = torch.randint(0, 12, (b, *grid)) if spatial else torch.randint(0, 12, (b, 2))
    sampler = taming_core.create("sampler", "sliding_window", window=window, greedy=True)
    out = sampler.sample(prior, grid, batch_size=b, condition=cond)
    wh, ww = min(window, grid[0]), min(window, grid[1])
    if wh == ww:
        want = window_greedy_reference(prior, cond, grid, wh, readme_start)
        assert torch.equal(out, want)
    else:  # grid smaller than the window on one axis: the crop is the whole axis
        assert out.shape == (b, *grid)


@pytest.mark.parametrize("stride", [None, 3])
def test_cached_policy_equals_full_forward_with_same_windows(stride):
    grid, window = (10, 11), 4
    prior = random_prior(block=2 * window * window)
    cond = torch.randint(0, 12, (2, *grid))
    s = stride or window // 2
    sampler = taming_core.create("sampler", "sliding_window", window=window, policy="cached",
                                 stride=stride, greedy=True)
    out = sampler.sample(prior, grid, batch_size=2, condition=cond)
    want = window_greedy_reference(prior, cond, grid, window,
                                   lambda x, size, wdw: strided_start(x, size, wdw, s))
    assert torch.equal(out, want)


def test_cached_policy_with_stride_one_is_the_taming_placement():
    grid, window = (9, 10), 4
    prior = random_prior(block=2 * window * window)
    cond = torch.randint(0, 12, (1, *grid))
    kw = dict(window=window, greedy=True)
    cached = taming_core.create("sampler", "sliding_window", policy="cached", stride=1, **kw)
    taming = taming_core.create("sampler", "sliding_window", policy="taming", **kw)
    assert torch.equal(cached.sample(prior, grid, condition=cond),
                       taming.sample(prior, grid, condition=cond))


@pytest.mark.parametrize("size,window,stride", [(32, 16, 8), (20, 16, 5), (9, 4, 4), (7, 7, 1)])
def test_strided_window_contains_token_and_is_centred(size, window, stride):
    for x in range(size):
        start = strided_start(x, size, window, stride)
        assert 0 <= start <= size - window and start <= x < start + window
        if stride <= window // 2 and window // 2 + stride <= x < size - window:
            assert abs((x - start) - window // 2) <= stride // 2 + 1


# --------------------------------------------------------------------------- sampling options
def test_seeded_generator_is_reproducible_and_progress_reported():
    prior = random_prior()
    calls = []
    sampler = taming_core.create("sampler", "autoregressive", temperature=1.5, top_k=5, top_p=0.9,
                                 sos_token=0, progress=lambda d, t: calls.append((d, t)))
    a = sampler.sample(prior, (4, 4), batch_size=4, generator=torch.Generator().manual_seed(3))
    b = sampler.sample(prior, (4, 4), batch_size=4, generator=torch.Generator().manual_seed(3))
    c = sampler.sample(prior, (4, 4), batch_size=4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert calls[:16] == [(k, 16) for k in range(1, 17)]


def test_top_k_one_and_tiny_top_p_are_greedy():
    prior = random_prior()
    cond = torch.randint(0, 12, (2, 1))
    greedy = taming_core.create("sampler", "autoregressive", greedy=True).sample(
        prior, (3, 3), batch_size=2, condition=cond)
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        out = taming_core.create("sampler", "autoregressive", **kw).sample(
            prior, (3, 3), batch_size=2, condition=cond, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out, greedy)


def test_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isinf(top_p_filter(probs, 0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(top_p_filter(probs, 0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(top_p_filter(probs, 1.0)).sum() == 0
    opts = SamplingOptions(greedy=True, vocab_limit=2)
    assert opts.choose(logits).tolist() == [1]
    sampled = SamplingOptions(vocab_limit=2).choose(logits.repeat(50, 1))
    assert sampled.max() < 2


def test_vocab_limit_excludes_ids():
    prior = random_prior()
    out = taming_core.create("sampler", "autoregressive", sos_token=11, vocab_limit=4).sample(
        prior, (4, 4), batch_size=8, generator=torch.Generator().manual_seed(0))
    assert out.max() < 4


def test_guidance_scale_zero_follows_the_null_branch_and_one_is_plain():
    prior = random_prior()
    cond, null = torch.full((2, 1), 5), torch.full((1, 1), 7)
    plain = taming_core.create("sampler", "autoregressive", greedy=True)
    zero = taming_core.create("sampler", "autoregressive", greedy=True, guidance_scale=0.0,
                              null_condition=null)
    assert torch.equal(zero.sample(prior, (3, 4), batch_size=2, condition=cond),
                       plain.sample(prior, (3, 4), batch_size=2, condition=null.expand(2, 1)))
    guided = taming_core.create("sampler", "autoregressive", greedy=True, guidance_scale=3.0,
                                null_condition=null)
    out = guided.sample(prior, (3, 4), batch_size=2, condition=cond)
    assert out.shape == (2, 3, 4)


@pytest.mark.parametrize("policy,spatial", [("taming", True), ("cached", False)])
def test_sliding_window_guidance_equals_guided_reference(policy, spatial):
    grid, window, scale = (7, 6), 4, 2.5
    prior = random_prior(block=2 * window * window)
    if spatial:
        cond, null = torch.randint(0, 11, (2, *grid)), torch.full((1, *grid), 11)
    else:
        cond, null = torch.randint(0, 11, (2, 2)), torch.full((1, 2), 11)
    sampler = taming_core.create("sampler", "sliding_window", window=window, policy=policy,
                                 greedy=True, guidance_scale=scale, null_condition=null)
    out = sampler.sample(prior, grid, batch_size=2, condition=cond)
    start = (readme_start if policy == "taming"
             else lambda x, size, wdw: strided_start(x, size, wdw, window // 2))
    want = window_greedy_reference(prior, cond, grid, window, start, null=null, scale=scale)
    assert torch.equal(out, want)
    zero = taming_core.create("sampler", "sliding_window", window=window, policy=policy,
                              greedy=True, guidance_scale=0.0, null_condition=null)
    plain = taming_core.create("sampler", "sliding_window", window=window, policy=policy,
                               greedy=True)
    assert torch.equal(zero.sample(prior, grid, batch_size=2, condition=cond),
                       plain.sample(prior, grid, batch_size=2,
                                    condition=null.expand(2, *null.shape[1:])))


def test_sliding_window_guidance_rejects_mismatched_null_condition():
    prior = random_prior(block=32)
    make = lambda null: taming_core.create(  # noqa: E731
        "sampler", "sliding_window", window=4, guidance_scale=2.0, null_condition=null)
    with pytest.raises(ValidationError, match="null_condition"):
        make(torch.full((1, 3), 11)).sample(prior, (5, 5), condition=torch.zeros(1, 2).long())
    with pytest.raises(ValidationError, match="null_condition"):
        make(torch.full((1, 2), 11)).sample(prior, (5, 5), condition=torch.zeros(1, 5, 5).long())
    with pytest.raises(ValidationError, match="null_condition"):
        taming_core.create("sampler", "sliding_window", guidance_scale=2.0)


def test_invalid_settings_raise_validation_errors():
    prior = random_prior(block=20)
    for kw, match in [(dict(top_k=0), "top_k"), (dict(top_k=-2), "top_k"), (dict(top_p=0.0), "top_p"),
                      (dict(top_p=1.5), "top_p"), (dict(temperature=0), "temperature"),
                      (dict(guidance_scale=2.0), "null_condition")]:
        with pytest.raises(ValidationError, match=match):
            taming_core.create("sampler", "autoregressive", **kw)
    sampler = taming_core.create("sampler", "autoregressive", greedy=True)
    with pytest.raises(ValidationError, match="must match the grid 4×4"):
        sampler.sample(prior, (4, 4), condition=torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValidationError, match="sliding_window"):
        sampler.sample(prior, (5, 5), condition=torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValidationError, match="sos_token"):
        sampler.sample(prior, (2, 2))
    with pytest.raises(ValidationError, match=r"values must lie in \[0, 11\]"):
        sampler.sample(prior, (2, 2), condition=torch.full((1, 1), 12))
    window = taming_core.create("sampler", "sliding_window", window=4, greedy=True)
    with pytest.raises(ValidationError, match="block size"):
        taming_core.create("sampler", "sliding_window", window=8).sample(
            prior, (9, 9), condition=torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValidationError, match="expected"):
        window.sample(prior, (6, 6), condition=torch.zeros(1, 5, 6, dtype=torch.long))
    with pytest.raises(ValidationError, match="policy"):
        taming_core.create("sampler", "sliding_window", policy="fast")
    with pytest.raises(ValidationError, match="stride"):
        taming_core.create("sampler", "sliding_window", window=4, policy="cached", stride=5)


# --------------------------------------------------------------------------- rejection
class MeanTokenizer(taming_core.Tokenizer):
    """Decodes a grid to a 1×H×W 'image' holding the token ids (for scoring)."""

    def encode(self, images):  # pragma: no cover - unused
        raise NotImplementedError

    def decode_latent(self, latent):
        return latent

    def decode_indices_to_latent(self, indices):
        return indices.float()[:, None]

    @property
    def downsample_factor(self):
        return 1

    @property
    def vocab_size(self):
        return 12


def test_rejection_keeps_the_best_candidate_per_sample():
    prior = random_prior()
    inner = taming_core.create("sampler", "autoregressive", sos_token=0)
    calls = []

    def classifier(images):
        calls.append(images.shape[0])
        return images.mean(dim=(1, 2, 3))

    rej = taming_core.create("sampler", "rejection", sampler=inner, tokenizer=MeanTokenizer(),
                             classifier=classifier, acceptance_rate=0.25, candidate_batch_size=6)
    gen = torch.Generator().manual_seed(0)
    out = rej.sample(prior, (3, 3), batch_size=3, generator=gen)
    assert rej.candidates_per_sample == 4 and sum(calls) == 12 and max(calls) <= 6
    gen = torch.Generator().manual_seed(0)  # the same two chunks of 6 candidates
    cands = torch.cat([inner.sample(prior, (3, 3), batch_size=6, generator=gen) for _ in range(2)])
    best = cands.float().mean(dim=(1, 2)).view(3, 4).max(dim=1).values
    assert torch.allclose(out.float().mean(dim=(1, 2)), best)
    assert torch.allclose(rej.last_scores, best)


def test_rejection_with_class_probabilities_and_spec():
    prior = random_prior()
    probs = lambda images: torch.softmax(torch.stack([images.mean((1, 2, 3)),  # noqa: E731
                                                      -images.mean((1, 2, 3))], 1), 1)
    rej = taming_core.create("sampler", "rejection",
                             sampler={"name": "autoregressive", "top_k": 6},
                             tokenizer=MeanTokenizer(), classifier=probs, acceptance_rate=0.5,
                             target_class=lambda cond: (cond[:, 0] == 3).long())
    cond = torch.tensor([[2], [3]])
    out = rej.sample(prior, (2, 2), batch_size=2, condition=cond,
                     generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 2, 2) and rej.last_scores.shape == (2,)
    with pytest.raises(ValidationError, match="acceptance_rate"):
        taming_core.create("sampler", "rejection", sampler={"name": "autoregressive"},
                           tokenizer=MeanTokenizer(), classifier=probs, acceptance_rate=0.0)

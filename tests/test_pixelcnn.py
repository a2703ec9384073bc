"""The ``pixelcnn`` prior (Gated PixelCNN): causality, no blind spot, greedy sampling
through its cache equals a greedy loop of full forwards, and its errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taming_core
from taming_core import ValidationError
from taming_plugins.priors.pixelcnn import GatedPixelCNN

V = 11


def _layers_for(h: int, w: int, kernel: int) -> int:
    r = kernel // 2
    return max(1, -(-max(h - 2, w - 1) // r))


def _prior(h: int, w: int, prefix: int, kernel: int = 3, seed: int = 0) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return GatedPixelCNN(V, prefix + h * w, grid=[h, w], n_layer=_layers_for(h, w, kernel),
                         channels=8, kernel_size=kernel).eval()


grids = st.tuples(st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=15, deadline=None)
@given(grid=grids, batch=st.integers(1, 3), prefix=st.integers(1, 2), kernel=st.sampled_from([3, 5]),
       seed=st.integers(0, 1000), data=st.data())
def test_causality_logits_ignore_later_tokens(grid, batch, prefix, kernel, seed, data):
    h, w = grid
    prior = _prior(h, w, prefix, kernel)
    total = prefix + h * w
    length = data.draw(st.integers(prefix, total), label="length")
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (batch, length), generator=g)
    with torch.no_grad():
        base = prior(tokens)
        assert base.shape == (batch, length, V)
        for s in range(1, length):
            changed = tokens.clone()
            changed[:, s] = (changed[:, s] + 1 + torch.randint(0, V - 1, (batch,), generator=g)) % V
            out = prior(changed)
            assert torch.equal(out[:, :s], base[:, :s]), f"position < {s} saw token {s}"


@settings(max_examples=12, deadline=None)
@given(grid=grids, batch=st.integers(1, 2), kernel=st.sampled_from([3, 5]), seed=st.integers(0, 1000))
def test_no_blind_spot_gradient_reaches_every_earlier_token(grid, batch, kernel, seed):
    """The stacks' output at pixel k (the skip sum the pointwise output head turns into
    the logits predicting token k) has a gradient from every earlier pixel's embedding,
    from none at or after k, and from the condition. (The gradient is taken before the
    head's ReLUs, which can all be inactive for one pixel at random initialisation.)"""
    h, w = grid
    prefix = 1
    prior = _prior(h, w, prefix, kernel, seed=seed)
    tokens = torch.randint(0, V, (batch, prefix + h * w - 1))
    captured = {}

    def keep_embedding(module, inputs, output):
        captured["emb"] = output

    def keep_skip(module, inputs):
        captured["skip"] = inputs[0]

    hooks = [prior.tok_emb.register_forward_hook(keep_embedding),
             prior.cond_emb.register_forward_hook(lambda m, i, o: captured.__setitem__("cond", o)),
             prior.out.register_forward_pre_hook(keep_skip)]
    try:
        prior(tokens)
        skip = captured["skip"].flatten(2)                      # B×C×(rows·W)
        for k in range(h * w):
            emb, cond = torch.autograd.grad(skip[:, :, k].sum(), [captured["emb"], captured["cond"]],
                                            retain_graph=True)
            reach = emb.abs().sum(dim=(0, 3)).flatten()
            assert (reach[:k] > 0).all(), f"pixel {k} misses an earlier pixel: {reach[:k].tolist()}"
            assert (reach[k:] == 0).all(), f"pixel {k} sees itself or a later pixel"
            assert cond.abs().sum() > 0, "the condition is unused"
    finally:
        for hook in hooks:
            hook.remove()


@settings(max_examples=10, deadline=None)
@given(grid=grids, batch=st.integers(1, 3), prefix=st.integers(1, 2), seed=st.integers(0, 1000))
def test_greedy_autoregressive_sampling_equals_a_greedy_loop_of_full_forwards(grid, batch, prefix, seed):
    h, w = grid
    prior = _prior(h, w, prefix, seed=seed)
    with torch.no_grad():  # sharper logits: a greedy path with clear margins
        prior.out[3].weight.mul_(20)
    cond = torch.randint(0, V, (batch, prefix))
    out = taming_core.create("sampler", "autoregressive", greedy=True).sample(
        prior, (h, w), batch_size=batch, condition=cond)
    seq = cond
    with torch.no_grad():
        for _ in range(h * w):
            seq = torch.cat([seq, prior(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.view(batch, -1), seq[:, prefix:])


def test_loss_is_the_next_token_cross_entropy_and_trains():
    prior = _prior(3, 3, 1)
    prior.train()
    tokens = torch.randint(0, V - 1, (4, 9))
    cond = torch.full((4, 1), V - 1)
    logits = prior(torch.cat([cond, tokens], 1)[:, :-1])
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
    assert torch.allclose(prior.loss(tokens, cond), want)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    first = float(prior.loss(tokens, cond).detach())
    for _ in range(30):
        opt.zero_grad()
        prior.loss(tokens, cond).backward()
        opt.step()
    assert float(prior.loss(tokens, cond).detach()) < first - 0.5


def test_one_line_errors():
    cases = [
        (lambda: GatedPixelCNN(V, 9, grid=[3, 3]), r"pixelcnn\(block_size\)"),
        (lambda: GatedPixelCNN(V, 10, grid=[3]), r"pixelcnn\(grid\)"),
        (lambda: GatedPixelCNN(V, 10, grid=[3, 3], kernel_size=4), r"pixelcnn\(kernel_size\)"),
        (lambda: GatedPixelCNN(V, 65, grid=[8, 8], n_layer=2, kernel_size=3), r"pixelcnn\(n_layer\)"),
        (lambda: _prior(3, 3, 2)(torch.zeros(1, 1, dtype=torch.long)), "condition tokens"),
        (lambda: taming_core.create("sampler", "autoregressive", greedy=True).sample(
            _prior(2, 2, 1), (3, 3), condition=torch.zeros(1, 1, dtype=torch.long)), "block size"),
        (lambda: taming_core.create("sampler", "maskgit").sample(_prior(2, 2, 1), (2, 2)),
         "use autoregressive"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValidationError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)

"""The ``maskgit`` prior and sampler: bidirectional logits, the masking schedule, committed
tokens, guidance, inpainting and the one-line errors."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import taming_core
from taming_core import MaskedPrior, ValidationError
from taming_plugins.priors.maskgit import MaskGIT
from taming_plugins.samplers.maskgit import SCHEDULES, mask_ratio, masked_counts

V = 20          # output vocabulary: 19 image ids + 1 SOS id
SOS = 19
GRID = (4, 5)
N = GRID[0] * GRID[1]


def _prior(seed: int = 0) -> MaskGIT:
    torch.manual_seed(seed)
    prior = MaskGIT(vocab_size=V, block_size=N + 1, n_layer=2, n_head=2, n_embd=32).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init: a meaningful ordering
        prior.head.weight.normal_(0, 1.0)
    return prior


class RecordingPrior(MaskedPrior):
    """A real MaskGIT that also records the token grids each sampling step sees."""

    def __init__(self, inner: MaskGIT) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[Tensor] = []

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    @property
    def mask_id(self) -> int:
        return self.inner.mask_id

    def forward(self, tokens: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        self.seen.append(tokens.clone())
        return self.inner(tokens, condition)

    def loss(self, tokens, condition=None, *, generator=None, inputs=None):
        return self.inner.loss(tokens, condition, generator=generator, inputs=inputs)


def _sos(b: int) -> Tensor:
    return torch.full((b, 1), SOS, dtype=torch.long)


# --------------------------------------------------------------------------- prior
def test_logits_depend_on_later_tokens_bidirectional():
    prior = _prior()
    tokens = torch.randint(0, SOS, (2, N))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % SOS
    with torch.no_grad():
        a, b = prior(tokens, _sos(2)), prior(changed, _sos(2))
    assert a.shape == (2, N, V)
    assert not torch.allclose(a[:, 0], b[:, 0]), "position 0 must see the last token"


def test_loss_masks_a_cosine_fraction_and_is_seeded():
    prior = _prior()
    tokens = torch.randint(0, SOS, (4, N))
    l1 = prior.loss(tokens, _sos(4), generator=torch.Generator().manual_seed(3))
    l2 = prior.loss(tokens, _sos(4), generator=torch.Generator().manual_seed(3))
    assert l1.dim() == 0 and torch.isfinite(l1) and torch.equal(l1, l2)
    l1.backward()
    assert prior.tok_emb.weight.grad[prior.mask_id].abs().sum() > 0, "the mask token is learned"


def test_block_size_is_checked():
    prior = _prior()
    with pytest.raises(ValidationError, match="block size"):
        prior(torch.zeros(1, N + 1, dtype=torch.long), _sos(1))


# --------------------------------------------------------------------------- schedule
@settings(max_examples=60, deadline=None)
@given(unknown=st.integers(0, 300), steps=st.integers(1, 20), schedule=st.sampled_from(SCHEDULES))
def test_masked_counts_follow_the_schedule(unknown, steps, schedule):
    counts = masked_counts(torch.tensor([unknown]), steps, schedule)[0].tolist()
    assert counts[-1] == 0
    prev = unknown
    for t, c in enumerate(counts[:-1]):
        want = min(int(unknown * mask_ratio(schedule, (t + 1) / steps)), max(prev - 1, 0))
        assert c == want
        prev = c


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sampling_unmasks_exactly_the_scheduled_counts_and_never_changes_committed(schedule):
    steps = 6
    rec = RecordingPrior(_prior())
    sampler = taming_core.create("sampler", "maskgit", steps=steps, schedule=schedule, vocab_limit=SOS)
    out = sampler.sample(rec, GRID, batch_size=3, condition=_sos(3),
                         generator=torch.Generator().manual_seed(0))
    states = rec.seen[1:] + [out.view(3, N)]  # the grid after each step
    assert len(rec.seen) == steps
    want = masked_counts(torch.full((3,), N), steps, schedule)
    for t, state in enumerate(states):
        masked = state == rec.mask_id
        assert masked.sum(dim=1).tolist() == want[:, t].tolist()
        if t:
            before = states[t - 1]
            committed = before != rec.mask_id
            assert torch.equal(state[committed], before[committed]), "a committed token changed"
    assert not (out == rec.mask_id).any()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 16), steps=st.integers(1, 8), temperature=st.floats(0.5, 3.0))
def test_mask_id_and_condition_ids_are_never_emitted(seed, steps, temperature):
    prior = _prior()
    sampler = taming_core.create("sampler", "maskgit", steps=steps, temperature=temperature,
                                 vocab_limit=SOS)
    out = sampler.sample(prior, GRID, batch_size=2, condition=_sos(2),
                         generator=torch.Generator().manual_seed(seed))
    assert out.shape == (2, *GRID) and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < SOS


def test_seeded_progress_and_greedy_top_k_one():
    prior = _prior()
    calls = []
    sampler = taming_core.create("sampler", "maskgit", steps=4, vocab_limit=SOS,
                                 progress=lambda d, n: calls.append((d, n)))
    a = sampler.sample(prior, GRID, batch_size=2, generator=torch.Generator().manual_seed(5))
    b = sampler.sample(prior, GRID, batch_size=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and calls[:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    greedy = taming_core.create("sampler", "maskgit", steps=4, greedy=True, choice_temperature=0.0,
                                vocab_limit=SOS)
    top1 = taming_core.create("sampler", "maskgit", steps=4, top_k=1, choice_temperature=0.0,
                              vocab_limit=SOS)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(greedy.sample(prior, GRID, batch_size=2, condition=_sos(2)),
                       top1.sample(prior, GRID, batch_size=2, condition=_sos(2), generator=g))


def test_guidance_scale_one_equals_no_guidance():
    prior = _prior()
    cond = torch.tensor([[SOS], [SOS]])
    null = torch.tensor([[SOS - 1]])
    plain = taming_core.create("sampler", "maskgit", steps=5, vocab_limit=SOS)
    one = taming_core.create("sampler", "maskgit", steps=5, vocab_limit=SOS, guidance_scale=1.0,
                             null_condition=null)
    zero = taming_core.create("sampler", "maskgit", steps=5, vocab_limit=SOS, guidance_scale=0.0,
                              null_condition=null)
    kw = dict(batch_size=2, condition=cond)
    a = plain.sample(prior, GRID, generator=torch.Generator().manual_seed(2), **kw)
    b = one.sample(prior, GRID, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b)
    # scale 0 samples from the unconditional branch alone
    c = zero.sample(prior, GRID, generator=torch.Generator().manual_seed(2), **kw)
    d = plain.sample(prior, GRID, batch_size=2, condition=null.expand(2, 1),
                     generator=torch.Generator().manual_seed(2))
    assert torch.equal(c, d)


def test_spatial_condition_is_a_prefix():
    prior = MaskGIT(vocab_size=V, block_size=2 * N, n_layer=1, n_head=2, n_embd=16).eval()
    cond = torch.randint(0, SOS, (2, *GRID))
    sampler = taming_core.create("sampler", "maskgit", steps=3, greedy=True, choice_temperature=0.0)
    a = sampler.sample(prior, GRID, batch_size=2, condition=cond)
    b = sampler.sample(prior, GRID, batch_size=2, condition=cond.view(2, -1))
    assert torch.equal(a, b)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), density=st.floats(0.0, 1.0), per_sample=st.booleans())
def test_inpainting_keeps_known_tokens_bit_exact(seed, density, per_sample):
    prior = _prior()
    g = torch.Generator().manual_seed(seed)
    init = torch.randint(0, SOS, (3, *GRID), generator=g)
    shape = (3, *GRID) if per_sample else GRID
    known = torch.rand(shape, generator=g) < density
    sampler = taming_core.create("sampler", "maskgit", steps=4, vocab_limit=SOS)
    out = sampler.inpaint(prior, init, known, condition=_sos(3), generator=g)
    keep = known.expand(3, *GRID)
    assert torch.equal(out[keep], init[keep])
    assert int(out.max()) < SOS


def test_outpainting_through_the_pipeline(tmp_path):
    pipe = taming_core.Pipeline.from_config({
        "tokenizer": {"name": "vqgan", "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
                      "attn_resolutions": [], "z_channels": 8, "resolution": 8, "embed_dim": 4,
                      "quantizer": {"name": "vq", "codebook_size": 16, "dim": 4}},
        "prior": {"name": "maskgit", "vocab_size": 17, "block_size": 17, "n_layer": 1, "n_head": 2,
                  "n_embd": 16},
        "sampler": {"name": "maskgit", "steps": 3},
        "conditioner": {"name": "sos"}, "grid": [4, 4]})
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[:, :2] = True  # keep the left half, outpaint the right
    edited, tokens = pipe.edit(images, known, seed=0, return_tokens=True)
    original = pipe.tokenize(images)
    assert edited.shape == images.shape
    assert torch.equal(tokens[:, :, :2], original[:, :, :2])
    again = pipe.generate(2, init_tokens=original, known=known, seed=0, return_tokens=True)[1]
    assert torch.equal(again, tokens)
    with pytest.raises(ValidationError, match="InpaintingSampler"):
        pipe.generate(2, init_tokens=original, known=known,
                      sampler=taming_core.create("sampler", "autoregressive"))


# --------------------------------------------------------------------------- errors
def test_one_line_errors():
    prior = _prior()
    gpt = taming_core.create("prior", "gpt", vocab_size=V, block_size=N + 1, n_layer=1, n_head=1, n_embd=8)
    sampler = taming_core.create("sampler", "maskgit", steps=3)
    cases = [
        (lambda: sampler.sample(gpt, GRID, condition=_sos(1)), "drives masked priors.*use autoregressive"),
        (lambda: taming_core.create("sampler", "autoregressive").sample(prior, GRID, condition=_sos(1)),
         "drives autoregressive priors.*use maskgit"),
        (lambda: taming_core.create("sampler", "maskgit", steps=0), r"maskgit\(steps\)"),
        (lambda: taming_core.create("sampler", "maskgit", schedule="exp"), r"maskgit\(schedule\)"),
        (lambda: sampler.sample(prior, (5, 5), condition=_sos(1)), "block size"),
        (lambda: sampler.inpaint(prior, torch.zeros(1, *GRID, dtype=torch.long),
                                 torch.ones(3, 3, dtype=torch.bool)), "matching the grid"),
        (lambda: sampler.sample(prior, GRID, init_tokens=torch.zeros(1, *GRID, dtype=torch.long)),
         "give both"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValidationError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)

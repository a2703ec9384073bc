"""The contract-check kit itself: correct components pass, each deliberately broken one
fails the matching check with one sentence naming the check and the component."""

from __future__ import annotations

import re
import time
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import taming_core
from taming_core.quantization import (UsageTracker, check_latent, code_counts, finalize_metrics,
                                      from_rows, straight_through, to_rows)
from taming_core.sampling import require_family
from taming_core.testing import (ReferenceAutoregressivePrior, ReferenceMaskedPrior, check_conditioner,
                                 check_prior, check_quantizer, check_sampler, check_tokenizer)


def _fails(check: str, component: str):
    """pytest.raises for the kit's one-sentence failure of ``check`` on ``component``."""
    return pytest.raises(AssertionError, match=rf"^check_\w+\[{re.escape(check)}\] {re.escape(component)}: ")


# --------------------------------------------------------------------------- quantizers
class GoodQuantizer(taming_core.Quantizer):
    """Nearest code of a learned codebook: the minimal contract-correct quantizer."""

    def __init__(self, codebook_size: int = 8, dim: int = 4) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.tracker = UsageTracker(codebook_size)

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def lookup(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_latent(z, "good(z)", self.codebook.shape[1])
        idx = torch.cdist(to_rows(z).detach(), self.codebook.detach()).argmin(dim=1)
        return idx, from_rows(self.codebook[idx], z.shape[0], z.shape[2], z.shape[3])

    def forward(self, z: torch.Tensor) -> taming_core.QuantizerOutput:
        idx, z_q = self.lookup(z)
        loss = ((z_q - z.detach()) ** 2).mean()
        metrics = finalize_metrics(code_counts(idx, self.codebook_size), self.tracker, self.training)
        return taming_core.QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[0], *z.shape[2:]),
                                           loss, metrics)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook[indices].permute(0, 3, 1, 2)


class NoStraightThrough(GoodQuantizer):
    def forward(self, z):
        out = super().forward(z)
        out.z_q = out.z_q.detach()  # the codes, with no gradient path back to z
        return out


class Int32Ids(GoodQuantizer):
    def forward(self, z):
        out = super().forward(z)
        out.indices = out.indices.int()
        return out


class NoMetrics(GoodQuantizer):
    def forward(self, z):
        out = super().forward(z)
        out.metrics = {}
        return out


class EvalUpdatesCodebook(GoodQuantizer):
    def forward(self, z):
        with torch.no_grad():
            self.codebook.mul_(0.99)  # in every mode: eval passes must not change the state
        return super().forward(z)


class DecodeDisagrees(GoodQuantizer):
    def decode_indices(self, indices):
        return super().decode_indices(indices) * 2


class NondeterministicInit(GoodQuantizer):
    def __init__(self, codebook_size: int = 8, dim: int = 4) -> None:
        super().__init__(codebook_size, dim)
        g = torch.Generator().manual_seed(time.perf_counter_ns())  # ignores the global seed
        with torch.no_grad():
            self.codebook.copy_(torch.randn(codebook_size, dim, generator=g))


class UnsavedCodebook(GoodQuantizer):
    """Keeps its codes in a plain attribute: not in the state dict, so they do not travel."""

    def __init__(self, codebook_size: int = 8, dim: int = 4) -> None:
        super().__init__(codebook_size, dim)
        codes = self.codebook.detach().clone()
        del self.codebook
        self.codebook = codes


def test_good_quantizer_passes_every_check() -> None:
    assert check_quantizer(GoodQuantizer, channels=4) == [
        "declared_members", "forward_output", "metrics", "straight_through", "eval_keeps_state",
        "decode_indices", "deterministic", "state_dict_round_trip"]


@pytest.mark.parametrize("cls,check", [
    (NoStraightThrough, "straight_through"), (Int32Ids, "forward_output"), (NoMetrics, "metrics"),
    (EvalUpdatesCodebook, "eval_keeps_state"), (DecodeDisagrees, "decode_indices"),
    (NondeterministicInit, "deterministic"), (UnsavedCodebook, "state_dict_round_trip")])
def test_broken_quantizer_fails_the_matching_check(cls, check) -> None:
    with _fails(check, cls.__name__) as info:
        check_quantizer(cls, channels=4)
    assert "\n" not in str(info.value)


def test_quantizer_channels_are_required_without_in_channels() -> None:
    with _fails("declared_members", "GoodQuantizer") as info:
        check_quantizer(GoodQuantizer)
    assert "channels=" in str(info.value)


def test_factory_must_build_the_right_kind() -> None:
    with pytest.raises(AssertionError, match=r"check_quantizer\[construct\].*taming_core.Quantizer"):
        check_quantizer(lambda: nn.Linear(2, 2), channels=4)


# --------------------------------------------------------------------------- tokenizers
class GoodTokenizer(taming_core.Tokenizer):
    """A 2× strided conv encoder, GoodQuantizer codes, a transposed-conv decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 2, stride=2)
        self.quantizer = GoodQuantizer(8, 4)
        self.dec = nn.ConvTranspose2d(4, 3, 2, stride=2)

    @property
    def downsample_factor(self) -> int:
        return 2

    @property
    def vocab_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def last_layer(self) -> Optional[torch.Tensor]:
        return self.dec.weight

    def encode(self, images):
        out = self.quantizer(self.enc(images))
        return taming_core.Encoded(out.indices, out.z_q, out.loss, out.metrics)

    def decode_latent(self, latent):
        return self.dec(latent)

    def decode_indices_to_latent(self, indices):
        return self.quantizer.decode_indices(indices)


class DecodeOffset(GoodTokenizer):
    def decode(self, indices):
        return super().decode(indices) + 0.5


class DetachedLatent(GoodTokenizer):
    def encode(self, images):
        enc = super().encode(images)
        enc.latent = enc.latent.detach()
        return enc


class UnusedLastLayer(GoodTokenizer):
    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Parameter(torch.ones(3, 3))

    @property
    def last_layer(self):
        return self.spare


def test_good_tokenizer_passes_and_broken_ones_fail() -> None:
    assert "decode" in check_tokenizer(GoodTokenizer)
    with _fails("decode", "DecodeOffset"):
        check_tokenizer(DecodeOffset)
    with _fails("reconstruct_gradient", "DetachedLatent") as info:
        check_tokenizer(DetachedLatent)
    assert "straight-through" in str(info.value)
    with _fails("reconstruct_gradient", "UnusedLastLayer") as info:
        check_tokenizer(UnusedLastLayer)
    assert "last_layer" in str(info.value)


# --------------------------------------------------------------------------- priors
class CacheDisagrees(ReferenceAutoregressivePrior):
    def forward_cached(self, tokens, cache):
        return super().forward_cached(tokens, cache) + 0.1


class PeeksAhead(ReferenceAutoregressivePrior):
    def forward(self, tokens):  # every position sees the whole sequence: not causal
        e = self.embed(tokens).mean(dim=1, keepdim=True).expand(-1, tokens.shape[1], -1)
        return self.head(e + self.pos.weight[:tokens.shape[1]])


class DetachedLoss(ReferenceAutoregressivePrior):
    def loss(self, tokens, condition=None, *, generator=None, inputs=None):
        return super().loss(tokens, condition, generator=generator, inputs=inputs).detach()


class NanLoss(ReferenceAutoregressivePrior):
    def loss(self, tokens, condition=None, *, generator=None, inputs=None):
        return super().loss(tokens, condition, generator=generator, inputs=inputs) * float("nan")


class ForgetsBiases(ReferenceAutoregressivePrior):
    def parameter_groups(self, weight_decay):
        return [{"params": [p for p in self.parameters() if p.dim() >= 2], "weight_decay": weight_decay}]


class InputsAsTargets(ReferenceAutoregressivePrior):
    def loss(self, tokens, condition=None, *, generator=None, inputs=None):
        # wrong: the corrupted inputs become the targets too
        target = tokens if inputs is None else (inputs + 1) % self.vocab_size
        return super().loss(target, condition, generator=generator)


class WrongFamily(ReferenceAutoregressivePrior):
    family = "masked"


class UnknownSampler(ReferenceAutoregressivePrior):
    default_sampler = "no_such_sampler"


class SeesOnlyItself(ReferenceMaskedPrior):
    def forward(self, tokens, condition=None):  # no context: not bidirectional
        return self.head(self.embed(tokens) + self.pos.weight[:tokens.shape[1]])


@pytest.mark.parametrize("cls,check", [
    (CacheDisagrees, "cache_equals_forward"), (PeeksAhead, "causal"), (DetachedLoss, "loss"),
    (NanLoss, "loss"), (ForgetsBiases, "parameter_groups"), (InputsAsTargets, "inputs"), (WrongFamily, "declared_members"),
    (UnknownSampler, "declared_members")])
def test_broken_autoregressive_prior_fails_the_matching_check(cls, check) -> None:
    with _fails(check, cls.__name__):
        check_prior(cls)


@pytest.fixture
def masked_sampler():
    """A one-shot parallel sampler, so a masked prior's default_sampler is registered."""

    class OneShot(taming_core.Sampler):
        family = "masked"

        def sample(self, prior, grid=(16, 16), *, batch_size=1, condition=None, generator=None):
            require_family(prior, self.family, "one_shot.sample(prior)")
            n = grid[0] * grid[1]
            masked = torch.full((batch_size, n), prior.mask_id, dtype=torch.long)
            cond = None if condition is None else condition.reshape(condition.shape[0], -1).expand(batch_size, -1)
            was_training = prior.training
            prior.eval()
            with torch.no_grad():
                probs = torch.softmax(prior(masked, cond), dim=-1)
            prior.train(was_training)
            ids = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            return ids.view(batch_size, *grid)

    taming_core.register("sampler", "zz_one_shot")(OneShot)
    yield OneShot
    taming_core.unregister("sampler", "zz_one_shot")


class OneShotMasked(ReferenceMaskedPrior):
    default_sampler = "zz_one_shot"


class OneShotSeesOnlyItself(SeesOnlyItself):
    default_sampler = "zz_one_shot"


class MaskIsAnOutput(OneShotMasked):
    """Declares an output id as the mask and still gives it a finite logit."""

    @property
    def mask_id(self) -> int:
        return 0


def test_masked_prior_checks(masked_sampler) -> None:
    passed = check_prior(OneShotMasked)
    assert {"mask_id", "forward_logits", "bidirectional"} <= set(passed)
    assert "cache_equals_forward" not in passed
    with _fails("bidirectional", "OneShotSeesOnlyItself"):
        check_prior(OneShotSeesOnlyItself)
    with _fails("forward_logits", "MaskIsAnOutput") as info:
        check_prior(MaskIsAnOutput)
    assert "never an output" in str(info.value)
    assert "deterministic" in check_sampler(masked_sampler)


def test_masked_reference_prior_needs_its_default_sampler_registered() -> None:
    if "maskgit" in taming_core.available("sampler"):  # the masked family's built-in sampler
        assert "bidirectional" in check_prior(ReferenceMaskedPrior)
        return
    with _fails("declared_members", "ReferenceMaskedPrior") as info:
        check_prior(ReferenceMaskedPrior)
    assert "'maskgit' is not registered" in str(info.value)


# --------------------------------------------------------------------------- samplers
class GreedySampler(taming_core.Sampler):
    """Argmax of the full forward, token by token (no cache): contract-correct, slow."""

    def __init__(self, noise: bool = False, shift: int = 0, keep_eval: bool = False,
                 any_family: bool = False) -> None:
        self.noise, self.shift, self.keep_eval, self.any_family = noise, shift, keep_eval, any_family

    def sample(self, prior, grid=(16, 16), *, batch_size=1, condition=None, generator=None):
        if not self.any_family:
            require_family(prior, self.family, "greedy.sample(prior)")
        prefix = condition.reshape(condition.shape[0], -1)  # a B×h×w grid becomes a prefix
        seq = prefix.expand(batch_size, -1).clone()
        was_training = prior.training
        prior.eval()
        with torch.no_grad():
            for _ in range(grid[0] * grid[1]):
                logits = prior(seq)[:, -1]
                if self.noise:  # the global RNG, not the generator argument
                    logits = logits + 10 * torch.rand(logits.shape)
                seq = torch.cat([seq, logits.argmax(dim=-1, keepdim=True)], dim=1)
        if not self.keep_eval:
            prior.train(was_training)
        return seq[:, prefix.shape[1]:].view(batch_size, *grid) + self.shift


class PrefixOnlySampler(GreedySampler):
    """Ignores the contract's spatially aligned B×h×w conditions."""

    def sample(self, prior, grid=(16, 16), *, batch_size=1, condition=None, generator=None):
        if condition.dim() != 2:
            raise ValueError(f"expected a B×L prefix, got shape {tuple(condition.shape)}")
        return super().sample(prior, grid, batch_size=batch_size, condition=condition, generator=generator)


def test_sampler_checks() -> None:
    with _fails("spatial_condition", "PrefixOnlySampler"):
        check_sampler(PrefixOnlySampler)
    assert check_sampler(GreedySampler) == ["declared_members", "sample", "deterministic",
                                            "condition_batch_one", "spatial_condition", "state_untouched",
                                            "wrong_family"]
    with _fails("wrong_family", "GreedySampler") as info:
        check_sampler(lambda: GreedySampler(any_family=True))
    assert "require_family" in str(info.value)
    with _fails("deterministic", "GreedySampler"):
        check_sampler(lambda: GreedySampler(noise=True))
    with _fails("sample", "GreedySampler") as info:
        check_sampler(lambda: GreedySampler(shift=17))
    assert "[0, 17)" in str(info.value)
    with _fails("sample", "GreedySampler") as info:
        check_sampler(lambda: GreedySampler(keep_eval=True))
    assert "training mode" in str(info.value)


# --------------------------------------------------------------------------- conditioners
class Labels(taming_core.Conditioner):
    def __init__(self, num: int = 4, null: bool = True, spatial_claim: bool = False, offset: int = 0) -> None:
        super().__init__()
        self.num, self.null, self.offset = num, null, offset
        self.spatial = spatial_claim

    @property
    def vocab_size(self) -> int:
        return self.num + (1 if self.null else 0)

    @property
    def null_id(self):
        return self.num if self.null else None

    def forward(self, condition):
        return torch.as_tensor(condition, dtype=torch.long)[:, None] + self.offset


class BatchOnly(Labels):
    takes_condition = False  # claims it, but forward(int) fails


def test_conditioner_checks() -> None:
    labels = torch.tensor([0, 3, 1])
    assert "null_condition" in check_conditioner(Labels, labels)
    assert "null_condition" in check_conditioner(lambda: Labels(null=False), labels)
    with _fails("forward", "Labels") as info:
        check_conditioner(lambda: Labels(offset=2), labels)
    assert "[0, 5)" in str(info.value)
    with _fails("forward", "Labels") as info:
        check_conditioner(lambda: Labels(spatial_claim=True), labels)
    assert "B×h×w" in str(info.value)
    with _fails("takes_condition", "BatchOnly"):
        check_conditioner(BatchOnly, labels)


# --------------------------------------------------------------------------- properties
@settings(max_examples=15, deadline=None)
@given(vocab=st.integers(2, 40), block=st.integers(3, 24), batch=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_reference_prior_meets_the_autoregressive_contract(vocab, block, batch, seed) -> None:
    passed = check_prior(lambda: ReferenceAutoregressivePrior(vocab, block), batch=batch, seed=seed)
    assert "cache_equals_forward" in passed and "causal" in passed


@settings(max_examples=15, deadline=None)
@given(offset=st.floats(1e-2, 1e3), seed=st.integers(0, 2 ** 16))
def test_any_cache_disagreement_above_tolerance_is_caught(offset, seed) -> None:
    class Off(ReferenceAutoregressivePrior):
        def forward_cached(self, tokens, cache):
            return super().forward_cached(tokens, cache) + offset

    with _fails("cache_equals_forward", "Off"):
        check_prior(Off, seed=seed)


@settings(max_examples=10, deadline=None)
@given(size=st.integers(1, 5), batch=st.integers(1, 3), codes=st.integers(1, 12), seed=st.integers(0, 999))
def test_good_quantizer_passes_at_any_size(size, batch, codes, seed) -> None:
    check_quantizer(lambda: GoodQuantizer(codes, 3), channels=3, size=size, batch=batch, seed=seed)

"""Issue 12, "tracebacks where one line is due" and "messages that do not help": bad
input raises one readable TamingError line, not an IndexError or a deep RuntimeError."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taming_core
from taming_core import CheckpointError, ConfigError, ValidationError
from taming_core.io import torch_load_safe

from _reliability import CODES

VOCAB = CODES + 1


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return taming_core.create("prior", "gpt", vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2,
                              n_embd=16).eval()


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- prior ids
@pytest.mark.parametrize("bad", [-1, VOCAB, VOCAB + 100])
def test_prior_ids_outside_the_vocabulary(prior, bad):
    ids = torch.tensor([[1, bad, 2]])
    with pytest.raises(ValidationError, match=r"gpt\.forward\(tokens\): token ids must lie in \[0, 16\]"):
        prior(ids)
    with pytest.raises(ValidationError, match=r"token ids must lie in \[0, 16\]"):
        prior.loss(ids)
    cache = prior.new_cache(1, 8)
    with pytest.raises(ValidationError, match=r"gpt\.forward_cached\(tokens\): token ids"):
        prior.forward_cached(ids, cache)


def test_prior_loss_with_a_bad_target_only(prior):
    """The last token is only a target (never embedded): the loss still says why."""
    with pytest.raises(ValidationError, match=r"GPT\.loss\(tokens\): token ids must lie in \[0, 16\] .*"
                       r"got min 1, max 17"):
        prior.loss(torch.tensor([[1, 2, VOCAB]]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-5, VOCAB + 5), min_size=1, max_size=6))
def test_prior_accepts_exactly_the_vocabulary(prior, ids):
    """Property: forward succeeds iff every id is in [0, V); otherwise a ValidationError."""
    tokens = torch.tensor([ids])
    if all(0 <= i < VOCAB for i in ids):
        assert prior(tokens).shape == (1, len(ids), VOCAB)
    else:
        with pytest.raises(ValidationError):
            prior(tokens)


# --------------------------------------------------------------------------- samplers
def test_sos_token_outside_the_vocabulary(prior):
    for name in ("autoregressive", "sliding_window"):
        sampler = taming_core.create("sampler", name, sos_token=VOCAB)
        with pytest.raises(ValidationError, match="sos_token 17 is not an id of the prior's vocabulary"):
            sampler.sample(prior, (2, 2))


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["autoregressive", "sliding_window"])
def test_guidance_scale_must_be_finite(name, scale):
    with pytest.raises(ValidationError, match=r"guidance_scale\): expected a finite number"):
        taming_core.create("sampler", name, guidance_scale=scale,
                           null_condition=torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.parametrize("t", [1e-300, 1e-30, 1e-7, float("inf"), float("nan"), 0.0, -1.0])
def test_temperatures_that_would_overflow_are_refused_at_construction(t):
    with pytest.raises(ValidationError, match="temperature: expected a finite number >= 1e-06"):
        taming_core.create("sampler", "autoregressive", temperature=t)


@settings(max_examples=60, deadline=None)
@given(t=st.floats(1e-6, 1e6), scale=st.floats(0, 1e4),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_accepted_temperatures_give_finite_probabilities(t, scale, dtype):
    """Property: any temperature the options accept keeps the scaled logits finite (for
    logits up to 1e4, in fp32, fp16 or bf16), so sampling never meets NaN."""
    from taming_plugins.samplers._filtering import SamplingOptions

    opts = SamplingOptions(temperature=t)
    logits = (torch.linspace(-1, 1, 11) * scale).to(dtype)[None]
    probs = torch.softmax(opts.filter(logits).float(), dim=-1)
    assert torch.isfinite(probs).all() and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-4)
    assert opts.choose(logits, torch.Generator().manual_seed(0)).shape == (1,)


# --------------------------------------------------------------------------- create and options
def test_create_gives_the_same_config_error_as_build():
    with pytest.raises(ConfigError) as built:
        taming_core.build({"quantizer": {"name": "vq", "codebook_sise": 8, "dim": 4}})
    with pytest.raises(ConfigError) as created:
        taming_core.create("quantizer", "vq", codebook_sise=8, dim=4)
    assert str(created.value) == str(built.value)
    assert str(created.value).startswith("quantizer.codebook_sise: unknown argument; VectorQuantizer accepts")
    with pytest.raises(ConfigError) as built:
        taming_core.build({"quantizer": {"name": "vq", "dim": 4}})
    with pytest.raises(ConfigError) as created:
        taming_core.create("quantizer", "vq", dim=4)
    assert str(created.value) == str(built.value) == "quantizer: missing required argument 'codebook_size'"


@pytest.mark.parametrize("name,kwargs,match", [
    ("fsq", {"levels": [1]}, r"fsq\(levels\): expected a non-empty list of integers >= 2"),
    ("fsq", {"levels": []}, r"fsq\(levels\)"),
    ("fsq", {"levels": [8, 2.5]}, r"fsq\(levels\)"),
    ("ema", {"codebook_size": 8, "dim": 4, "decay": 1.5}, r"ema\(decay\): expected a number in \[0, 1\)"),
    ("ema", {"codebook_size": 8, "dim": 4, "decay": 1.0}, r"ema\(decay\)"),
    ("ema", {"codebook_size": 8, "dim": 4, "decay": float("nan")}, r"ema\(decay\)"),
    ("ema", {"codebook_size": 8, "dim": 4, "decay": "0.9"}, r"ema\(decay\)"),
    ("lfq", {"codebook_size": 12}, r"lfq\(codebook_size\): expected a power of two"),
])
def test_invalid_quantizer_options_raise_validation_error(name, kwargs, match):
    with pytest.raises(ValidationError, match=match) as err:
        taming_core.create("quantizer", name, **kwargs)
    _one_line(err.value)


# --------------------------------------------------------------------------- files
def test_non_utf8_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("quantizer: {name: vq}  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"cfg\.yaml: not UTF-8 text \(byte \d+: invalid"):
        taming_core.load_config(path)
    with pytest.raises(ConfigError, match="not UTF-8"):
        taming_core.build(path)


class Pickled:
    """A class torch.load(weights_only=True) refuses."""


def test_refused_pickle_names_the_object_and_how_to_convert(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Pickled()}, path)
    with pytest.raises(CheckpointError) as err:
        torch_load_safe(path, "a taming-transformers checkpoint (.ckpt)")
    msg = _one_line(err.value)
    assert "refused to load the pickled Python object" in msg
    assert "Pickled" in msg and "expected a taming-transformers checkpoint (.ckpt)" in msg
    assert "convert it once" in msg and "model.tensors.ckpt" in msg
    # the conversion the message gives works, and the result then loads
    command = msg.split("with: python -c ", 1)[1].strip().strip('"')
    exec(command, {"__name__": "convert"})  # noqa: S102 - the test's own trusted file
    state = torch_load_safe(tmp_path / "model.tensors.ckpt")
    assert set(state) == {"w"}


def test_every_prior_family_reports_ids_outside_its_vocabulary():
    """maskgit (its input vocabulary has the mask id V) and pixelcnn, as GPT above."""
    maskgit = taming_core.create("prior", "maskgit", vocab_size=VOCAB, block_size=8, n_layer=1,
                                 n_head=2, n_embd=16)
    with pytest.raises(ValidationError, match=r"maskgit\.forward\(tokens\): token ids must lie in \[0, 17\]"):
        maskgit(torch.tensor([[1, VOCAB + 1, 2]]))
    with pytest.raises(ValidationError, match=r"maskgit\.loss\(tokens\): token ids must lie in \[0, 16\]"):
        maskgit.loss(torch.full((1, 4), VOCAB))  # the mask id is an input, never a target
    pixelcnn = taming_core.create("prior", "pixelcnn", vocab_size=VOCAB, block_size=5, grid=[2, 2],
                                  n_layer=1, channels=8, kernel_size=3)
    with pytest.raises(ValidationError, match=r"pixelcnn\(tokens\): token ids must lie in \[0, 16\]"):
        pixelcnn(torch.tensor([[16, 1, VOCAB, 2, 3]]))
    with pytest.raises(ValidationError, match=r"token ids must lie in \[0, 16\]"):
        pixelcnn.loss(torch.tensor([[1, 2, 3, VOCAB]]), torch.tensor([[16]]))
    with pytest.raises(ValidationError, match=r"pixelcnn\(tokens\): token ids"):
        pixelcnn.forward_cached(torch.tensor([[16, 1, VOCAB]]), pixelcnn.new_cache(1, 5))


@pytest.mark.parametrize("kwargs,match", [
    ({"guidance_scale": float("nan"), "null_condition": torch.zeros(1, 1, dtype=torch.long)},
     "guidance_scale"),
    ({"temperature": 1e-300}, "temperature"),
    ({"choice_temperature": float("nan")}, "choice_temperature"),
    ({"choice_temperature": float("inf")}, "choice_temperature"),
])
def test_maskgit_sampler_settings_are_validated_at_construction(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        taming_core.create("sampler", "maskgit", **kwargs)

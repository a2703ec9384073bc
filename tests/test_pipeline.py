"""taming_core.Pipeline: composition from configs, save/load, generate, reconstruct."""

from __future__ import annotations

import pytest
import torch

import taming_core
from taming_core import CheckpointError, ConfigError, Pipeline, ValidationError

TOKENIZER = {"name": "vqgan", "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
             "attn_resolutions": [], "z_channels": 8, "resolution": 16, "embed_dim": 4,
             "quantizer": {"name": "vq", "codebook_size": 32, "dim": 4}}
CONFIG = {
    "tokenizer": TOKENIZER,
    "prior": {"name": "gpt", "vocab_size": 33, "block_size": 17, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "sampler": {"name": "autoregressive", "top_k": 8},
    "conditioner": {"name": "sos"},
    "grid": [4, 4],
}


@pytest.fixture
def pipe():
    return Pipeline.from_config(CONFIG)


def test_from_config_builds_registered_parts(pipe):
    assert pipe.tokenizer.downsample_factor == 2 and pipe.tokenizer.vocab_size == 32
    assert pipe.cond_offset == 32  # sos lands on id n_embed, as in the original
    cond = pipe.condition_tokens(None, 3)
    assert cond.shape == (3, 1) and bool((cond == 32).all())


def test_generate_is_seeded_and_decodes(pipe):
    a, tokens = pipe.generate(2, seed=3, return_tokens=True)
    b = pipe.generate(2, seed=3)
    c = pipe.generate(2, seed=4)
    assert a.shape == (2, 3, 8, 8) and tokens.shape == (2, 4, 4)
    assert float(a.abs().max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(tokens.max()) < 32


def test_save_load_roundtrip(pipe, tmp_path):
    pipe.save(tmp_path / "p")
    loaded = Pipeline.load(tmp_path / "p")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(pipe.eval().tokenize(x), loaded.tokenize(x))
    assert torch.equal(pipe.generate(2, seed=1), loaded.generate(2, seed=1))
    cfg = loaded.get_config()
    assert cfg["prior"]["name"] == "gpt" and cfg["grid"] == [4, 4]


def test_pipeline_from_objects_matches_config(tmp_path):
    tok = taming_core.build({"tokenizer": TOKENIZER})["tokenizer"]
    prior = taming_core.create("prior", "gpt", vocab_size=33, block_size=17, n_layer=1, n_head=2, n_embd=16)
    pipe = Pipeline(tok, prior, taming_core.create("sampler", "autoregressive", greedy=True, vocab_limit=32),
                    taming_core.create("conditioner", "sos"), grid=(4, 4))
    imgs = pipe.generate(1, seed=0)
    assert imgs.shape == (1, 3, 8, 8)
    pipe.save(tmp_path / "q")
    again = Pipeline.load(tmp_path / "q")
    assert torch.equal(again.generate(1, seed=0), imgs)


def test_reconstruct_and_detokenize(pipe):
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    xrec, enc = pipe.reconstruct(x)
    assert xrec.shape == x.shape and enc.indices.shape == (2, 4, 4)
    assert pipe.detokenize(enc.indices).shape == x.shape


def test_errors(pipe, tmp_path):
    with pytest.raises(ConfigError, match="^tokenizer: missing"):
        Pipeline.from_config({"prior": CONFIG["prior"]})
    with pytest.raises(ConfigError, match="^samplr: unknown pipeline key"):
        Pipeline.from_config({**CONFIG, "samplr": {}})
    with pytest.raises(ConfigError, match=r"^tokenizer\.quantizer\.name: unknown quantizer 'vqq'"):
        Pipeline.from_config({**CONFIG, "tokenizer": {**TOKENIZER, "quantizer": {"name": "vqq"}}})
    with pytest.raises(ValidationError, match="no grid given"):
        Pipeline.from_config({k: v for k, v in CONFIG.items() if k != "grid"}).generate(1)
    with pytest.raises(CheckpointError, match="not a saved pipeline"):
        Pipeline.load(tmp_path)
    pipe.save(tmp_path / "p")
    other = Pipeline.from_config({**CONFIG, "prior": {**CONFIG["prior"], "n_embd": 32}})
    other.save(tmp_path / "o")
    (tmp_path / "p" / "pipeline.safetensors").write_bytes((tmp_path / "o" / "pipeline.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match"):
        Pipeline.load(tmp_path / "p")
    with pytest.raises(CheckpointError, match="weights do not match pipeline.json"):
        Pipeline.load(tmp_path / "p", verify=False)


def test_guided_sampler_survives_save_load(tmp_path):
    """A sampler with classifier-free guidance holds its null condition as a tensor; the
    pipeline stores it as a list and the reloaded pipeline samples the same tokens."""
    cfg = dict(CONFIG, conditioner={"name": "class_label", "num_classes": 3, "null_token": True},
               prior=dict(CONFIG["prior"], vocab_size=36))
    pipe = Pipeline.from_config(cfg)
    null = torch.tensor([[pipe.cond_offset + 3]])  # the null class, in prior ids
    pipe.sampler = taming_core.create("sampler", "autoregressive", top_k=8, guidance_scale=3.0,
                                      null_condition=null, vocab_limit=32)
    labels = torch.tensor([0, 2])
    _, want = pipe.generate(2, condition=labels, seed=5, return_tokens=True)
    pipe.save(tmp_path / "p")
    back = Pipeline.load(tmp_path / "p")
    assert back.sampler.guidance_scale == 3.0 and torch.equal(back.sampler.null_condition, null)
    _, got = back.generate(2, condition=labels, seed=5, return_tokens=True)
    assert torch.equal(got, want)
    # Guidance really acts: the unguided sampler draws other tokens from the same seed.
    pipe.sampler = taming_core.create("sampler", "autoregressive", top_k=8, vocab_limit=32)
    _, plain = pipe.generate(2, condition=labels, seed=5, return_tokens=True)
    assert not torch.equal(plain, want)


def test_null_condition_must_be_integer_lists():
    with pytest.raises(ValidationError, match="null_condition"):
        taming_core.create("sampler", "autoregressive", guidance_scale=2.0, null_condition=[[0.5]])

"""LlamaGen: parity with the reference fixtures (made by LlamaGen's own code), loading of
other shapes, strict key accounting, refusals, and the prior's contracts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taming_core
from taming_core.errors import CheckpointError, ConfigError, ValidationError
from taming_plugins.compat import LlamaGenCheckpoint, load_taming_checkpoint
from taming_plugins.compat.llamagen import from_vqgan_state, to_vqgan_state
from taming_plugins.priors.llamagen import PRESETS, LlamaGenPrior, ffn_hidden_size

REF = Path(__file__).parent / "fixtures" / "llamagen_reference"
VQ_FILE, GPT_FILE = REF / "llamagen_vq_tiny.pt", REF / "llamagen_c2i_tiny.pt"
TOL = 1e-4


def _io(name: str) -> dict:
    return torch.load(REF / f"{name}.io.pt", weights_only=True)


@pytest.fixture(scope="module")
def vq() -> LlamaGenCheckpoint:
    return load_taming_checkpoint(VQ_FILE)


@pytest.fixture(scope="module")
def gpt() -> LlamaGenCheckpoint:
    return load_taming_checkpoint(GPT_FILE, REF / "llamagen_c2i_tiny.json")


# --------------------------------------------------------------------------- parity
def test_tokenizer_parity(vq):
    io = _io("llamagen_vq_tiny")
    tok = vq.tokenizer
    assert vq.kind == "VQModel" and vq.ignored_keys == ["quantize.codebook_used"]
    assert vq.config["ch"] == 32 and vq.config["codebook_size"] == 64
    with torch.no_grad():
        enc = tok.encode(io["x"])
        assert torch.equal(enc.indices, io["indices"])
        torch.testing.assert_close(enc.latent, io["quant"], atol=TOL, rtol=0)
        torch.testing.assert_close(tok.decode_latent(io["quant"]), io["xrec"], atol=TOL, rtol=0)
        torch.testing.assert_close(tok.decode(io["indices"]), io["xrec_from_indices"], atol=TOL, rtol=0)


def test_prior_logits_parity(gpt):
    io = _io("llamagen_c2i_tiny")
    prior = gpt.prior
    seq = torch.cat([prior.class_tokens(io["cond"]), io["idx"]], dim=1)
    with torch.no_grad():
        logits = prior(seq)
    assert logits.shape == (3, 17, prior.vocab_size) and prior.vocab_size == 64 + 11
    torch.testing.assert_close(logits[..., :64], io["logits"], atol=TOL, rtol=0)
    assert (logits[..., 64:] == torch.finfo(logits.dtype).min).all()


@pytest.mark.parametrize("scale,key", [(1.0, "greedy"), (4.0, "greedy_cfg4")])
def test_greedy_samples_parity(gpt, scale, key):
    io = _io("llamagen_c2i_tiny")
    prior = gpt.prior
    extra = {} if scale == 1.0 else {"guidance_scale": scale,
                                      "null_condition": torch.tensor([[prior.null_token]])}
    sampler = taming_core.create("sampler", "autoregressive", greedy=True, vocab_limit=64, **extra)
    out = sampler.sample(prior, (4, 4), batch_size=3, condition=prior.class_tokens(io["cond"]))
    assert torch.equal(out.reshape(3, 16), io[key])


def test_pipeline_with_class_label_conditioner(vq, gpt):
    """Tokenizer + prior + the class_label conditioner: our generic pieces give LlamaGen's
    greedy samples and decode them."""
    io = _io("llamagen_c2i_tiny")
    cond = taming_core.create("conditioner", "class_label", num_classes=10)
    sampler = taming_core.create("sampler", "autoregressive", greedy=True, guidance_scale=4.0,
                                 null_condition=torch.tensor([[64 + cond.null_id]]), vocab_limit=64)
    pipe = taming_core.Pipeline(vq.tokenizer, gpt.prior, sampler, cond, grid=(4, 4))
    images, tokens = pipe.generate(3, condition=io["cond"], return_tokens=True)
    assert torch.equal(tokens.reshape(3, 16), io["greedy_cfg4"])
    assert images.shape == (3, 3, 8, 8)


# --------------------------------------------------------------------------- other shapes
def _save(path: Path, state: dict, **extra) -> Path:
    torch.save({"model": state, **extra}, path)
    return path


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_head=st.sampled_from([2, 4]), kv_div=st.sampled_from([1, 2]), n_layer=st.integers(1, 2),
       grid=st.integers(2, 3), classes=st.integers(1, 5), vocab=st.integers(5, 40))
def test_prior_roundtrip_other_shapes(tmp_path, n_head, kv_div, n_layer, grid, classes, vocab):
    """A LlamaGen-layout training checkpoint (optimizer, steps, Namespace args) with grouped
    k/v heads loads with only the head count given, and computes the same logits."""
    src = LlamaGenPrior(vocab, classes, grid, n_layer=n_layer, n_head=n_head, dim=32,
                        n_kv_head=n_head // kv_div, multiple_of=16)
    torch.nn.init.normal_(src.output.weight)
    opt = torch.optim.AdamW(src.parameters())
    path = _save(tmp_path / f"c2i_{n_head}_{kv_div}_{n_layer}_{grid}.pt", src.state_dict(),
                 optimizer=opt.state_dict(), steps=7, args=argparse.Namespace(gpt_model="custom"))
    ckpt = load_taming_checkpoint(path, {"n_head": n_head, "block_size": grid * grid})
    assert ckpt.config["n_kv_head"] == n_head // kv_div and ckpt.extra["steps"] == 7
    assert "optimizer" not in ckpt.extra
    tokens = torch.cat([src.class_tokens(torch.arange(2) % (classes + 1)),
                        torch.randint(0, vocab, (2, grid * grid - 1))], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.prior(tokens), src.eval()(tokens))


def test_vq_other_shapes_and_way_back(tmp_path, vq):
    """A 3-level, 1-res-block LlamaGen VQ (made from our vqgan, renamed to LlamaGen keys)
    loads with ch, ch_mult and codebook read from the shapes."""
    spec = dict(ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[64], resolution=256,
                z_channels=16, embed_dim=4, quantizer={"name": "vq", "codebook_size": 24, "dim": 4,
                                                      "l2_normalize": True})
    src = taming_core.create("tokenizer", "vqgan", **spec).eval()
    state = from_vqgan_state(src.state_dict())
    assert list(to_vqgan_state(state)) == list(src.state_dict())
    assert "decoder.conv_blocks.0.attn.0.q.weight" in state and "encoder.mid.1.q.weight" in state
    ckpt = load_taming_checkpoint(_save(tmp_path / "vq.pt", {**state, "quantize.codebook_used":
                                                             torch.zeros(8)}))
    assert ckpt.config["encoder_ch_mult"] == [1, 1, 2] and ckpt.config["codebook_size"] == 24
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ckpt.tokenizer.reconstruct(x)[0], src.reconstruct(x)[0])
    # the fixture's state survives the round trip through our layout
    assert set(from_vqgan_state(vq.tokenizer.state_dict())) | {"quantize.codebook_used"} == \
        set(torch.load(VQ_FILE, weights_only=True)["model"])


def test_presets_and_grid_from_file_name(tmp_path):
    """The head count comes from the preset matching width and depth; the grid from the
    released file name. (A GPT-B-shaped file of 1 layer is refused: no preset matches.)"""
    assert set(PRESETS) == {"GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-XXXL", "GPT-1B", "GPT-3B"}
    assert ffn_hidden_size(768, 256, None) == 2048 and ffn_hidden_size(64, 256, None) == 256
    src = LlamaGenPrior(16, 3, 2, n_layer=1, n_head=12, dim=768)
    path = _save(tmp_path / "c2i_T_32.pt", src.state_dict())
    with pytest.raises(ConfigError, match="n_head"):
        load_taming_checkpoint(path)
    ckpt = load_taming_checkpoint(path, {"n_head": 12})
    assert ckpt.prior.block_size == 1 + 2 * 2            # 32 px / 16 = a 2×2 grid
    with pytest.raises(CheckpointError, match="preset GPT-L"):
        load_taming_checkpoint(path, "GPT-L")


def test_strict_keys_and_refusals(tmp_path):
    src = LlamaGenPrior(16, 3, 2, n_layer=1, n_head=2, dim=32)
    state = src.state_dict()
    with pytest.raises(CheckpointError, match="unexpected keys: layers.0.extra"):
        load_taming_checkpoint(_save(tmp_path / "a_32.pt", {**state, "layers.0.extra": torch.zeros(1)}),
                               {"n_head": 2})
    missing = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(CheckpointError, match="missing keys: norm.weight"):
        load_taming_checkpoint(_save(tmp_path / "b_32.pt", missing), {"n_head": 2})
    with pytest.raises(CheckpointError, match="t2i"):
        load_taming_checkpoint(_save(tmp_path / "c_32.pt", {**state, "cls_embedding.cap_proj.fc1.weight":
                                                            torch.zeros(1)}), {"n_head": 2})
    with pytest.raises(ConfigError, match="token grid"):
        load_taming_checkpoint(_save(tmp_path / "noname.pt", state), {"n_head": 2})
    # kv caches of a model saved after sampling are ignored and listed
    ok = load_taming_checkpoint(_save(tmp_path / "d_32.pt", {
        **state, "layers.0.attention.kv_cache.k_cache": torch.zeros(1)}), {"n_head": 2})
    assert ok.ignored_keys == ["layers.0.attention.kv_cache.k_cache"]


class _NotAllowed:
    pass


def test_only_namespace_is_allowed(tmp_path):
    src = LlamaGenPrior(16, 3, 2, n_layer=1, n_head=2, dim=32)
    bad = tmp_path / "evil_32.pt"
    torch.save({"model": src.state_dict(), "args": _NotAllowed()}, bad)
    with pytest.raises(CheckpointError) as err:
        load_taming_checkpoint(bad, {"n_head": 2})
    assert "refused" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- prior contracts
@settings(max_examples=6, deadline=None)
@given(n_kv=st.sampled_from([1, 2, 4]), t0=st.integers(1, 9), batch=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_cached_decoding_equals_forward(n_kv, t0, batch, seed):
    """Prefill of any length, then one token at a time: the same logits as one forward."""
    torch.manual_seed(seed)
    prior = LlamaGenPrior(20, 4, 3, n_layer=2, n_head=4, dim=32, n_kv_head=n_kv, multiple_of=8).eval()
    torch.nn.init.normal_(prior.output.weight)
    seq = torch.cat([prior.class_tokens(torch.randint(0, 5, (batch,))),
                     torch.randint(0, 20, (batch, 9))], dim=1)
    with torch.no_grad():
        full = prior(seq)
        cache = prior.new_cache(batch, 10)
        parts = [prior.forward_cached(seq[:, :t0], cache)]
        parts += [prior.forward_cached(seq[:, i:i + 1], cache) for i in range(t0, 10)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_config_roundtrip_loss_and_validation():
    prior = taming_core.create("prior", "llamagen", image_vocab_size=12, num_classes=3, grid_size=2,
                               n_layer=1, n_head=2, dim=16)
    again = taming_core.build({"prior": prior.get_config()})["prior"]
    again.load_state_dict(prior.state_dict())
    cond = prior.class_tokens(torch.tensor([0, 3]))
    tokens = torch.randint(0, 12, (2, 4))
    loss = prior.loss(tokens, cond)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert prior.tok_embeddings.weight.grad is not None
    torch.testing.assert_close(again.loss(tokens, cond), loss.detach())
    with pytest.raises(ValidationError, match="class token"):
        prior(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValidationError, match="image tokens"):
        prior(torch.tensor([[12, 12]]))
    with pytest.raises(ValidationError, match="block size"):
        prior(torch.cat([cond[:1], torch.zeros(1, 5, dtype=torch.long)], dim=1))
    with pytest.raises(ValidationError, match="preset"):
        LlamaGenPrior(preset="GPT-Z")


def test_trains_through_the_stage2_trainer(tmp_path):
    """The stage-2 trainer drives the llamagen prior (class labels through class_label,
    guidance dropout through the trainer), and its samples come out."""
    from torch.utils.data import Dataset

    from taming_plugins.data import BundledPhotos
    from taming_plugins.training.stage2 import PriorTrainConfig, PriorTrainer

    class Labelled(Dataset):
        def __init__(self) -> None:
            self.photos = BundledPhotos(8, length=16, seed=0)

        def __len__(self) -> int:
            return len(self.photos)

        def __getitem__(self, i):
            return self.photos[i], i % 3

    tokenizer = taming_core.create("tokenizer", "vqgan", ch=32, ch_mult=[1, 1], num_res_blocks=1,
                                   attn_resolutions=[], z_channels=8, resolution=8, embed_dim=8,
                                   n_embed=32, quantizer={"name": "vq"}).eval()
    prior = {"name": "llamagen", "image_vocab_size": 32, "num_classes": 3, "grid_size": 4,
             "n_layer": 1, "n_head": 2, "dim": 32, "multiple_of": 16}
    cfg = PriorTrainConfig.from_dict({
        "prior": prior, "conditioner": {"name": "class_label", "num_classes": 3},
        "data": {"batch_size": 8, "cache_dir": str(tmp_path / "cache")},
        "optim": {"learning_rate": 3e-3},
        "train": {"out": str(tmp_path / "run"), "steps": 4, "log_every": 1, "ckpt_every": 4,
                  "image_every": 1000, "num_samples": 2, "progress": False, "device": "cpu", "seed": 0,
                  "cfg_drop": 0.2}})
    trainer = PriorTrainer(cfg, dataset=Labelled(), tokenizer=tokenizer)
    result = trainer.fit()
    assert result.step == 4 and result.metrics
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    assert trainer.write_samples(tmp_path / "samples.png").is_file()
    with pytest.raises(ValidationError, match="vocab_size"):
        LlamaGenPrior(32, 3, 4, n_layer=1, n_head=2, dim=32, vocab_size=40)


@pytest.mark.parametrize("policy", ["taming", "cached"])
def test_sliding_window_and_filters_drive_the_prior(gpt, policy):
    """Grids larger than the prior's 4×4 window, with guidance and top-k; ids stay image ids."""
    prior = gpt.prior
    sampler = taming_core.create("sampler", "sliding_window", window=4, policy=policy, top_k=8,
                                 vocab_limit=64, guidance_scale=2.0,
                                 null_condition=torch.tensor([[prior.null_token]]))
    out = sampler.sample(prior, (6, 5), batch_size=2, condition=prior.class_tokens(torch.tensor([1, 2])),
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 6, 5) and int(out.max()) < 64 and int(out.min()) >= 0


def test_benchmark_baseline_is_llamagens_loop(gpt):
    """benchmarks/_llamagen_ref.py (the sampling benchmark's baseline) reproduces LlamaGen's
    greedy outputs, so its speed ratio compares equal work."""
    from benchmarks._llamagen_ref import LlamaGenLoop

    io = _io("llamagen_c2i_tiny")
    loop = LlamaGenLoop(gpt.prior)
    assert torch.equal(loop.generate(io["cond"], 16), io["greedy"])
    assert torch.equal(loop.generate(io["cond"], 16, 4.0), io["greedy_cfg4"])


@settings(max_examples=5, deadline=None)
@given(levels=st.integers(1, 4), blocks=st.integers(1, 2))
def test_vq_key_mapping_is_a_bijection(levels, blocks):
    """Our vqgan keys -> LlamaGen's layout -> ours is the identity, and the LlamaGen side
    uses only LlamaGen's module names, for any depth and number of res blocks."""
    res = 2 ** (levels - 1)
    tok = taming_core.create("tokenizer", "vqgan", ch=32, ch_mult=[1] * levels, num_res_blocks=blocks,
                             attn_resolutions=[1], resolution=res, z_channels=8, embed_dim=4,
                             quantizer={"name": "vq", "codebook_size": 8, "dim": 4})
    ours = list(tok.state_dict())
    theirs = list(from_vqgan_state(tok.state_dict()))
    assert len(set(theirs)) == len(ours)
    assert list(to_vqgan_state(dict.fromkeys(theirs, torch.zeros(1)))) == ours
    assert not any(".down." in k or ".up." in k or "block_1" in k for k in theirs)
    assert f"decoder.conv_blocks.0.attn.{blocks}.q.weight" in theirs        # coarsest level first

"""The ``gpt`` prior: minGPT layout, KV cache, optimizer groups, config round trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import taming_core
from taming_core import ValidationError
from taming_plugins.priors.gpt import GPT, GPTCache

FIXTURE = "net2net_gpt_small"


CONFIGS = [
    dict(vocab_size=17, block_size=24, n_layer=1, n_head=1, n_embd=8),
    dict(vocab_size=33, block_size=40, n_layer=3, n_head=4, n_embd=32),
    dict(vocab_size=9, block_size=12, n_layer=2, n_head=2, n_embd=16, n_unmasked=5),
]


def reference_forward(model: GPT, tokens: torch.Tensor, n_unmasked: int = 0) -> torch.Tensor:
    """The original minGPT math, written out: explicit masked softmax, exact GELU."""
    b, t = tokens.shape
    x = model.tok_emb.weight[tokens] + model.pos_emb[:, :t]
    mask = torch.tril(torch.ones(t, t))
    mask[:n_unmasked, :n_unmasked] = 1
    for blk in model.blocks:
        h = F.layer_norm(x, (x.shape[-1],), blk.ln1.weight, blk.ln1.bias)
        nh, c = blk.attn.n_head, x.shape[-1]

        def heads(lin: torch.nn.Linear) -> torch.Tensor:
            return lin(h).view(b, t, nh, c // nh).transpose(1, 2)

        q, k, v = heads(blk.attn.query), heads(blk.attn.key), heads(blk.attn.value)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        att = att.masked_fill(mask == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + blk.attn.proj(y)
        h = F.layer_norm(x, (c,), blk.ln2.weight, blk.ln2.bias)
        x = x + blk.mlp[2](0.5 * blk.mlp[0](h) * (1 + torch.erf(blk.mlp[0](h) / math.sqrt(2))))
    x = F.layer_norm(x, (x.shape[-1],), model.ln_f.weight, model.ln_f.bias)
    return x @ model.head.weight.t()


def random_model(cfg: dict) -> GPT:
    torch.manual_seed(1)
    model = GPT(**cfg).eval()
    with torch.no_grad():  # pos_emb starts at zero: make positions matter
        model.pos_emb.normal_(0, 0.5)
    return model


def test_registered_and_fixture_weights_reproduce_logits(fixtures_dir):
    state = torch.load(fixtures_dir / f"{FIXTURE}.ckpt", weights_only=True)["state_dict"]
    io = torch.load(fixtures_dir / f"{FIXTURE}.io.pt", weights_only=True)
    prior = taming_core.create("prior", "gpt", vocab_size=65, block_size=512, n_layer=2, n_head=2,
                               n_embd=32).eval()
    sub = {k[len("transformer."):]: v for k, v in state.items()
           if k.startswith("transformer.") and not k.endswith("attn.mask")}
    prior.load_state_dict(sub, strict=True)
    with torch.no_grad():
        assert (prior(io["tokens"]) - io["logits"]).abs().max() < 1e-4


@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_matches_reference_math(cfg):
    model = random_model(cfg)
    tokens = torch.randint(0, cfg["vocab_size"], (2, cfg["block_size"]))
    with torch.no_grad():
        got = model(tokens)
        want = reference_forward(model, tokens, cfg.get("n_unmasked", 0))
    assert got.shape == (2, cfg["block_size"], cfg["vocab_size"])
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_cached_prefill_and_steps_match_full_forward(cfg):
    model = random_model(cfg)
    t = cfg["block_size"]
    tokens = torch.randint(0, cfg["vocab_size"], (3, t))
    split = max(cfg.get("n_unmasked", 0), 3)
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(3, t)
        parts = [model.forward_cached(tokens[:, :split], cache)]
        parts += [model.forward_cached(tokens[:, i:i + 1], cache) for i in range(split, t - 4)]
        parts.append(model.forward_cached(tokens[:, t - 4:], cache))  # a chunk after steps
    assert cache.length == t
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_cache_is_preallocated_and_steps_do_not_concatenate(monkeypatch):
    model = random_model(CONFIGS[1])
    tokens = torch.randint(0, 33, (2, 20))
    cache = model.new_cache(2, 20)
    assert isinstance(cache, GPTCache) and isinstance(cache, taming_core.PriorCache)
    ptr = cache.keys.data_ptr()
    with torch.no_grad():
        model.forward_cached(tokens[:, :10], cache)

        def no_cat(*args, **kwargs):
            raise AssertionError("torch.cat called during a cached step")

        monkeypatch.setattr(torch, "cat", no_cat)
        for i in range(10, 20):
            model.forward_cached(tokens[:, i:i + 1], cache)
    assert cache.keys.data_ptr() == ptr and cache.length == 20


def test_truncate_and_reset_reuse_the_cache():
    model = random_model(CONFIGS[1])
    tokens = torch.randint(0, 33, (1, 16))
    other = torch.randint(0, 33, (1, 6))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(1, 16)
        model.forward_cached(tokens[:, :10], cache)
        model.forward_cached(other, cache)
        cache.truncate(10)
        assert cache.length == 10
        tail = model.forward_cached(tokens[:, 10:], cache)
        assert torch.allclose(tail, full[:, 10:], atol=1e-5)
        cache.reset()
        assert cache.length == 0
        assert torch.allclose(model.forward_cached(tokens, cache), full, atol=1e-5)
    with pytest.raises(ValidationError, match="truncate"):
        cache.truncate(17)


def test_invalid_inputs_raise_clear_errors():
    model = random_model(CONFIGS[0])
    with pytest.raises(ValidationError, match="block size 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValidationError, match="int64"):
        model(torch.zeros(1, 4))
    cache = model.new_cache(1, 4)
    with pytest.raises(ValidationError, match="cache holds 1 sequences of 4"):
        model.forward_cached(torch.zeros(1, 5, dtype=torch.long), cache)
    with pytest.raises(ValidationError, match="cache holds"):
        model.forward_cached(torch.zeros(2, 1, dtype=torch.long), cache)
    with pytest.raises(ValidationError, match="block size"):
        model.new_cache(1, 25)
    with pytest.raises(ValidationError, match="divisible"):
        GPT(10, 8, n_head=3, n_embd=8)
    with pytest.raises(ValidationError, match="attn_pdrop"):
        GPT(10, 8, n_head=2, n_embd=8, attn_pdrop=1.5)


def test_optimizer_decays_linear_weights_only():
    model = GPT(11, 8, n_layer=2, n_head=2, n_embd=8)
    opt = model.configure_optimizers(lr=1e-3, weight_decay=0.1)
    assert opt.defaults["betas"] == (0.9, 0.95)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == linear_weights
    n_all = sum(len(g["params"]) for g in opt.param_groups)
    assert n_all == len(list(model.parameters()))


def test_config_round_trip_and_training_step():
    model = GPT(13, 10, n_layer=2, n_head=2, n_embd=8, embd_pdrop=0.1, resid_pdrop=0.1,
                attn_pdrop=0.1, n_unmasked=2)
    cfg = model.get_config()
    rebuilt = taming_core.build(cfg)
    assert isinstance(rebuilt, GPT) and rebuilt.get_config() == cfg
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    tokens = torch.randint(0, 13, (4, 10))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))  # dropout active
    opt = model.configure_optimizers(lr=1e-2)
    loss = model.loss(tokens)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    model.eval()
    assert torch.equal(model(tokens), model(tokens))

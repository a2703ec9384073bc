"""The ``vqgan`` tokenizer: architecture, key layout, contracts, config round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import taming_core
from taming_core.errors import ConfigError, ValidationError
from taming_plugins.quantizers.vq import VectorQuantizer
from taming_plugins.tokenizers._vqgan_modules import AttnBlock, Downsample, Upsample
from taming_plugins.tokenizers.vqgan import VQGANTokenizer

SMALL = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=32,
             resolution=16, embed_dim=4, n_embed=16)


def small_tokenizer(**overrides) -> VQGANTokenizer:
    kwargs = {**SMALL, "quantizer": {"name": "vq", "legacy_beta": True}, **overrides}
    return taming_core.create("tokenizer", "vqgan", **kwargs)


def images(batch: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, size, size) * 2 - 1


def test_registered():
    assert "vqgan" in taming_core.available("tokenizer")


def test_encode_decode_shapes_and_properties():
    tok = small_tokenizer().eval()
    assert tok.downsample_factor == 2 and tok.vocab_size == 16
    assert tok.last_layer is tok.decoder.conv_out.weight
    x = images()
    with torch.no_grad():
        enc = tok.encode(x)
        assert enc.indices.shape == (2, 8, 8) and enc.indices.dtype == torch.long
        assert enc.latent.shape == (2, 4, 8, 8) and enc.loss.dim() == 0
        assert {"usage", "perplexity"} <= set(enc.metrics)
        xrec = tok.decode(enc.indices)
        assert xrec.shape == x.shape
        # straight-through latent and the code embedding give the same decoded images
        torch.testing.assert_close(tok.decode_latent(enc.latent), xrec, atol=1e-5, rtol=0)
        xrec2, enc2 = tok(x)
        torch.testing.assert_close(xrec2, xrec, atol=1e-5, rtol=0)


def test_quantizer_spec_defaults_and_instances():
    tok = small_tokenizer()
    assert tok.quantize.codebook_size == 16 and tok.quantize.dim == 4 and tok.quantize.legacy_beta
    gumbel = small_tokenizer(quantizer={"name": "gumbel"}, quant_conv_channels=32)
    assert gumbel.quantize.in_channels == 32 and gumbel.quantize.dim == 4
    assert gumbel.quant_conv.out_channels == 32
    inst = taming_core.create("quantizer", "gumbel", codebook_size=16, dim=4, in_channels=8)
    tok2 = small_tokenizer(quantizer=inst)
    assert tok2.quant_conv.out_channels == 8 and tok2.quantize is inst
    with pytest.raises(ConfigError, match="quantizer"):
        small_tokenizer(quantizer=None)
    with pytest.raises(ConfigError, match="Quantizer or a spec"):
        small_tokenizer(quantizer=42)


def test_input_validation_messages():
    tok = small_tokenizer()
    with pytest.raises(ValidationError, match="float tensor"):
        tok.encode(torch.zeros(1, 3, 16, 16, dtype=torch.long))
    with pytest.raises(ValidationError, match="B×3×H×W"):
        tok.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValidationError, match="dim 1 must be 3"):
        tok.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValidationError, match=r"\[-1.001, 1.001\]"):
        tok.encode(torch.full((1, 3, 16, 16), 2.0))
    with pytest.raises(ValidationError, match="divisible by the downsample factor 2, got 15×16"):
        tok.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValidationError, match=r"values must lie in \[0, 15\]"):
        tok.decode(torch.full((1, 4, 4), 16, dtype=torch.long))
    with pytest.raises(ValidationError, match="int64"):
        tok.decode(torch.zeros(1, 4, 4))
    with pytest.raises(ValidationError, match="B×4×h×w"):
        tok.decode_latent(torch.zeros(1, 5, 4, 4))


def original_keys(ddconfig: dict, n_embed_key: str = "quantize.embedding.weight") -> set[str]:
    """Parameter names of the original VQModel, written out from the documented layout."""
    keys = set()

    def conv(p):
        keys.update({f"{p}.weight", f"{p}.bias"})

    def block(p, c_in, c_out):
        for n in ("norm1", "conv1", "norm2", "conv2"):
            conv(f"{p}.{n}")
        if c_in != c_out:
            conv(f"{p}.nin_shortcut")

    def attn(p):
        for n in ("norm", "q", "k", "v", "proj_out"):
            conv(f"{p}.{n}")

    ch, mult, nrb = ddconfig["ch"], ddconfig["ch_mult"], ddconfig["num_res_blocks"]
    res, attn_res = ddconfig["resolution"], ddconfig["attn_resolutions"]
    conv("encoder.conv_in")
    c_in = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            block(f"encoder.down.{i}.block.{j}", c_in, ch * m)
            c_in = ch * m
            if res // 2 ** i in attn_res:
                attn(f"encoder.down.{i}.attn.{j}")
        if i != len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv")
    for p in ("encoder.mid", "decoder.mid"):
        block(f"{p}.block_1", 1, 1)
        attn(f"{p}.attn_1")
        block(f"{p}.block_2", 1, 1)
    conv("encoder.norm_out")
    conv("encoder.conv_out")
    conv("decoder.conv_in")
    c_in = ch * mult[-1]
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            block(f"decoder.up.{i}.block.{j}", c_in, ch * mult[i])
            c_in = ch * mult[i]
            if res // 2 ** i in attn_res:
                attn(f"decoder.up.{i}.attn.{j}")
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv")
    conv("decoder.norm_out")
    conv("decoder.conv_out")
    conv("quant_conv")
    conv("post_quant_conv")
    keys.add(n_embed_key)
    return keys


@pytest.mark.parametrize("overrides", [
    {},
    dict(ch_mult=[1, 1, 2, 2], num_res_blocks=2, attn_resolutions=[16, 4], resolution=32),
])
def test_state_dict_follows_original_layout(overrides):
    tok = small_tokenizer(**overrides)
    assert set(tok.state_dict()) == original_keys(tok.ddconfig)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(1)
    block = AttnBlock(32).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 32, 6, 5)
    h = block.norm(x)
    q, k, v = (m(h).reshape(2, 32, 30) for m in (block.q, block.k, block.v))
    w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * 32 ** -0.5, dim=2)   # B×query×key
    out = torch.bmm(v, w.transpose(1, 2)).reshape(2, 32, 6, 5)
    expected = x + block.proj_out(out)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=0)


def test_resampling_layers():
    down = Downsample(32, with_conv=True)
    x = torch.randn(1, 32, 8, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    torch.testing.assert_close(down(x), expected)
    torch.testing.assert_close(Downsample(32, with_conv=False)(x), F.avg_pool2d(x, 2))
    up = Upsample(32, with_conv=False)
    torch.testing.assert_close(up(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_config_round_trip_through_build():
    tok = small_tokenizer(resamp_with_conv=False).eval()
    cfg = tok.get_config()
    rebuilt = taming_core.build(cfg).eval()
    assert isinstance(rebuilt, VQGANTokenizer) and rebuilt.get_config() == cfg
    assert VQGANTokenizer(**{k: v for k, v in cfg.items() if k not in ("kind", "name")}).get_config() == cfg
    rebuilt.load_state_dict(tok.state_dict(), strict=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], tok(x)[0])
    bare = VectorQuantizer(codebook_size=16, dim=4)   # not made through the registry
    if not hasattr(bare, "get_config"):
        with pytest.raises(ConfigError, match="spec dict"):
            small_tokenizer(quantizer=bare).get_config()


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    x = images(1)
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        tok = small_tokenizer(grad_checkpointing=flag)
        xrec, enc = tok(x)
        ((xrec - x).abs().mean() + enc.loss).backward()
        grads.append(tok.encoder.conv_in.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    tok.grad_checkpointing = False
    assert not tok.decoder.grad_checkpointing and tok.get_config()["grad_checkpointing"] is False


def test_channels_last_same_output():
    torch.manual_seed(0)
    ref = small_tokenizer().eval()
    cl = small_tokenizer(channels_last=True).eval()
    cl.load_state_dict(ref.state_dict())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(cl(x)[0], ref(x)[0], atol=1e-5, rtol=0)
    assert cl.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

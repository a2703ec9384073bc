"""Original VQModel/GumbelVQ checkpoints: reference reproduction, general layouts, errors,
the way back, and ``taming convert``."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import yaml

import taming_plugins.compat as compat
from taming_core.errors import CheckpointError, ConfigError
from taming_plugins.cli import main
from taming_plugins.compat import (TamingCheckpoint, infer_vqgan_config, load_converted,
                                   load_taming_checkpoint, load_vqgan_state, save_taming_checkpoint)
from taming_plugins.discriminators.patchgan import PatchGANDiscriminator
from taming_plugins.tokenizers.vqgan import VQGANTokenizer

ATOL = 1e-4


# --------------------------------------------------------------------------- reference fixture
@pytest.fixture(scope="module")
def reference_io():
    from conftest import FIXTURES

    return torch.load(FIXTURES / "vqgan_f4.io.pt", weights_only=True)


@pytest.mark.parametrize("with_yaml", [False, True], ids=["inferred", "yaml"])
def test_reference_checkpoint_reproduced(fixtures_dir, reference_io, with_yaml):
    config = fixtures_dir / "vqgan_f4.yaml" if with_yaml else None
    ckpt = load_taming_checkpoint(fixtures_dir / "vqgan_f4.ckpt", config)
    assert isinstance(ckpt, TamingCheckpoint) and ckpt.kind == "VQModel"
    assert ckpt.inferred is not with_yaml and ckpt.ignored_keys == ["loss.logvar"]
    assert ckpt.extra["global_step"] == 0
    tok, io = ckpt.tokenizer, reference_io
    with torch.no_grad():
        z = tok.encode_to_prequant(io["x"])
        q = tok.quantize_latent(z)
        xrec = tok.decode_latent(q.z_q)
        logits = ckpt.discriminator(io["x"])
        xrec_codes = tok.decode(q.indices)
    assert torch.equal(q.indices, io["indices"])
    for got, want in ((z, io["z"]), (q.z_q, io["zq"]), (q.loss, io["emb_loss"]), (xrec, io["xrec"]),
                      (logits, io["disc_logits"]), (xrec_codes, io["xrec"])):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_inferred_config_matches_yaml(fixtures_dir):
    sd = torch.load(fixtures_dir / "vqgan_f4.ckpt", weights_only=True)["state_dict"]
    params = yaml.safe_load((fixtures_dir / "vqgan_f4.yaml").read_text())["model"]["params"]
    inferred = infer_vqgan_config(sd)
    assert inferred["n_embed"] == params["n_embed"] and inferred["embed_dim"] == params["embed_dim"]
    dd = inferred["ddconfig"]
    for key in ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch", "double_z"):
        assert dd[key] == params["ddconfig"][key], key
    # resolution is nominal; attention sits at the same level (32/8 == 256/64)
    assert dd["resolution"] // dd["attn_resolutions"][0] == 32 // 8
    disc = inferred["lossconfig"]["params"]
    assert (disc["disc_ndf"], disc["disc_num_layers"], disc["use_actnorm"]) == (16, 2, False)


def test_net2net_first_stage_loads_through_load_vqgan_state(fixtures_dir, reference_io):
    sd = torch.load(fixtures_dir / "net2net_gpt_small.ckpt", weights_only=True)["state_dict"]
    prefix = "first_stage_model."
    first = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    tok, disc, info = load_vqgan_state(first, None)
    assert disc is None and info["kind"] == "VQModel" and info["inferred"]
    with torch.no_grad():
        assert torch.equal(tok.encode(reference_io["x"]).indices, reference_io["indices"])


# --------------------------------------------------------------------------- synthetic checkpoints
def make_models(quantizer="vq", disc=None, **arch):
    """Our modules with random weights in a given config (names equal the original ones)."""
    torch.manual_seed(3)
    cfg = {**dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=32,
                  resolution=16, embed_dim=8, n_embed=24), **arch}
    if quantizer == "vq":
        spec = {"name": "vq", "legacy_beta": True}
    else:
        spec = {"name": "gumbel", "kl_weight": 1e-8}
        cfg.update(embed_dim=cfg["z_channels"], quant_conv_channels=cfg["z_channels"])
    tok = VQGANTokenizer(**cfg, quantizer=spec)
    with torch.no_grad():
        for p in tok.quantize.parameters():
            p.normal_()
    d = None
    if disc is not None:
        d = PatchGANDiscriminator(**disc)
        d.train()(torch.randn(2, d.in_channels, 32, 32))   # ActNorm init, BN statistics
    return tok.eval(), (d.eval() if d is not None else None)


def write_original_ckpt(path, tok, disc=None, extra_keys=True, drop=(), add=None):
    state = dict(tok.state_dict())
    if disc is not None:
        state.update({f"loss.discriminator.{k}": v for k, v in disc.state_dict().items()})
    if extra_keys:
        state["loss.logvar"] = torch.zeros(())
        state["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
        state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    for key in drop:
        del state[key]
    state.update(add or {})
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1}, path)
    return path


def assert_same_behaviour(a_tok, b_tok, a_disc=None, b_disc=None, size=16):
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        xa, ea = a_tok(x)
        xb, eb = b_tok(x)
        assert torch.equal(ea.indices, eb.indices)
        torch.testing.assert_close(xa, xb, atol=1e-6, rtol=0)
        torch.testing.assert_close(ea.loss, eb.loss, atol=1e-6, rtol=0)
        if a_disc is not None:
            x_disc = torch.rand(2, 3, 32, 32) * 2 - 1
            torch.testing.assert_close(a_disc(x_disc), b_disc(x_disc), atol=1e-6, rtol=0)


CASES = {
    "deep_multi_attn": dict(arch=dict(ch_mult=[1, 1, 2, 2]), res=16, attn=[16, 4],
                            disc=dict(ndf=8, n_layers=3)),
    "actnorm_disc": dict(arch=dict(num_res_blocks=2), res=16, attn=[8],
                         disc=dict(ndf=8, n_layers=2, use_actnorm=True)),
    "avgpool_no_disc": dict(arch=dict(resamp_with_conv=False), res=16, attn=[], disc=None),
    "gumbel": dict(arch=dict(ch_mult=[1, 2, 2]), res=16, attn=[4], disc=dict(ndf=8, n_layers=2),
                   quantizer="gumbel"),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_config", [False, True], ids=["inferred", "config"])
def test_synthetic_original_checkpoints_load(tmp_path, name, with_config):
    case = CASES[name]
    tok, disc = make_models(case.get("quantizer", "vq"), case["disc"], **case["arch"]
                            | {"resolution": case["res"], "attn_resolutions": case["attn"]})
    path = write_original_ckpt(tmp_path / "model.ckpt", tok, disc)
    if case.get("quantizer") == "gumbel":
        assert {"quantize.proj.weight", "quantize.embed.weight"} <= set(torch.load(path)["state_dict"])
    config = None
    if with_config:
        # the original YAML as a dict (what save_taming_checkpoint would write)
        config = save_taming_checkpoint(tmp_path / "unused.ckpt", tok, disc)
    ckpt = load_taming_checkpoint(path, config)
    assert ckpt.kind == ("GumbelVQ" if case.get("quantizer") == "gumbel" else "VQModel")
    assert sorted(ckpt.ignored_keys) == ["loss.logvar", "loss.perceptual_loss.lin0.model.1.weight",
                                         "loss.perceptual_loss.net.slice1.0.weight"]
    assert (ckpt.discriminator is None) == (disc is None)
    if disc is not None:
        assert ckpt.discriminator.use_actnorm == disc.use_actnorm
        assert int(ckpt.discriminator.n_layers) == disc.n_layers
    assert ckpt.tokenizer.ddconfig["ch_mult"] == tok.ddconfig["ch_mult"]
    assert_same_behaviour(tok, ckpt.tokenizer, disc, ckpt.discriminator, size=case["res"])


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    tok, disc = make_models(disc=dict(ndf=8, n_layers=2))
    path = write_original_ckpt(tmp_path / "a.ckpt", tok, disc, drop=["decoder.conv_out.bias"],
                               add={"encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError) as exc:
        load_taming_checkpoint(path)
    msg = str(exc.value)
    assert "missing keys: decoder.conv_out.bias" in msg and "unexpected keys: encoder.extra.weight" in msg
    path = write_original_ckpt(tmp_path / "b.ckpt", tok, disc, drop=["loss.discriminator.main.3.bias"])
    with pytest.raises(CheckpointError, match=r"discriminator.*missing keys: main\.3\.bias"):
        load_taming_checkpoint(path)
    path = write_original_ckpt(tmp_path / "c.ckpt", tok, disc, add={"loss.something": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys: loss.something"):
        load_taming_checkpoint(path)
    good = write_original_ckpt(tmp_path / "d.ckpt", tok, disc)
    config = save_taming_checkpoint(tmp_path / "e.ckpt", tok, disc)
    config["model"]["params"]["n_embed"] = 99
    shape_msg = r"quantize\.embedding\.weight \(24, 8\) \(expected \(99, 8\)\)"
    with pytest.raises(CheckpointError, match=shape_msg):
        load_taming_checkpoint(good, config)
    config["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    config["model"]["params"]["n_embed"] = 24
    with pytest.raises(CheckpointError, match="config says GumbelVQ but the weights are a VQModel"):
        load_taming_checkpoint(good, config)
    with pytest.raises(ConfigError, match="model.target"):
        load_taming_checkpoint(good, {"model": {"target": "taming.models.other.Thing", "params": {}}})
    no_quant = write_original_ckpt(tmp_path / "f.ckpt", tok, drop=["quantize.embedding.weight"])
    with pytest.raises(CheckpointError, match="cannot tell the quantizer"):
        load_taming_checkpoint(no_quant)


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_taming_checkpoint(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "model": torch.nn.Linear(1, 1)}, foreign)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_taming_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="file not found"):
        load_taming_checkpoint(tmp_path / "nope.ckpt")
    not_tensors = tmp_path / "nt.ckpt"
    torch.save({"state_dict": {"a": 1}}, not_tensors)
    with pytest.raises(CheckpointError, match="not tensors: a"):
        load_taming_checkpoint(not_tensors)


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_save_load_round_trip(tmp_path, quantizer):
    tok, disc = make_models(quantizer, dict(ndf=8, n_layers=2, use_actnorm=True))
    config = save_taming_checkpoint(tmp_path / "out.ckpt", tok, disc, config_path=tmp_path / "out.yaml",
                                    global_step=5)
    raw = torch.load(tmp_path / "out.ckpt", weights_only=True)
    assert raw["global_step"] == 5 and "loss.discriminator.main.3.loc" in raw["state_dict"]
    assert yaml.safe_load((tmp_path / "out.yaml").read_text()) == config
    for cfg in (None, tmp_path / "out.yaml"):
        back = load_taming_checkpoint(tmp_path / "out.ckpt", cfg)
        for a, b in ((tok, back.tokenizer), (disc, back.discriminator)):
            sa, sb = a.state_dict(), b.state_dict()
            assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert_same_behaviour(tok, back.tokenizer, disc, back.discriminator)


def test_save_rejects_inexpressible_models(tmp_path):
    tok = VQGANTokenizer(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=32,
                         resolution=16, embed_dim=4,
                         quantizer={"name": "vq", "codebook_size": 8, "codebook_dim": 2})
    with pytest.raises(ConfigError, match="code projection"):
        save_taming_checkpoint(tmp_path / "x.ckpt", tok)
    assert not (tmp_path / "x.ckpt").exists()


def test_net2net_checkpoints_are_dispatched(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("taming_plugins.compat.net2net")
    fake.load_net2net = lambda state, config, path: calls.append((sorted(state), config, path)) or "net2net"
    monkeypatch.setitem(sys.modules, "taming_plugins.compat.net2net", fake)
    monkeypatch.setattr(compat, "net2net", fake, raising=False)
    path = tmp_path / "n2n.ckpt"
    torch.save({"state_dict": {"transformer.tok_emb.weight": torch.zeros(2, 2),
                               "first_stage_model.quant_conv.weight": torch.zeros(1)}}, path)
    assert load_taming_checkpoint(path, {"model": {}}) == "net2net"
    assert calls == [(["first_stage_model.quant_conv.weight", "transformer.tok_emb.weight"],
                      {"model": {}}, path)]


# --------------------------------------------------------------------------- CLI
def test_convert_cli_both_ways(tmp_path, fixtures_dir, reference_io, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(fixtures_dir / "vqgan_f4.ckpt"), str(out),
                 "--config", str(fixtures_dir / "vqgan_f4.yaml")]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "original.json"}
    conv = load_converted(out)
    with torch.no_grad():
        assert torch.equal(conv.tokenizer.encode(reference_io["x"]).indices, reference_io["indices"])
        torch.testing.assert_close(conv.discriminator(reference_io["x"]), reference_io["disc_logits"],
                                   atol=ATOL, rtol=0)
    back = tmp_path / "back.ckpt"
    assert main(["convert", str(out), "--to-taming", str(back), "--config-out",
                 str(tmp_path / "back.yaml")]) == 0
    again = load_taming_checkpoint(back, tmp_path / "back.yaml")
    assert_same_behaviour(conv.tokenizer, again.tokenizer, conv.discriminator, again.discriminator)
    assert "wrote" in capsys.readouterr().out


def test_convert_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path / "in.ckpt")])
    assert exc.value.code == 2
    capsys.readouterr()
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"junk")
    assert main(["convert", str(junk), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.ckpt" in err[0]

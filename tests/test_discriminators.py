"""Discriminators: ``patchgan`` (original layout, BatchNorm/ActNorm) and ``timm_features``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taming_core
from taming_core.errors import CheckpointError, ConfigError, ValidationError
from taming_core.io import save_tensors
from taming_plugins.discriminators._actnorm import ActNorm
from taming_plugins.discriminators.patchgan import PatchGANDiscriminator


def test_registered():
    assert {"patchgan", "timm_features"} <= set(taming_core.available("discriminator"))


@pytest.mark.parametrize("use_actnorm", [False, True])
def test_patchgan_layout(use_actnorm):
    disc = PatchGANDiscriminator(in_channels=3, ndf=8, n_layers=3, use_actnorm=use_actnorm)
    layers = list(disc.main)
    conv_idx = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert conv_idx == [0, 2, 5, 8, 11]
    assert [layers[i].out_channels for i in conv_idx] == [8, 16, 32, 64, 1]
    assert [layers[i].stride[0] for i in conv_idx] == [2, 2, 2, 1, 1]
    assert all(layers[i].kernel_size == (4, 4) and layers[i].padding == (1, 1) for i in conv_idx)
    norm_type = ActNorm if use_actnorm else nn.BatchNorm2d
    assert all(isinstance(layers[i + 1], norm_type) for i in conv_idx[1:-1])
    # hidden convs carry a bias only with ActNorm (BatchNorm has its own shift)
    assert all((layers[i].bias is not None) == use_actnorm for i in conv_idx[1:-1])
    leaky = [m for m in layers if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 4 and all(m.negative_slope == 0.2 for m in leaky)
    out = disc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)
    keys = set(disc.state_dict())
    if use_actnorm:
        assert {"main.3.loc", "main.3.scale", "main.3.initialized"} <= keys
        assert disc.state_dict()["main.3.initialized"].dtype == torch.uint8
    else:
        assert {"main.3.running_mean", "main.3.num_batches_tracked"} <= keys


def test_patchgan_weights_init():
    torch.manual_seed(0)
    disc = PatchGANDiscriminator(ndf=64, n_layers=3)
    w = disc.main[5].weight.detach()
    assert abs(float(w.mean())) < 2e-3 and abs(float(w.std()) - 0.02) < 1e-3
    bn = disc.main[6].requires_grad_(False)
    assert abs(float(bn.weight.mean()) - 1.0) < 0.01 and float(bn.bias.abs().max()) == 0.0


def test_patchgan_reproduces_reference_logits(fixtures_dir):
    sd = torch.load(fixtures_dir / "vqgan_f4.ckpt", weights_only=True)["state_dict"]
    io = torch.load(fixtures_dir / "vqgan_f4.io.pt", weights_only=True)
    disc = PatchGANDiscriminator(in_channels=3, ndf=16, n_layers=2).eval()
    prefix = "loss.discriminator."
    disc.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(disc(io["x"]), io["disc_logits"], atol=1e-5, rtol=0)


def test_actnorm_data_dependent_init():
    torch.manual_seed(0)
    norm = ActNorm(4)
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    y = norm(x)
    assert int(norm.initialized) == 1
    per_channel = y.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(4), atol=1e-4, rtol=0)
    loc = norm.loc.detach().clone()
    norm(x * 10)   # second call: no re-initialisation
    torch.testing.assert_close(norm.loc.detach(), loc)
    fresh = ActNorm(4).eval()
    torch.testing.assert_close(fresh(x), x)   # eval mode never initialises
    assert int(fresh.initialized) == 0
    assert norm(torch.randn(3, 4)).shape == (3, 4)


def test_patchgan_validation():
    with pytest.raises(ValidationError, match="n_layers"):
        PatchGANDiscriminator(n_layers=0)
    with pytest.raises(ValidationError, match="B×3×H×W"):
        PatchGANDiscriminator(ndf=8, n_layers=1)(torch.randn(1, 1, 32, 32))


def test_patchgan_config_round_trip():
    disc = PatchGANDiscriminator(ndf=8, n_layers=2, use_actnorm=True)
    rebuilt = taming_core.build(disc.get_config())
    assert rebuilt.get_config() == disc.get_config()
    assert set(rebuilt.state_dict()) == set(disc.state_dict())


def test_timm_features_shapes_and_gradients():
    torch.manual_seed(0)
    disc = taming_core.create("discriminator", "timm_features", model_name="resnet18")
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    levels = disc.forward_levels(x)
    assert [tuple(lv.shape) for lv in levels] == [(2, 1, 16, 16), (2, 1, 8, 8), (2, 1, 4, 4)]
    out = disc(x)
    assert out.shape == (2, 1, 16, 16)
    out.mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in disc.heads.parameters())
    with pytest.raises(ValidationError, match="B×3×H×W"):
        disc(torch.rand(2, 1, 64, 64))


def test_timm_features_bad_model():
    with pytest.raises(ConfigError, match="timm could not build"):
        taming_core.create("discriminator", "timm_features", model_name="no_such_model_xyz")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_timm_features_loads_local_weights(tmp_path, suffix):
    import timm

    torch.manual_seed(1)
    full = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_tensors(path, full.state_dict())
    else:
        torch.save({"state_dict": full.state_dict()}, path)
    disc = taming_core.create("discriminator", "timm_features", checkpoint_path=str(path))
    torch.testing.assert_close(disc.backbone.state_dict()["layer2.0.conv1.weight"],
                               full.state_dict()["layer2.0.conv1.weight"])
    assert disc.get_config()["checkpoint_path"] == str(path)


def test_timm_features_rejects_wrong_weights(tmp_path):
    import timm

    def make(path):
        return taming_core.create("discriminator", "timm_features", checkpoint_path=str(path))

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    bad = dict(state)
    bad["typo.weight"] = torch.zeros(1)
    save_tensors(tmp_path / "extra.safetensors", bad)
    with pytest.raises(CheckpointError, match="unexpected typo.weight"):
        make(tmp_path / "extra.safetensors")
    del state["layer1.0.bn1.weight"]
    save_tensors(tmp_path / "missing.safetensors", state)
    with pytest.raises(CheckpointError, match="missing layer1.0.bn1.weight"):
        make(tmp_path / "missing.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        make(tmp_path / "junk.pt")

"""Stage-1 losses: GAN objectives, offline LPIPS, and the composed VQGAN loss."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
import torch
import torch.nn.functional as F

import taming_core
from taming_core.errors import CheckpointError, ConfigError
from taming_core.io import torch_load_safe
from taming_plugins.losses.lpips import LPIPS, default_backbone_path
from taming_plugins.losses.vqgan_loss import ADAPTIVE_EPS, VQGANLoss

TINY_TOKENIZER = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8,
                      resolution=16, embed_dim=8, n_embed=32, quantizer={"name": "vq"})
TINY_DISC = {"name": "patchgan", "ndf": 8, "n_layers": 2}
#: The small LPIPS backbone: fast to build, same code path as VGG.
FAST_LPIPS = {"name": "lpips", "net": "squeeze", "allow_random_backbone": True}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a socket (a weight download) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)


@pytest.fixture(autouse=True)
def _empty_hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache, so no real backbone weights are found by accident."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def _images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


# ---------------------------------------------------------------- GAN objectives
def test_gan_objectives_formulas() -> None:
    real, fake = torch.tensor([2.0, -0.5]), torch.tensor([0.5, -3.0])
    hinge = taming_core.create("loss", "hinge")
    assert torch.isclose(hinge.discriminator_loss(real, fake),
                         0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean()))
    assert torch.isclose(hinge.generator_loss(fake), -fake.mean())
    vanilla = taming_core.create("loss", "vanilla")
    assert torch.isclose(vanilla.discriminator_loss(real, fake),
                         0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean()))
    assert torch.isclose(vanilla.generator_loss(fake), -fake.mean())  # as in the original
    ns = taming_core.create("loss", "non_saturating")
    assert torch.isclose(ns.generator_loss(fake), F.softplus(-fake).mean())
    assert isinstance(ns, taming_core.GANObjective)


# ---------------------------------------------------------------- LPIPS
def test_lpips_without_weights_says_where_to_put_them() -> None:
    with pytest.raises(CheckpointError) as info:
        LPIPS()
    msg = str(info.value)
    assert "vgg16-397923af.pth" in msg and str(default_backbone_path("vgg")) in msg
    assert "allow_random_backbone" in msg
    with pytest.raises(CheckpointError, match="does not exist"):
        LPIPS(backbone_path="/nonexistent/vgg16.pth")


def test_lpips_random_vgg_is_frozen_and_matches_package() -> None:
    torch.manual_seed(0)
    loss = taming_core.create("loss", "lpips", allow_random_backbone=True)
    assert loss.random_backbone and loss.net_name == "vgg"
    x, y = _images(1), _images(2)
    y.requires_grad_(True)
    d = loss(x, y)
    assert d.shape == (2, 1, 1, 1) and bool((d > 0).all())
    # our single-pass forward equals the package's two-pass forward
    assert torch.allclose(d, loss.model(x, y), atol=1e-6)
    assert torch.allclose(loss(x, x), torch.zeros(2, 1, 1, 1), atol=1e-6)
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.model.training  # dropout of the heads never active
    # the calibrated heads were read from the package's file
    import lpips

    heads = torch_load_safe(Path(lpips.__file__).parent / "weights/v0.1/vgg.pth")
    assert torch.equal(loss.model.lin0.model[1].weight, heads["lin0.model.1.weight"])
    assert loss.model.lins[0] is loss.model.lin0


def test_lpips_loads_local_backbone_and_cache(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1().state_dict()
    path = tmp_path / "squeeze.pth"
    torch.save(state, path)
    loss = LPIPS("squeeze", backbone_path=path)
    assert not loss.random_backbone
    assert torch.equal(loss.model.net.slice1[0].weight, state["features.0.weight"])
    # found in torchvision's cache directory without an explicit path
    cached = default_backbone_path("squeeze")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    assert torch.equal(LPIPS("squeeze").model.state_dict()["net.slice7.12.expand3x3.weight"],
                       state["features.12.expand3x3.weight"])
    # a wrong file is refused clearly
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not a torchvision"):
        LPIPS("squeeze", backbone_path=tmp_path / "bad.pth")


# ---------------------------------------------------------------- VQGAN loss
def _setup(fused: bool, **loss_kwargs):
    torch.manual_seed(0)
    tok = taming_core.create("tokenizer", "vqgan", **TINY_TOKENIZER)
    torch.manual_seed(1)
    loss = VQGANLoss(discriminator=TINY_DISC, perceptual=FAST_LPIPS, fused=fused, **loss_kwargs)
    return tok, loss


def _generator_grads(fused: bool, **loss_kwargs):
    tok, loss = _setup(fused, **loss_kwargs)
    x = _images(3)
    xrec, enc = tok.reconstruct(x)
    total, logs = loss.generator_loss(x, xrec, enc.loss, step=5, last_layer=tok.last_layer)
    total.backward()
    return total, logs, {n: p.grad.clone() for n, p in tok.named_parameters()}, (tok, loss, x)


def test_vqgan_loss_matches_original_formula() -> None:
    total, logs, _, (tok, loss, x) = _generator_grads(fused=False)
    # recompute the original VQLPIPSWithDiscriminator generator loss by hand
    tok.zero_grad()
    xrec, enc = tok.reconstruct(x)
    rec = (x - xrec).abs() + loss.perceptual(x, xrec)
    nll = rec.mean()
    g = -loss.discriminator(xrec).mean()
    gn = torch.autograd.grad(nll, tok.last_layer, retain_graph=True)[0]
    gg = torch.autograd.grad(g, tok.last_layer, retain_graph=True)[0]
    d_weight = torch.clamp(gn.norm() / (gg.norm() + ADAPTIVE_EPS), 0.0, 1e4)
    expected = nll + d_weight * g + enc.loss
    assert abs(total.item() - expected.item()) < 1e-5
    assert abs(logs["d_weight"] - d_weight.item()) < 1e-5 and logs["disc_factor"] == 1.0
    assert abs(logs["nll_loss"] - nll.item()) < 1e-5


def test_fused_backward_gives_the_same_gradients() -> None:
    t_fused, logs_fused, grads_fused, _ = _generator_grads(fused=True)
    t_ref, logs_ref, grads_ref, _ = _generator_grads(fused=False)
    assert abs(t_fused.item() - t_ref.item()) < 1e-6
    # logs are detached 0-d tensors (no device sync in the loss); the trainer floats them
    assert {k: float(v) for k, v in logs_fused.items()} == pytest.approx(
        {k: float(v) for k, v in logs_ref.items()}, rel=1e-5, abs=1e-7)
    scale = max(g.abs().max().item() for g in grads_ref.values())
    for name, g in grads_ref.items():
        assert (grads_fused[name] - g).abs().max().item() <= 1e-4 * scale, name


def test_disc_start_and_discriminator_loss() -> None:
    tok, loss = _setup(fused=True, disc_start=10, disc_weight=0.5, gan_objective="vanilla")
    x = _images(4)
    xrec, enc = tok.reconstruct(x)
    assert not loss.discriminator_active(9) and loss.discriminator_active(10)
    total, logs = loss.generator_loss(x, xrec, enc.loss, step=9, last_layer=tok.last_layer)
    assert logs["g_loss"] == 0.0 and logs["d_weight"] == 0.0 and logs["disc_factor"] == 0.0
    assert abs(total.item() - (logs["nll_loss"] + logs["quant_loss"])) < 1e-5
    d_loss, d_logs = loss.discriminator_loss(x, xrec, step=10)
    real, fake = loss.discriminator(x), loss.discriminator(xrec.detach())
    expected = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert abs(d_loss.item() - expected.item()) < 1e-5
    assert set(d_logs) == {"disc_loss", "logits_real", "logits_fake"}
    # evaluation (no gradients): the GAN weight is 0 as in the original
    with torch.no_grad():
        xrec, enc = tok.reconstruct(x)
        _, logs = loss.generator_loss(x, xrec, enc.loss, step=20, last_layer=tok.last_layer)
    assert logs["d_weight"] == 0.0


def test_vqgan_loss_components_by_name() -> None:
    loss = taming_core.build({"loss": {"name": "vqgan", "perceptual": None, "discriminator": TINY_DISC,
                                       "gan_objective": "non_saturating"}})["loss"]
    assert type(loss.gan_objective).__name__ == "NonSaturatingLoss" and loss.perceptual is None
    assert loss.discriminator.ndf == 8
    with pytest.raises(ConfigError, match=r"gan_objective\): expected a GANObjective"):
        VQGANLoss(discriminator=TINY_DISC, gan_objective={"kind": "discriminator", "name": "patchgan"})


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(2, 6), st.floats(0.1, 3.0), st.integers(0, 2**31 - 1))
def test_pixel_loss_mse_is_the_squared_error(batch, side, weight, seed) -> None:
    """``pixel_loss="mse"``: ``nll = pixel_weight · mean((x - x̂)²)``; ``l1`` stays logged as
    the L1 distance, and the default stays the original L1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, side, side, generator=g) * 2 - 1
    xrec = torch.rand(batch, 3, side, side, generator=g) * 2 - 1
    zero = torch.zeros(())
    mse_loss = VQGANLoss(discriminator={"name": "patchgan", "ndf": 4, "n_layers": 1}, disc_start=10,
                         pixel_weight=weight, pixel_loss="mse")
    total, logs = mse_loss.generator_loss(x, xrec, zero, step=0)
    assert torch.allclose(total, weight * (x - xrec).square().mean(), rtol=1e-5, atol=1e-7)
    assert torch.allclose(logs["l1"], (x - xrec).abs().mean()) and "mse" in logs
    l1_loss = VQGANLoss(discriminator={"name": "patchgan", "ndf": 4, "n_layers": 1}, disc_start=10,
                        pixel_weight=weight)
    total, logs = l1_loss.generator_loss(x, xrec, zero, step=0)
    assert torch.allclose(total, weight * (x - xrec).abs().mean(), rtol=1e-5, atol=1e-7) and "mse" not in logs


def test_pixel_loss_refuses_unknown_values() -> None:
    with pytest.raises(taming_core.ValidationError, match=r"vqgan loss\(pixel_loss\): expected one of \['l1', 'mse'\]"):
        VQGANLoss(pixel_loss="l2")

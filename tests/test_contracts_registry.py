"""The loss kinds split by consumer (perceptual, gan, autoencoder_loss) and the alias ``loss``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taming_core
from taming_core import (AutoencoderLoss, ConfigError, GANObjective, PerceptualLoss, RegistryError,
                         register, unregister)
from taming_plugins.cli import main as cli_main
from taming_plugins.losses.vqgan_loss import VQGANLoss

BUILTIN_LOSSES = {"perceptual": {"lpips"}, "gan": {"hinge", "vanilla", "non_saturating"},
                  "autoencoder_loss": {"vqgan"}}


class ZPerceptual(PerceptualLoss):
    def forward(self, x, y):
        return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)


class ZGan(GANObjective):
    def generator_loss(self, logits_fake):
        return -logits_fake.mean()

    def discriminator_loss(self, logits_real, logits_fake):
        return logits_fake.mean() - logits_real.mean()


class ZAutoencoder(AutoencoderLoss):
    def generator_loss(self, inputs, reconstructions, quant_loss, *, step, last_layer=None):
        loss = (inputs - reconstructions).abs().mean() + quant_loss
        return loss, {"total_loss": float(loss.detach())}


BASES = {"perceptual": ZPerceptual, "gan": ZGan, "autoencoder_loss": ZAutoencoder}


def test_builtin_losses_sit_in_the_kind_their_consumer_needs() -> None:
    for kind, names in BUILTIN_LOSSES.items():
        assert {e.name for e in taming_core.entries(kind) if e.origin == "built-in"} == names
    assert set(taming_core.available("loss")) >= set().union(*BUILTIN_LOSSES.values())
    assert "loss" not in taming_core.KINDS and taming_core.KIND_ALIASES["loss"] == tuple(BUILTIN_LOSSES)
    assert issubclass(VQGANLoss, AutoencoderLoss)


def test_old_names_and_configs_keep_working() -> None:
    hinge = taming_core.create("loss", "hinge")
    assert isinstance(hinge, GANObjective) and taming_core.spec_of(hinge)["kind"] == "gan"
    assert taming_core.get_entry("loss", "lpips").kind == "perceptual"
    built = taming_core.build({"loss": {"name": "vqgan", "perceptual": None, "gan_objective": "vanilla",
                                        "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 1}},
                               "extra": {"kind": "loss", "name": "non_saturating"}})
    loss = built["loss"]
    assert isinstance(loss, AutoencoderLoss) and loss.perceptual is None
    assert type(loss.gan_objective).__name__ == "VanillaLoss"
    assert type(built["extra"]).__name__ == "NonSaturatingLoss"
    assert loss.discriminator is not None and any(k.startswith("discriminator.") for k in loss.state_dict())


def test_perceptual_spec_inside_the_vqgan_loss_builds_as_kind_perceptual() -> None:
    register("perceptual", "zz_l1")(ZPerceptual)
    try:
        loss = taming_core.build({"loss": {"name": "vqgan", "perceptual": {"name": "zz_l1"},
                                           "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 1}}})["loss"]
        assert isinstance(loss.perceptual, ZPerceptual)
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        total, logs = loss.generator_loss(x, x.flip(0), torch.zeros(()), step=0)
        assert torch.isfinite(total) and logs["p_loss"] > 0
    finally:
        unregister("perceptual", "zz_l1")


def test_alias_errors_are_one_line() -> None:
    with pytest.raises(RegistryError, match=r"unknown loss 'hing'; did you mean 'hinge'\?"):
        taming_core.create("loss", "hing")
    with pytest.raises(RegistryError, match=r"subclasses none of PerceptualLoss, GANObjective, AutoencoderLoss"):
        register("loss", "zz_plain")(dict)
    with pytest.raises(ConfigError, match=r"^x.kind: unknown component kind 'losss'"):
        taming_core.build({"x": {"kind": "losss", "name": "hinge"}})
    register("perceptual", "zz_twice")(ZPerceptual)
    register("gan", "zz_twice")(ZGan)
    try:
        with pytest.raises(RegistryError, match=r"ambiguous: registered as perceptual and gan"):
            taming_core.create("loss", "zz_twice")
        assert isinstance(taming_core.create("gan", "zz_twice"), ZGan)
    finally:
        unregister("loss", "zz_twice")
    assert "zz_twice" not in taming_core.available("loss")


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(sorted(BASES)),
       name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_registering_under_the_alias_files_by_base_class(kind, name) -> None:
    name = f"zz_{name}"
    cls = BASES[kind]
    register("loss", name)(cls)
    try:
        assert taming_core.get_entry(kind, name).obj is cls
        assert taming_core.get_entry("loss", name).kind == kind
        assert name in taming_core.available("loss") and name in taming_core.available(kind)
        assert all(name not in taming_core.available(k) for k in BASES if k != kind)
        assert f"{kind}/{name}" in taming_core.available()
    finally:
        unregister("loss", name)
    assert name not in taming_core.available("loss")


def test_plugins_cli_lists_the_alias_kind(capsys) -> None:
    assert cli_main(["plugins", "--kind", "loss"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:] if len(line.split()) >= 2]
    kinds = {name: kind for kind, name in rows if kind in BUILTIN_LOSSES}
    assert kinds["lpips"] == "perceptual" and kinds["hinge"] == "gan" and kinds["vqgan"] == "autoencoder_loss"
    assert cli_main(["plugins", "--kind", "gan"]) == 0
    assert "lpips" not in capsys.readouterr().out

"""Tests of ``fsq``, ``lfq`` and ``residual``, and of building every quantizer by name."""

from __future__ import annotations

import math

import pytest
import torch

import taming_core
from taming_core import Quantizer, ValidationError

ALL_QUANTIZERS = {
    "vq": {"codebook_size": 16, "dim": 4},
    "ema": {"codebook_size": 16, "dim": 4},
    "gumbel": {"codebook_size": 16, "dim": 4, "in_channels": 4},
    "fsq": {"levels": [4, 3, 2], "dim": 4},
    "lfq": {"codebook_bits": 4, "dim": 4},
    "residual": {"quantizer": {"name": "vq", "codebook_size": 16, "dim": 4}, "num_levels": 2},
}


def make(name: str, **kwargs):
    return taming_core.create("quantizer", name, **kwargs)


@pytest.mark.parametrize("name", sorted(ALL_QUANTIZERS))
def test_every_quantizer_by_name_and_config(name: str):
    assert name in taming_core.available("quantizer")
    torch.manual_seed(0)
    q = taming_core.build({"quantizer": {"name": name, **ALL_QUANTIZERS[name]}})["quantizer"]
    assert isinstance(q, Quantizer)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    assert out.z_q.shape == z.shape and out.loss.dim() == 0
    levels = q.num_levels
    assert out.indices.shape == ((2, 3, 3) if levels == 1 else (2, 3, 3, levels))
    assert out.indices.dtype == torch.long
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < q.codebook_size
    for key in ("usage", "perplexity", "usage_window"):
        assert isinstance(out.metrics[key], float), key
    (out.z_q.sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    bad = z.detach().clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValidationError, match="NaN or Inf"):
        q(bad)


# --------------------------------------------------------------------------- fsq
def test_fsq_index_code_bijection_and_decode():
    q = make("fsq", levels=[8, 5, 5, 5])
    assert q.codebook_size == 1000
    ids = torch.arange(1000)
    codes = q.indices_to_codes(ids)
    assert codes.shape == (1000, 4) and codes.abs().max() <= 1.0
    assert torch.equal(q.codes_to_indices(codes), ids)
    assert torch.unique(codes, dim=0).shape[0] == 1000
    # quantizing a code of the grid returns it unchanged
    z = codes.t().reshape(1, 4, 1, 1000)
    # invert the bound: tanh(x + shift)·half - offset = code·half_width
    half = (q._levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(q._levels % 2 == 0, 0.5, 0.0)
    pre = torch.atanh((codes * q._half_width + offset) / half) - torch.atanh(offset / half)
    out = q.eval()(pre.t().reshape(1, 4, 1, 1000))
    assert torch.equal(out.indices.reshape(-1), ids)
    assert torch.allclose(out.z_q, z, atol=1e-6)
    assert torch.allclose(q.decode_indices(out.indices), out.z_q, atol=1e-6)


def test_fsq_each_channel_uses_exactly_its_levels_and_gradient_passes():
    q = make("fsq", levels=[8, 3])
    z = torch.linspace(-20, 20, 2001).repeat(2, 1).reshape(1, 2, 1, 2001).requires_grad_(True)
    out = q(z)
    codes = out.z_q.detach().reshape(2, -1)
    assert torch.unique(codes[0]).numel() == 8 and torch.unique(codes[1]).numel() == 3
    assert out.metrics["usage"] == pytest.approx(10 / 24)  # the diagonal hits 10 of 24 cells
    out.z_q.sum().backward()
    assert (z.grad.abs() > 0).any()  # straight-through round, tanh gradient


def test_fsq_projection_when_dim_differs():
    torch.manual_seed(0)
    q = make("fsq", levels=[5, 5, 5], dim=16)
    assert set(q.state_dict()) == {"projection.project_in.weight", "projection.project_in.bias",
                                   "projection.project_out.weight", "projection.project_out.bias"}
    out = q.eval()(torch.randn(2, 16, 4, 4))
    assert torch.allclose(q.decode_indices(out.indices), out.z_q, atol=1e-6)
    with pytest.raises(ValueError, match="levels"):
        make("fsq", levels=[1, 4])


# --------------------------------------------------------------------------- lfq
def test_lfq_index_code_bijection_and_sign_quantization():
    q = make("lfq", codebook_size=256)
    assert q.bits == 8 and q.codebook_size == 256
    ids = torch.arange(256)
    codes = q.indices_to_codes(ids)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(q.codes_to_indices(codes), ids)
    z = torch.tensor([0.3, -2.0, 0.1, 5.0, -0.1, -0.2, 0.7, -0.01]).reshape(1, 8, 1, 1)
    out = q.eval()(z)
    assert out.indices.item() == 1 + 4 + 8 + 64
    assert torch.equal(out.z_q, torch.sign(z))
    assert torch.equal(q.decode_indices(out.indices), out.z_q)
    with pytest.raises(ValueError, match="power of two"):
        make("lfq", codebook_size=100)
    with pytest.raises(ValueError, match="exactly one"):
        make("lfq", codebook_bits=4, codebook_size=16)


def test_lfq_entropy_loss_values():
    q = make("lfq", codebook_bits=3, entropy_weight=1.0, commitment_weight=0.0,
             entropy_temperature=0.01)
    # confident rows spread evenly over all 8 codes: per-sample entropy ~0, batch entropy log 8
    spread = q.indices_to_codes(torch.arange(8)).t().reshape(1, 3, 1, 8)
    loss_spread, per_sample, batch = q.entropy_loss(spread.permute(0, 2, 3, 1).reshape(-1, 3))
    assert per_sample.item() == pytest.approx(0.0, abs=1e-6)
    assert batch.item() == pytest.approx(math.log(8), rel=1e-5)
    # every row on one code: batch entropy ~0, so the loss is higher
    same = spread[..., :1].repeat(1, 1, 1, 8)
    loss_same = q(same).loss
    assert loss_same.item() > loss_spread.item() + 2.0
    # the factorised fallback agrees on the per-bit marginal bound
    big = make("lfq", codebook_bits=12, entropy_weight=1.0, commitment_weight=0.0)
    rows = big.indices_to_codes(torch.arange(4096))
    _, _, batch_big = big.entropy_loss(rows)
    assert batch_big.item() == pytest.approx(12 * math.log(2), rel=1e-4)


def test_lfq_entropy_loss_descent_spreads_codes():
    torch.manual_seed(0)
    q = make("lfq", codebook_bits=2, entropy_weight=1.0, commitment_weight=0.0,
             entropy_temperature=0.5)
    rows = (0.5 + 0.1 * torch.randn(64, 2)).requires_grad_(True)  # all on one code
    assert q.codes_to_indices(torch.sign(rows.detach())).unique().numel() == 1
    opt = torch.optim.SGD([rows], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        q.entropy_loss(rows)[0].backward()
        opt.step()
    assert q.codes_to_indices(torch.sign(rows.detach())).unique().numel() == 4


# --------------------------------------------------------------------------- residual
def test_residual_reduces_error_per_level_and_decodes():
    torch.manual_seed(0)
    spec = {"name": "ema", "codebook_size": 32, "dim": 4, "kmeans_init": True,
            "dead_code_threshold": 0}
    q = make("residual", quantizer=spec, num_levels=3)
    z = torch.randn(4, 4, 8, 8)
    out = q(z)
    errors = [out.metrics[f"level{i}_residual_mse"] for i in range(3)]
    assert errors[0] < z.pow(2).mean().item()
    assert errors[0] > errors[1] > errors[2]
    assert out.indices.shape == (4, 8, 8, 3) and q.num_levels == 3
    assert (out.z_q - z).pow(2).mean().item() == pytest.approx(errors[2], rel=1e-4)
    q.eval()
    out = q(z)
    assert torch.allclose(q.decode_indices(out.indices), out.z_q, atol=1e-5)
    assert 0 < out.metrics["usage"] <= 1 and "level2_perplexity" in out.metrics


def test_residual_from_instance_list_and_shared_codebook():
    torch.manual_seed(0)
    built = taming_core.build({"quantizer": {
        "name": "residual", "num_levels": 3,
        "quantizer": {"name": "vq", "codebook_size": 8, "dim": 2}}})["quantizer"]
    first, second = built.level(0), built.level(1)
    assert first is not second
    assert not torch.equal(first.embedding.weight, second.embedding.weight)  # re-drawn copies
    shared = make("residual", quantizer={"name": "vq", "codebook_size": 8, "dim": 2}, num_levels=4,
                  shared_codebook=True)
    assert shared.level(0) is shared.level(3) and len(list(shared.parameters())) == 1
    mixed = make("residual", quantizer=[{"name": "vq", "codebook_size": 8, "dim": 2},
                                        {"name": "fsq", "levels": [3, 3]}])
    assert mixed.num_levels == 2 and mixed.codebook_size == 9
    assert mixed(torch.randn(1, 2, 2, 2)).indices.shape == (1, 2, 2, 2)
    with pytest.raises(ValidationError, match="num_levels"):
        make("residual", quantizer={"name": "vq", "codebook_size": 8, "dim": 2})
    with pytest.raises(ValidationError, match="keep the latent shape"):
        make("residual", quantizer={"name": "gumbel", "codebook_size": 8, "dim": 3,
                                    "in_channels": 2}, num_levels=2)(torch.randn(1, 2, 2, 2))

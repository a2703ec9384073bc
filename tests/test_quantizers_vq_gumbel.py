"""Tests of the ``vq`` and ``gumbel`` quantizers and the shared usage helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import taming_core
from taming_core import QuantizerOutput, ValidationError
from taming_core.quantization import UsageTracker, code_counts, usage_metrics
from taming_plugins.quantizers.gumbel import TemperatureSchedule

FIXTURES = Path(__file__).parent / "fixtures" / "taming_reference"
REFERENCE_TOL = 1e-4


def make(name: str, **kwargs):
    return taming_core.create("quantizer", name, **kwargs)


# --------------------------------------------------------------------------- usage helpers
def test_usage_and_perplexity_on_hand_made_example():
    # codes 0,0,1,3 of K=4: usage 3/4, frequencies (1/2, 1/4, 0, 1/4)
    counts = code_counts(torch.tensor([[0, 0], [1, 3]]), 4)
    assert counts.tolist() == [2.0, 1.0, 0.0, 1.0]
    metrics = usage_metrics(counts)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert metrics["usage"].item() == pytest.approx(0.75)
    assert metrics["perplexity"].item() == pytest.approx(math.exp(entropy), rel=1e-6)
    uniform = usage_metrics(torch.ones(8))
    assert uniform["perplexity"].item() == pytest.approx(8.0, rel=1e-6)


def test_usage_tracker_window():
    tracker = UsageTracker(4, window=2)
    assert tracker.window_usage().item() == 0.0
    tracker.update(torch.tensor([1.0, 0, 0, 0]))
    tracker.update(torch.tensor([0, 1.0, 0, 0]))
    assert tracker.window_usage().item() == pytest.approx(0.5)
    tracker.update(torch.tensor([0, 0, 1.0, 0]))  # code 0 falls out of the 2-batch window
    assert tracker.window_usage().item() == pytest.approx(0.5)
    assert "last_used" not in tracker.state_dict()


# --------------------------------------------------------------------------- vq
def test_vq_shapes_registry_and_state_dict_keys():
    torch.manual_seed(0)
    q = make("vq", codebook_size=16, dim=4)
    out = q(torch.randn(2, 4, 3, 5))
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == (2, 4, 3, 5) and out.z_q.dtype == torch.float32
    assert out.indices.shape == (2, 3, 5) and out.indices.dtype == torch.long
    assert out.loss.dim() == 0
    assert {"usage", "perplexity", "usage_window"} <= set(out.metrics)
    assert list(q.state_dict()) == ["embedding.weight"]
    assert q.codebook_size == 16 and q.num_levels == 1


def test_vq_picks_nearest_code_and_decodes():
    q = make("vq", codebook_size=3, dim=2).eval()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    z = torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.1, -0.1], [2.0, 0.0]]).t().reshape(1, 2, 1, 4)
    out = q(z)
    assert out.indices.tolist() == [[[1, 2, 0, 1]]]
    assert torch.equal(q.decode_indices(out.indices), out.z_q)


def test_vq_straight_through_gradient_is_identity():
    torch.manual_seed(0)
    q = make("vq", codebook_size=8, dim=3)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    weight = torch.randn(2, 3, 4, 4)
    (q(z).z_q * weight).sum().backward()
    assert torch.allclose(z.grad, weight)


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_beta_placement(legacy: bool):
    beta = 0.25
    q = make("vq", codebook_size=4, dim=2, beta=beta, legacy_beta=legacy)
    z = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = q(z)
    out.loss.backward()
    zq = q.embedding.weight[out.indices.reshape(-1)].detach()
    rows = z.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    diff = rows - zq
    n = diff.numel()
    assert out.loss.item() == pytest.approx((1 + beta) * diff.pow(2).mean().item(), rel=1e-5)
    # d/dz of w_commit·mean((z-sg e)²) = w_commit·2(z-e)/n; codebook gets w_code·2(e-z)/n.
    w_commit, w_code = (1.0, beta) if legacy else (beta, 1.0)
    grad_z = z.grad.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.allclose(grad_z, w_commit * 2 * diff / n, atol=1e-6)
    expected_code_grad = torch.zeros_like(q.embedding.weight).index_add_(
        0, out.indices.reshape(-1), w_code * 2 * (zq - rows) / n)
    assert torch.allclose(q.embedding.weight.grad, expected_code_grad, atol=1e-6)


def test_vq_reproduces_original_reference_fixture():
    io = torch.load(FIXTURES / "vqgan_f4.io.pt", weights_only=True)
    state = torch.load(FIXTURES / "vqgan_f4.ckpt", weights_only=True)["state_dict"]
    weight = state["quantize.embedding.weight"]
    q = make("vq", codebook_size=weight.shape[0], dim=weight.shape[1], legacy_beta=True).eval()
    q.load_state_dict({"embedding.weight": weight})
    out = q(io["z"])
    assert torch.equal(out.indices.reshape(-1), io["indices"].reshape(-1))
    assert torch.allclose(out.z_q, io["zq"], atol=REFERENCE_TOL)
    assert out.loss.item() == pytest.approx(io["emb_loss"].item(), abs=REFERENCE_TOL)


def test_vq_options_codebook_dim_l2_entropy():
    torch.manual_seed(0)
    q = make("vq", codebook_size=32, dim=8, codebook_dim=3, l2_normalize=True, entropy_weight=0.1)
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = q(z)
    assert out.z_q.shape == z.shape
    assert "entropy_loss" in out.metrics
    assert q.embedding.weight.shape == (32, 3)
    out.loss.backward()
    assert q.projection.project_in.weight.grad is not None
    # the decoded ids agree with the forward output (eval: no tracker side effects)
    q.eval()
    out = q(z.detach())
    assert torch.allclose(q.decode_indices(out.indices), out.z_q, atol=1e-6)
    codes = q.codebook()
    assert torch.allclose(codes.norm(dim=1), torch.ones(32), atol=1e-5)


def test_vq_usage_window_counts_only_training_batches():
    q = make("vq", codebook_size=4, dim=1, usage_window=10)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.arange(4.0).reshape(4, 1))
    z = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    assert q(z).metrics["usage_window"] == pytest.approx(0.5)
    q.eval()
    out = q(torch.tensor([2.0, 3.0]).reshape(1, 1, 1, 2))
    assert out.metrics["usage"] == pytest.approx(0.5)
    assert out.metrics["usage_window"] == pytest.approx(0.5)


@pytest.mark.parametrize("name,kwargs", [
    ("vq", {"codebook_size": 4, "dim": 2}),
    ("gumbel", {"codebook_size": 4, "dim": 3, "in_channels": 2}),
])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises_without_touching_codebook(name, kwargs, bad):
    q = make(name, **kwargs)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.zeros(1, 2, 2, 2)
    z[0, 0, 1, 1] = bad
    with pytest.raises(ValidationError, match="NaN or Inf"):
        q(z)
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key])


def test_wrong_channels_and_dtype_raise():
    q = make("vq", codebook_size=4, dim=2)
    with pytest.raises(ValidationError, match="B×2×H×W"):
        q(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValidationError, match="float"):
        q(torch.zeros(1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValidationError, match=r"values must lie in \[0, 3\]"):
        q.decode_indices(torch.full((1, 2, 2), 4))


# --------------------------------------------------------------------------- gumbel
def test_gumbel_shapes_keys_and_eval_determinism():
    torch.manual_seed(0)
    q = make("gumbel", codebook_size=16, dim=5, in_channels=3)
    assert set(q.state_dict()) == {"proj.weight", "proj.bias", "embed.weight"}
    z = torch.randn(2, 3, 4, 4)
    out = q(z)
    assert out.z_q.shape == (2, 5, 4, 4) and out.indices.shape == (2, 4, 4)
    q.eval()
    first, second = q(z), q(z)
    assert torch.equal(first.indices, second.indices) and torch.equal(first.z_q, second.z_q)
    assert torch.equal(first.indices, q.proj(z).argmax(1))
    assert torch.allclose(q.decode_indices(first.indices), first.z_q, atol=1e-6)


def test_gumbel_training_is_stochastic_hard_and_straight_through():
    torch.manual_seed(0)
    q = make("gumbel", codebook_size=8, dim=2, in_channels=3)
    z = torch.randn(4, 3, 4, 4)
    a, b = q(z), q(z)
    assert not torch.equal(a.indices, b.indices)  # Gumbel noise in training
    # hard samples: z_q equals the selected code exactly
    assert torch.allclose(q.decode_indices(a.indices), a.z_q, atol=1e-6)
    a.z_q.sum().backward()  # straight-through: gradient reaches the logits' conv
    assert q.proj.weight.grad is not None and q.proj.weight.grad.abs().sum() > 0


def test_gumbel_kl_loss_matches_formula():
    torch.manual_seed(0)
    kl_weight = 0.1
    q = make("gumbel", codebook_size=6, dim=2, in_channels=3, kl_weight=kl_weight)
    z = torch.randn(2, 3, 2, 2)
    probs = torch.softmax(q.proj(z), dim=1)
    expected = kl_weight * (probs * torch.log(probs * 6 + 1e-10)).sum(1).mean()
    assert q(z).loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # uniform logits give zero KL
    with torch.no_grad():
        q.proj.weight.zero_()
        q.proj.bias.zero_()
    assert abs(q(z).loss.item()) < 1e-7


def test_gumbel_temperature_schedule():
    q = make("gumbel", codebook_size=4, dim=2, in_channels=2, temperature=1.0,
             min_temperature=0.1, anneal_steps=10, anneal="exponential")
    assert q.temperature == pytest.approx(1.0)
    for _ in range(5):
        q(torch.randn(1, 2, 2, 2))
    assert q.temperature == pytest.approx(0.1 ** 0.5)
    q.set_step(100)
    assert q.temperature == pytest.approx(0.1)
    lin = TemperatureSchedule(start=1.0, end=0.5, steps=4, kind="linear")
    assert [lin(s) for s in (0, 2, 4, 8)] == pytest.approx([1.0, 0.75, 0.5, 0.5])
    cos = TemperatureSchedule(start=1.0, end=0.0 + 0.2, steps=2, kind="cosine")
    assert cos(1) == pytest.approx(0.6)
    assert TemperatureSchedule(start=0.7)(1000) == pytest.approx(0.7)
    with pytest.raises(ValidationError, match="anneal"):
        TemperatureSchedule(kind="bogus")

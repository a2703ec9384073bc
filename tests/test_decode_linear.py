"""``taming_core.ops.decode_linear``: same results as ``nn.Linear``, fast path taken
only where it is safe."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taming_core.ops import decode_linear
from taming_core.ops import linear as linear_mod


#: The library's weight-size rule, kept for the test that checks it.
DEFAULT_MIN_WEIGHT_BYTES = linear_mod.DECODE_MIN_WEIGHT_BYTES


@pytest.fixture(autouse=True)
def blocked_path_for_small_layers(monkeypatch):
    """The test layers are small: let them take the blocked path."""
    monkeypatch.setattr(linear_mod, "DECODE_MIN_WEIGHT_BYTES", 0)


def _layer(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(in_features * 1000 + out_features)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("shape", [(1, 32), (2, 1, 32), (4, 3, 32), (16, 32), (17, 32), (0, 32)])
@pytest.mark.parametrize("out_features", [8, 9, 33, 1025, 17])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear(shape, out_features, bias):
    layer = _layer(shape[-1], out_features, bias)
    x = torch.randn(shape)
    got = decode_linear(x, layer)
    want = F.linear(x, layer.weight, layer.bias)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_few_rows_take_the_blocked_path(monkeypatch):
    layer = _layer(64, 96)
    x = torch.randn(3, 64)
    want = layer(x)

    def refuse(*args, **kwargs):
        raise AssertionError("F.linear used for a few-row CPU float32 input")

    monkeypatch.setattr(linear_mod.F, "linear", refuse)
    got = decode_linear(x, layer)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("case", ["many_rows", "bfloat16", "hooked", "subclass",
                                  "indivisible", "transposed_weight", "autocast"])
def test_other_inputs_go_through_the_layer(case):
    layer = _layer(32, 48)
    x = torch.randn(2, 32)
    calls = []
    if case == "many_rows":
        x = torch.randn(linear_mod.DECODE_MAX_ROWS + 1, 32)
    elif case == "bfloat16":
        layer = layer.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    elif case == "hooked":
        layer.register_forward_hook(lambda mod, inp, out: calls.append("hook"))
    elif case == "subclass":
        class Scaled(nn.Linear):
            def forward(self, inp: torch.Tensor) -> torch.Tensor:
                calls.append("forward")
                return super().forward(inp)
        layer = Scaled(32, 48)
    elif case == "indivisible":
        layer = _layer(32, 11 * 13)
    elif case == "transposed_weight":
        with torch.no_grad():
            layer.weight = nn.Parameter(torch.randn(32, 48).t())
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = decode_linear(x, layer), layer(x)
        assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
        return
    got = decode_linear(x, layer)
    assert torch.equal(got, F.linear(x, layer.weight, layer.bias))
    if case in ("hooked", "subclass"):
        assert calls, "the layer's own forward/hooks must run"


def test_gradients_match_linear():
    layer = _layer(16, 24)
    x = torch.randn(2, 16, requires_grad=True)
    decode_linear(x, layer).square().sum().backward()
    got = (x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    x.grad, layer.weight.grad, layer.bias.grad = None, None, None
    layer(x).square().sum().backward()
    for a, b in zip(got, (x.grad, layer.weight.grad, layer.bias.grad)):
        assert torch.allclose(a, b, atol=1e-5)


def test_environment_switch_disables_the_blocked_path():
    code = "from taming_core.ops import linear; print(linear.DECODE_MAX_ROWS)"
    env = {**os.environ, linear_mod.DISABLE_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "0"


def test_zero_max_rows_uses_the_layer(monkeypatch):
    monkeypatch.setattr(linear_mod, "DECODE_MAX_ROWS", 0)
    layer = _layer(16, 24)
    x = torch.randn(1, 16)
    assert torch.equal(decode_linear(x, layer), F.linear(x, layer.weight, layer.bias))


def test_small_weights_use_the_layer_and_large_ones_the_blocked_path(monkeypatch):
    monkeypatch.setattr(linear_mod, "DECODE_MIN_WEIGHT_BYTES", DEFAULT_MIN_WEIGHT_BYTES)
    small = _layer(128, 128)  # 64 KB: stays in cache, F.linear is faster
    large = _layer(512, 512)  # 1 MiB: streamed from memory every step
    calls = []
    real_baddbmm = torch.baddbmm

    def counting_baddbmm(*args, **kwargs):
        calls.append(args[1].shape)
        return real_baddbmm(*args, **kwargs)

    monkeypatch.setattr(torch, "baddbmm", counting_baddbmm)
    x_small, x_large = torch.randn(1, 128), torch.randn(1, 512)
    assert torch.equal(decode_linear(x_small, small), small(x_small))
    assert not calls
    assert torch.allclose(decode_linear(x_large, large), large(x_large), atol=1e-5)
    assert len(calls) == 1


def test_fast_decoding_routes_plain_linears_and_restores_them(monkeypatch):
    class Scaled(nn.Linear):
        pass

    model = nn.Sequential(_layer(32, 48), nn.GELU(), _layer(48, 16), Scaled(16, 16))
    hooked = _layer(16, 8)
    hooked.register_forward_hook(lambda mod, inp, out: None)
    model.append(hooked)
    x = torch.randn(2, 32)
    want = model(x)
    blocked = []
    real = linear_mod._blocked_linear
    monkeypatch.setattr(linear_mod, "_blocked_linear", lambda *a: blocked.append(a[1].shape) or real(*a))
    with linear_mod.fast_decoding(model):
        got = model(x)
        many = model(torch.randn(linear_mod.DECODE_MAX_ROWS + 1, 32))  # too many rows: F.linear
    assert torch.allclose(got, want, atol=1e-5) and many.shape[0] == linear_mod.DECODE_MAX_ROWS + 1
    assert blocked == [(48, 32), (16, 48)], "only the plain, hook-free Linears take the fast path"
    assert all("forward" not in m.__dict__ for m in model.modules())
    blocked.clear()
    model(x)
    assert not blocked, "the layers are restored on exit"

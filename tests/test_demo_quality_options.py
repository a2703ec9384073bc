"""Options added for the demo's picture (issue 16): the VQGAN downsampling pad and the
cosine learning-rate decay."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import taming_core
from taming_plugins.tokenizers._vqgan_modules import Downsample, set_downsample_padding
from taming_plugins.training.config import OptimConfig
from taming_plugins.training.trainer import Trainer

SPEC = {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "z_channels": 8, "resolution": 16, "embed_dim": 4, "n_embed": 32, "quantizer": {"name": "vq"}}


def _rot180_symmetric(down: Downsample) -> Downsample:
    with torch.no_grad():  # a kernel equal to its 180° rotation
        w = down.conv.weight
        w.copy_(w + w.flip(-1).flip(-2))
    return down


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), half=st.integers(1, 6), channels=st.integers(1, 4))
def test_centered_downsample_commutes_with_rotation(seed, half, channels):
    """``centered`` favours no edge: rotating the input by 180° rotates the output
    (for a rotation-symmetric kernel); the original right/bottom pad does not."""
    torch.manual_seed(seed)
    x = torch.randn(2, channels, 2 * half, 2 * half)
    rot = lambda t: t.flip(-1).flip(-2)  # noqa: E731
    down = Downsample(channels, with_conv=True)
    set_downsample_padding(down, "centered")
    _rot180_symmetric(down)
    with torch.no_grad():
        y = down(x)
        assert y.shape == (2, channels, half, half)
        torch.testing.assert_close(down(rot(x)), rot(y), atol=1e-5, rtol=1e-5)


def test_original_and_symmetric_downsample_favour_an_edge():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 8, 8)
    for padding in ("original", "symmetric"):
        down = Downsample(2, with_conv=True)
        set_downsample_padding(down, padding)
        _rot180_symmetric(down)
        with torch.no_grad():
            y = down(x)
            assert y.shape == (1, 2, 4, 4)
            assert not torch.allclose(down(x.flip(-1).flip(-2)), y.flip(-1).flip(-2), atol=1e-3)


@pytest.mark.parametrize("padding", ["symmetric", "centered"])
def test_downsample_padding_is_stored_and_not_exported(padding, tmp_path):
    from taming_plugins.compat import save_taming_checkpoint

    original = taming_core.create("tokenizer", **SPEC).eval()
    other = taming_core.create("tokenizer", **SPEC, downsample_padding=padding).eval()
    other.load_state_dict(original.state_dict())  # same weights and shapes, other pad
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = original.encoder(x), other.encoder(x)
    assert a.shape == b.shape and not torch.allclose(a, b)
    assert "downsample_padding" not in taming_core.spec_of(original)  # original parity untouched
    rebuilt = taming_core.build({"tokenizer": taming_core.spec_of(other)})["tokenizer"].eval()
    rebuilt.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.encoder(x), b)
    with pytest.raises(taming_core.ConfigError, match="downsample_padding"):
        save_taming_checkpoint(tmp_path / "x.ckpt", other)
    with pytest.raises(taming_core.ConfigError, match="downsample_padding"):
        taming_core.create("tokenizer", **SPEC, downsample_padding="middle")


class _Schedule(Trainer):
    """Only the learning-rate schedule of a trainer (no model is needed for ``lr_at``)."""

    def __init__(self, lr: float, warmup: int, decay: str, total: int) -> None:  # noqa: D107
        self.lr, self.optim_warmup, self.optim_decay, self.optim_total_steps = lr, warmup, decay, total


@settings(max_examples=50, deadline=None)
@given(warmup=st.integers(0, 50), extra=st.integers(1, 500), lr=st.floats(1e-5, 1e-1))
def test_cosine_decay_warms_up_then_falls_to_zero(warmup, extra, lr):
    total = warmup + extra
    sched = _Schedule(lr, warmup, "cosine", total)
    values = [sched.lr_at(s) for s in range(total + 1)]
    assert all(0.0 <= v <= lr * (1 + 1e-9) for v in values)
    after = values[warmup:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))  # non-increasing after warm-up
    assert math.isclose(values[warmup], lr) and values[total] <= 1e-12
    assert [_Schedule(lr, warmup, "none", total).lr_at(s) for s in range(warmup, total)] == [lr] * extra


def test_lr_decay_is_validated():
    OptimConfig(lr_decay="cosine").validate("optim")
    with pytest.raises(taming_core.ConfigError, match=r"optim\.lr_decay"):
        OptimConfig(lr_decay="linear").validate("optim")


def test_bf16_auto_follows_the_hardware_and_is_validated(monkeypatch, tmp_path):
    from taming_plugins.training import runtime
    from taming_plugins.training.config import TokenizerTrainConfig

    cpu = torch.device("cpu")
    assert runtime.resolve_bf16(True, cpu)[0] is True and runtime.resolve_bf16(False, cpu)[0] is False
    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        on, why = runtime.resolve_bf16("auto", cpu)
        assert on is native and ("has native bf16" in why) is native
    with pytest.raises(taming_core.ConfigError, match=r"optim.bf16: expected true, false or 'auto', got 'yes'"):
        TokenizerTrainConfig.from_dict({"tokenizer": {"name": "vqgan"}, "optim": {"bf16": "yes"}})


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch, tmp_path):
    from taming_plugins.training import runtime

    cpuinfo = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert runtime.cpu_has_native_bf16() is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert runtime.cpu_has_native_bf16() is False
    cpuinfo.unlink()
    assert runtime.cpu_has_native_bf16() is False

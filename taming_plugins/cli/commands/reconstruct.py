"""``taming reconstruct``: images -> reconstructions (PNG) + metrics.

Usage::

    taming reconstruct --pipeline runs/demo/pipeline --input photos --out recon
    taming reconstruct --tokenizer runs/demo/tokenizer --input my_images/ --size 256

``--input`` is an image folder (centred crops), ``photos`` (held-out crops of the bundled
photos) or ``fashion-mnist`` (its test split). Writes OUT/recon_0000.png ... (one per
image), OUT/comparison.png (every image above its reconstruction, in rows of 8; up to
64 images) and, through
:mod:`taming_plugins.eval`, OUT/eval.json, OUT/eval.md and OUT/codebook_histogram.png
(PSNR, SSIM, codebook usage and perplexity; LPIPS when its weights are on disk). An
existing ``--out`` must be empty or written by ``taming reconstruct`` (whose old files
are removed first, so no stale reconstruction survives).

Exit codes: 0 success, 1 runtime failure (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from taming_core import Tokenizer
from taming_plugins.eval.evaluate import ReconstructionModel

from ..common import add_device_flag, add_seed_flag, add_verify_flag, resolve_device, seed_everything

DEFAULT_SIZE = 256
DEFAULT_NUM_IMAGES = 64
DEFAULT_BATCH = 8
DEFAULT_OUT = "reconstructions"
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "usage")
COMPARISON_FILE = "comparison.png"
#: Columns of comparison.png (each row of inputs is followed by their reconstructions).
COMPARISON_COLUMNS = 8
#: Images shown in comparison.png at most.
COMPARISON_IMAGES = 64
OWN_FILES = ("recon_*.png", COMPARISON_FILE, "eval.json", "eval.md", "codebook_histogram.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct images with a tokenizer/pipeline and report metrics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--pipeline", metavar="DIR", help="directory written by Pipeline.save")
    add_verify_flag(p)
    model.add_argument("--tokenizer", metavar="PATH", help="stage-1 run/checkpoint directory, a "
                       "`taming convert` directory or an original taming .ckpt")
    p.add_argument("--input", required=True, metavar="FOLDER_OR_SPEC",
                   help="image folder, 'photos' or 'fashion-mnist'")
    p.add_argument("--size", type=int, help="image side in pixels (default: the tokenizer's "
                   f"training resolution, else {DEFAULT_SIZE})")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                   help=f"images to reconstruct (default {DEFAULT_NUM_IMAGES})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"batch size (default {DEFAULT_BATCH})")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma-separated subset of psnr,ssim,lpips,rfid,usage "
                   f"(default {','.join(DEFAULT_METRICS)})")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, _parser=p)


class SavingReconstructor(ReconstructionModel):
    """Wraps a tokenizer/pipeline: ``reconstruct`` also writes every reconstruction as a PNG.

    :func:`taming_plugins.eval.evaluate` calls ``reconstruct`` once per batch, in data-set
    order, so images and metrics come from one pass.
    """

    def __init__(self, model: Any, tokenizer: Tokenizer, out: Path, keep: int) -> None:
        self.model, self.out, self.keep = model, out, keep
        self.codebook_size = int(tokenizer.vocab_size)
        self.count = 0
        self.shown: list[Tensor] = []

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> tuple[Tensor, Any]:
        from taming_plugins.training.artifacts import save_image_grid

        xrec, encoded = self.model.reconstruct(images)
        xrec = xrec.clamp(-1, 1)
        for image in xrec:
            save_image_grid(image[None], self.out / f"recon_{self.count:04d}.png", nrow=1)
            self.count += 1
        room = self.keep - sum(x.shape[0] for x in self.shown)
        if room > 0:
            self.shown.append(torch.stack([images[:room].cpu(), xrec[:room].cpu()]))
        return xrec, encoded


def comparison_rows(shown: Tensor, columns: int) -> Tensor:
    """2×K×C×H×W (inputs, reconstructions) -> images ordered as rows of ``columns``
    inputs, each followed by the row of their reconstructions (the last rows padded)."""
    k = shown.shape[1]
    cols = min(columns, k)
    rows = []
    for start in range(0, k, cols):
        for which in (0, 1):
            row = shown[which, start:start + cols]
            if row.shape[0] < cols:  # pad the last rows with white
                row = torch.cat([row, torch.ones(cols - row.shape[0], *row.shape[1:])])
            rows.append(row)
    return torch.cat(rows)


def _load_model(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """(model with reconstruct(), its tokenizer)."""
    if args.pipeline:
        import taming_core

        pipeline = taming_core.Pipeline.load(args.pipeline, map_location=device, verify=args.verify)
        return pipeline, pipeline.tokenizer
    from taming_plugins.training.artifacts import load_frozen_tokenizer

    tokenizer = load_frozen_tokenizer(args.tokenizer).to(device)
    return tokenizer, tokenizer


def _default_size(tokenizer: Any) -> int:
    import taming_core

    spec = taming_core.spec_of(tokenizer) or {}
    return int(spec.get("resolution", DEFAULT_SIZE))


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    for flag in ("num_images", "batch_size", "size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    from taming_core.errors import ValidationError
    from taming_plugins.data import get_dataset
    from taming_plugins.eval import evaluate, parse_metrics, write_report
    from taming_plugins.training.artifacts import save_image_grid

    try:
        metrics = parse_metrics(args.metrics)
    except ValidationError as exc:
        parser.error(str(exc))
    if "fid" in metrics:
        parser.error("--metrics: fid rates samples, not reconstructions; use `taming eval --pipeline`")
    from ._outdir import prepare_out

    out = prepare_out(args.out, "reconstruct", OWN_FILES)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model, tokenizer = _load_model(args, device)
    size = args.size or _default_size(tokenizer)
    kwargs = {"length": args.num_images} if args.input == "photos" else {}
    dataset = get_dataset(args.input, size, split="all", **kwargs)  # a folder: every image
    saver = SavingReconstructor(model, tokenizer, out, COMPARISON_IMAGES)
    if isinstance(model, torch.nn.Module):
        model.to(device).eval()
    report = evaluate(saver, dataset, metrics=metrics, num_images=args.num_images,
                      batch_size=args.batch_size, device=device, dataset_spec=str(args.input),
                      seed=args.seed, progress=False)
    shown = torch.cat(saver.shown, dim=1)  # 2×K×C×H×W: inputs, reconstructions
    save_image_grid(comparison_rows(shown, COMPARISON_COLUMNS), out / COMPARISON_FILE,
                    nrow=min(COMPARISON_COLUMNS, shown.shape[1]))
    source = {"pipeline" if args.pipeline else "tokenizer": args.pipeline or args.tokenizer,
              "input": str(args.input), "size": size, "device": str(device)}
    command = " ".join(["taming", "reconstruct", f"--{'pipeline' if args.pipeline else 'tokenizer'}",
                        shlex.quote(args.pipeline or args.tokenizer), "--input", shlex.quote(str(args.input)),
                        "--size", str(size), "--num-images", str(args.num_images), "--metrics",
                        ",".join(metrics), "--out", shlex.quote(str(out))])
    paths = write_report(report, out, title="taming reconstruct", command=command, source=source)
    for name, value in report.metrics.items():
        print(f"{name}: {value:.4f}")
    for name, reason in report.unavailable.items():
        print(f"{name}: unavailable ({reason})")
    print(f"wrote {saver.count} reconstructions, {out / COMPARISON_FILE} ({shown.shape[1]} of them), "
          f"{', '.join(str(p) for p in paths.values())}")
    return 0

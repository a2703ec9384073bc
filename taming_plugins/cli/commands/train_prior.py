"""``taming train-prior``: train a stage-2 prior on the tokens of a frozen tokenizer.

Usage::

    taming train-prior --tokenizer runs/tok --data photos/ --out runs/prior --steps 2000
    taming train-prior --tokenizer runs/tok --data animals/ --conditioner class_label --out runs/cls
    taming train-prior --out runs/prior --resume --steps 4000      # continue (and extend) the run

Tokenizes the dataset once with the frozen tokenizer (cached, memory-mapped), then
trains a prior on its own objective. Writes checkpoints/, metrics.jsonl, sample grids
(images/*.png) and a ready pipeline, OUT/pipeline, refreshed with every checkpoint:
the next command is ``taming sample --pipeline OUT/pipeline``. Options not given as
flags come from --config (YAML/JSON with the sections of PriorTrainConfig: tokenizer,
prior, conditioner, sampler, data, optim, train).

Defaults come from the tokenizer: ``--image-size`` is the size it was trained at. An
image folder gives several random crops per image (``--crops-per-image``, default
``auto``: about 2048 crops in all); ``--conditioner class_label`` on a folder with one
sub-folder per class trains a class-conditional prior whose pipeline knows the class
names (``taming sample --label NAME``). ``--resume`` restores the run's stored
configuration (data, batch, architectures); flags that contradict it are refused by
name, except steps, intervals and the device (``--steps`` extends a run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from ..common import add_device_flag, add_run_flags, add_seed_flag, apply_run_overrides, resume_option

#: Command-line flags that override ``(section, key)`` of the run config (``None``: top level).
OVERRIDES = {
    "tokenizer": (None, "tokenizer"), "data": ("data", "train"), "out": ("train", "out"),
    "image_size": ("data", "image_size"), "steps": ("train", "steps"),
    "batch_size": ("data", "batch_size"), "lr": ("optim", "learning_rate"),
    "pkeep": ("train", "pkeep"), "cfg_drop": ("train", "cfg_drop"),
    "cond_offset": ("train", "cond_offset"), "ckpt_every": ("train", "ckpt_every"),
    "sample_every": ("train", "image_every"), "log_every": ("train", "log_every"),
    "cache_dir": ("data", "cache_dir"), "device": ("train", "device"), "seed": ("train", "seed"),
    "max_items": ("data", "max_items"),
}
CONDITIONERS = ("sos", "class_label")
DEFAULT_DATA = "photos"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior", help="train a prior (gpt, maskgit, pixelcnn...) over a frozen tokenizer's tokens (stage 2)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="stage-1 run or checkpoint directory, a `taming convert` "
                   "directory or an original taming .ckpt (stored with the run; not needed with --resume)")
    p.add_argument("--data", help="'photos', 'fashion-mnist' or an image folder (default photos)")
    p.add_argument("--out", help="run directory (checkpoints, samples, metrics, pipeline/)")
    p.add_argument("--config", help="YAML/JSON file with stage-2 options (prior, conditioner, ...)")
    p.add_argument("--prior", metavar="NAME", help="registered prior: gpt (default), maskgit, pixelcnn, "
                   "...; options of the config's prior spec that it accepts are kept")
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
    add_run_flags(p)
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, device=None, seed=None, _parser=p)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    from taming_core import load_config
    from taming_plugins.training.config import upgrade_stage2_config

    config = upgrade_stage2_config(load_config(args.config)) if args.config else {}
    config = apply_run_overrides(config, args, OVERRIDES)
    if args.precision is not None:
        config.setdefault("optim", {})["bf16"] = args.precision == "bf16"
    return config


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


def new_run_config(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """The config of a new run: flags over --config, with defaults from the tokenizer and
    the data (image size, crops per image, class names)."""
    from taming_plugins.training.artifacts import tokenizer_image_size

    if args.prior is not None:
        config["prior"] = _prior_spec(args.prior, config.get("prior"))
    parser: argparse.ArgumentParser = args._parser
    if "out" not in config.get("train", {}):
        parser.error("--out is required (or train.out in --config)")
    if "tokenizer" not in config:
        parser.error("--tokenizer is required (or tokenizer in --config)")
    data = config.setdefault("data", {})
    if "image_size" not in data:
        size = tokenizer_image_size(config["tokenizer"])
        if size is None:
            raise ValueError(f"{config['tokenizer']}: cannot tell the size the tokenizer was trained at; "
                             "give --image-size")
        data["image_size"] = size
    spec = data.setdefault("train", DEFAULT_DATA)
    kwargs = dict(data.get("train_kwargs") or {})
    if _is_folder(spec):
        kwargs.setdefault("crops_per_image", _crops(args.crops_per_image))
    elif args.crops_per_image is not None:
        raise ValueError(f"--crops-per-image applies to image folders, not {spec!r}")
    if args.conditioner == "class_label":
        kwargs["return_labels"] = True
        config["conditioner"] = _class_conditioner(spec, int(data["image_size"]), kwargs)
    elif args.conditioner is not None:
        config["conditioner"] = {"name": args.conditioner}
    data["train_kwargs"] = kwargs
    return config


def _cap_batch(config: dict[str, Any]) -> str:
    """Fit the batch to the data before any tokenizing; returns the line describing the data."""
    from taming_plugins.data import ImageFolder, get_dataset
    from taming_plugins.training.config import PriorTrainConfig

    data = PriorTrainConfig.from_dict(config).data
    dataset = get_dataset(data.train, data.image_size, split="train", **data.train_kwargs)
    n = len(dataset)  # type: ignore[arg-type]
    if data.max_items is not None:
        n = min(n, data.max_items)
    what = dataset.describe() if isinstance(dataset, ImageFolder) else f"{n} items of {data.train}"
    if data.max_items is not None and data.max_items < len(dataset):  # type: ignore[arg-type]
        what += f", first {n} used (--max-items)"
    if data.batch_size > n:
        print(f"warning: --batch-size {data.batch_size} is larger than the {n} training items; "
              f"using batches of {n}", file=sys.stderr)
        config.setdefault("data", {})["batch_size"] = n
    return what


def _resumed(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    from ._runs import flag_namer, resumed_config, stored_config

    if args.conditioner is not None or args.crops_per_image is not None:
        raise ValueError("--conditioner/--crops-per-image cannot change a run being resumed; "
                         "the run's stored settings are used")
    out = args.out or (given.get("train") or {}).get("out")
    stored, ckpt = stored_config(out, args.resume, lambda c: c.get("stage2"))
    return resumed_config(stored, given, ckpt, flag_namer(OVERRIDES))


def _prior_spec(name: str, given: Any) -> dict[str, Any]:
    """``{"name": name}`` plus the options of the given (or default) prior spec that the
    named prior accepts (e.g. a gpt's n_layer/n_head/n_embd carry over to maskgit)."""
    import copy
    import inspect

    import taming_core
    from taming_plugins.training.config import DEFAULT_PRIOR

    base = dict(given) if isinstance(given, dict) else copy.deepcopy(DEFAULT_PRIOR)
    if base.get("name") == name:
        return base
    accepted = inspect.signature(taming_core.get("prior", name)).parameters
    return {"name": name, **{k: v for k, v in base.items()
                             if k in accepted and k not in ("vocab_size", "block_size")}}


def run(args: argparse.Namespace) -> int:
    from taming_plugins.training.artifacts import RUN_PIPELINE
    from taming_plugins.training.stage2 import PriorTrainer

    given = _given(args)
    if args.resume is not None:
        config, what = _resumed(args, given), None
    else:
        config = new_run_config(args, given)
        what = _cap_batch(config)
    trainer = PriorTrainer(config)
    cfg = trainer.config
    if trainer.is_main_process:
        if what is not None:
            print(f"train-prior: {what}; {len(trainer.cache)} token sequences of "
                  f"{'×'.join(map(str, trainer.cache.grid))} tokens; {cfg.train.steps} steps of "
                  f"batch {cfg.data.batch_size}")
        else:
            print(f"train-prior: resuming {trainer.out} with its stored configuration "
                  f"(data {cfg.data.train}, batch {cfg.data.batch_size}, {len(trainer.cache)} token sequences)")
    result = trainer.fit(resume=resume_option(args), overwrite=args.overwrite)
    if trainer.is_main_process:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        print(f"trained prior to step {result.step} ({summary}); checkpoints in {trainer.ckpt.directory}")
        pipeline = trainer.out / RUN_PIPELINE
        if (pipeline / "pipeline.json").is_file():
            print(f"pipeline: {pipeline} (next: taming sample --pipeline {pipeline})")
    return 0

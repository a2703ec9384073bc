"""``taming train-tokenizer``: train a VQGAN-style tokenizer (stage 1).

Usage::

    taming train-tokenizer --config tok.yaml --data my_photos/ --image-size 32 --out runs/tok
    taming train-tokenizer --out runs/tok --resume --steps 4000     # the stored run config

``--resume`` continues the run in ``--out`` with the configuration stored in its
checkpoint (data, batch, architecture): ``--config`` is then optional, and flags that
contradict the stored run are refused by name (``--steps`` may extend it). An image
folder's held-out images (``split val``) are never trained on.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from taming_plugins.cli.common import add_device_flag, add_seed_flag

#: Command-line flags that override ``(section, key)`` of the run config.
OVERRIDES = {
    "data": ("data", "train"),
    "batch_size": ("data", "batch_size"),
    "image_size": ("data", "image_size"),
    "steps": ("train", "steps"),
    "out": ("train", "out"),
    "lr": ("optim", "learning_rate"),
}


DEFAULT_DEVICE = "auto"
DEFAULT_SEED = 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-tokenizer", help="train a tokenizer (VQGAN stage 1)",
        description="Train a tokenizer against the VQGAN loss (L1 + LPIPS + adaptive GAN term). "
        "The config (YAML/JSON) has sections tokenizer, loss, data, optim, train "
        "(see taming_plugins.training.stage1_config); flags override it.")
    p.add_argument("--config", help="run config file (YAML or JSON); optional with --resume")
    p.add_argument("--data", help="'photos', 'fashion-mnist' or an image folder (data.train)")
    p.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    p.add_argument("--batch-size", type=int, help="images per micro-batch (data.batch_size)")
    p.add_argument("--image-size", type=int, help="training crop size (data.image_size)")
    p.add_argument("--lr", type=float, help="learning rate as is (optim.learning_rate; "
                   "default: the original rule accumulate · batch · base_learning_rate)")
    p.add_argument("--out", help="run directory (train.out)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in --out, or from CHECKPOINT")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    add_device_flag(p)
    add_seed_flag(p, default=DEFAULT_SEED)
    p.set_defaults(func=run, _parser=p)


def apply_overrides(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Copy of ``config`` with the flags that were given written into their sections."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for flag, (section, key) in OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            cfg.setdefault(section, {})[key] = value
    train = cfg.setdefault("train", {})
    # --device/--seed win when given explicitly; their defaults do not mask the config's values.
    if args.device != DEFAULT_DEVICE or "device" not in train:
        train["device"] = args.device
    if args.seed != DEFAULT_SEED or "seed" not in train:
        train["seed"] = args.seed
    if args.no_progress:
        train["progress"] = False
    return cfg


#: ``(section, key)`` a resumed run may change; everything else must match the stored run.
RESUMABLE = {("train", "steps"), ("train", "out"), ("train", "device"), ("train", "progress"),
             ("train", "log_every"), ("train", "val_every"), ("train", "image_every"),
             ("train", "ckpt_every"), ("train", "keep_last"), ("train", "distributed"),
             ("train", "compile"), ("data", "num_workers")}


def _flag_for(section: str, key: str) -> str:
    for flag, where in OVERRIDES.items():
        if where == (section, key):
            return "--" + flag.replace("_", "-")
    return f"{section}.{key}"


def resumed_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run config stored in ``--out``'s latest checkpoint, with the flags (and
    ``--config`` keys) that a resumed run may change; others that differ are refused."""
    from taming_core.config import load_config
    from taming_core.errors import CheckpointError
    from taming_plugins.training.artifacts import find_checkpoint
    from taming_plugins.training.checkpoint import read_checkpoint_config

    if args.out is None and args.config is None:
        raise ValueError("--resume needs --out (the run directory to continue)")
    given = load_config(args.config) if args.config else {}
    out = args.out or given.get("train", {}).get("out")
    ckpt = find_checkpoint(out if args.resume == "latest" else args.resume)
    if ckpt is None:
        raise CheckpointError(f"--resume: no checkpoint in {out}; start the run without --resume")
    stored = read_checkpoint_config(ckpt)
    if not isinstance(stored.get("tokenizer"), dict) or "train" not in stored:
        raise CheckpointError(f"--resume: {ckpt} stores no stage-1 run config; is it a train-tokenizer run?")
    wanted = apply_overrides(given, args)
    if args.device == DEFAULT_DEVICE:
        wanted["train"].pop("device", None)
    if args.seed == DEFAULT_SEED:
        wanted["train"].pop("seed", None)
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    for section, values in wanted.items():
        if not isinstance(values, dict):
            if section in stored and values != stored[section]:
                raise ValueError(f"--config {section} contradicts the run being resumed ({ckpt}); "
                                 "drop it, or train a new run in another --out")
            continue
        for key, value in values.items():
            if (section, key) in RESUMABLE:
                config.setdefault(section, {})[key] = value
            elif _contradicts(value, stored.get(section, {}).get(key)):
                raise ValueError(f"{_flag_for(section, key)} {value!r} contradicts the run being resumed "
                                 f"({section}.{key} = {stored.get(section, {}).get(key)!r} in {ckpt}); "
                                 "drop it, or train a new run in another --out")
    return config


def _contradicts(given: Any, stored: Any) -> bool:
    """True when ``given`` differs from ``stored``; a mapping is compared only on the keys
    it gives (a stored spec is the component's full ``get_config()``)."""
    if isinstance(given, dict) and isinstance(stored, dict):
        return any(_contradicts(v, stored.get(k)) for k, v in given.items())
    if isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)):
        return list(given) != list(stored)
    return given != stored


def _describe_data(trainer: Any) -> str:
    from taming_plugins.data import ImageFolder

    dataset = trainer.stream.dataset
    data = trainer.config["data"]
    what = dataset.describe() if isinstance(dataset, ImageFolder) else f"{len(dataset)} items of {data['train']}"
    return (f"train-tokenizer: {what}; {data['image_size']}×{data['image_size']} px; "
            f"{trainer.config['train']['steps']} steps of batch {data['batch_size']}")


def run(args: argparse.Namespace) -> int:
    from taming_core.config import load_config
    from taming_plugins.training.stage1 import TokenizerTrainer

    if args.resume is not None:
        config = resumed_config(args)
    elif args.config is None:
        args._parser.error("--config is required (it is optional only with --resume)")
    else:
        config = apply_overrides(load_config(args.config), args)
    trainer = TokenizerTrainer(config)
    if trainer.is_main_process:
        print(_describe_data(trainer))
    resume: Any = False if args.resume is None else (True if args.resume == "latest" else args.resume)
    result = trainer.fit(resume=resume)
    summary = {"step": result.step, "out": str(result.out),
               "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
               **{k: round(v, 5) for k, v in result.val_metrics.items()}}
    if trainer.is_main_process:
        print(json.dumps(summary))
    return 0

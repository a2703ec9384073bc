"""``taming train-tokenizer``: train a VQGAN-style tokenizer (stage 1)."""

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
        "(see taming_plugins.training.config, docs/training.md); flags override it. Writes "
        "checkpoints/, metrics.jsonl and images/ to train.out.")
    p.add_argument("--config", required=True, help="run config file (YAML or JSON)")
    p.add_argument("--data", help="'photos', 'fashion-mnist' or an image folder (data.train)")
    p.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    p.add_argument("--batch-size", type=int, help="images per micro-batch (data.batch_size)")
    p.add_argument("--image-size", type=int, help="training crop size (data.image_size)")
    p.add_argument("--lr", type=float, help="learning rate as is (optim.learning_rate; "
                   "default: the original rule accumulate · batch · base_learning_rate)")
    p.add_argument("--out", help="run directory (train.out)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in --out, or from CHECKPOINT")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out (checkpoints, metrics, images) and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    add_device_flag(p)
    add_seed_flag(p, default=DEFAULT_SEED)
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from taming_core.config import load_config
    from taming_plugins.training.stage1 import TokenizerTrainer

    config = apply_overrides(load_config(args.config), args)
    trainer = TokenizerTrainer(config)
    resume: Any = False if args.resume is None else (True if args.resume == "latest" else args.resume)
    result = trainer.fit(resume=resume, overwrite=args.overwrite)
    summary = {"step": result.step, "out": str(result.out),
               "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
               **{k: round(v, 5) for k, v in result.val_metrics.items()}}
    print(json.dumps(summary))
    return 0

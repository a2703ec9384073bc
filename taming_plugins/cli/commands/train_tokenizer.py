"""``taming train-tokenizer``: train a VQGAN-style tokenizer (stage 1)."""

from __future__ import annotations

import argparse
import json

from taming_plugins.cli.common import (add_device_flag, add_run_flags, add_seed_flag, apply_run_overrides,
                                      resume_option)

#: Command-line flags that override ``(section, key)`` of the run config.
OVERRIDES = {
    "data": ("data", "train"), "batch_size": ("data", "batch_size"),
    "image_size": ("data", "image_size"), "steps": ("train", "steps"), "out": ("train", "out"),
    "lr": ("optim", "learning_rate"), "device": ("train", "device"), "seed": ("train", "seed"),
}


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
    add_run_flags(p)
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, device=None, seed=None)  # not given: the config's (or default) value


def run(args: argparse.Namespace) -> int:
    from taming_core.config import load_config
    from taming_plugins.training.stage1 import TokenizerTrainer

    trainer = TokenizerTrainer(apply_run_overrides(load_config(args.config), args, OVERRIDES))
    result = trainer.fit(resume=resume_option(args), overwrite=args.overwrite)
    summary = {"step": result.step, "out": str(result.out),
               "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
               **{k: round(v, 5) for k, v in result.val_metrics.items()}}
    print(json.dumps(summary))
    return 0

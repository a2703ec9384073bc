"""``taming train-prior``: train a stage-2 prior on the tokens of a frozen tokenizer."""

from __future__ import annotations

import argparse
from typing import Any

from ..common import add_device_flag, add_seed_flag, seed_everything

#: Command-line flags that override keys of the config file (flag dest -> config key).
OVERRIDES = {
    "tokenizer": "tokenizer", "data": "data", "out": "out_dir", "image_size": "image_size",
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "pkeep": "pkeep",
    "cfg_drop": "cfg_drop", "cond_offset": "cond_offset", "ckpt_every": "ckpt_every",
    "sample_every": "sample_every", "log_every": "log_every", "precision": "precision",
    "cache_dir": "cache_dir", "device": "device", "seed": "seed", "max_items": "max_items",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior", help="train a prior (gpt, maskgit, pixelcnn...) over a frozen tokenizer's tokens (stage 2)",
        description="Tokenize the dataset once with a frozen tokenizer (cached, memory-mapped), "
        "then train a prior of any family with its own loss (--prior gpt|maskgit|pixelcnn). Writes checkpoints, "
        "metrics.jsonl and sample grids (samples/*.png) to --out. Options not given as flags "
        "come from --config (YAML/JSON with the keys of PriorTrainConfig).")
    p.add_argument("--tokenizer", help="stage-1 checkpoint directory or original taming .ckpt")
    p.add_argument("--data", help="'photos', 'fashion-mnist' or an image folder (default photos)")
    p.add_argument("--out", help="run directory (checkpoints, samples, metrics)")
    p.add_argument("--config", help="YAML/JSON file with stage-2 options (prior, conditioner, ...)")
    p.add_argument("--prior", metavar="NAME", help="registered prior: gpt (default), maskgit, pixelcnn, "
                   "...; options of the config's prior spec that it accepts are kept")
    p.add_argument("--image-size", type=int, help="image side length in pixels")
    p.add_argument("--max-items", type=int, help="use only the first N dataset items")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, help="sequences per step")
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
                   help="continue from the latest checkpoint in --out (or the one given)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, device=None, seed=None)


def _merged_config(args: argparse.Namespace) -> dict[str, Any]:
    from taming_core import load_config

    config: dict[str, Any] = load_config(args.config) if args.config else {}
    for dest, key in OVERRIDES.items():
        value = getattr(args, dest)
        if value is not None:
            config[key] = value
    if args.prior is not None:
        config["prior"] = _prior_spec(args.prior, config.get("prior"))
    if args.no_progress:
        config["progress"] = False
    if "out_dir" not in config:
        raise ValueError("--out is required (or out_dir in --config)")
    if "tokenizer" not in config:
        raise ValueError("--tokenizer is required (or tokenizer in --config)")
    return config


def _prior_spec(name: str, given: Any) -> dict[str, Any]:
    """``{"name": name}`` plus the options of the given (or default) prior spec that the
    named prior accepts (e.g. a gpt's n_layer/n_head/n_embd carry over to maskgit)."""
    import inspect

    import taming_core
    from taming_plugins.training.stage2 import PriorTrainConfig

    base = dict(given) if isinstance(given, dict) else PriorTrainConfig(out_dir=".").prior
    if base.get("name") == name:
        return base
    accepted = inspect.signature(taming_core.get("prior", name)).parameters
    return {"name": name, **{k: v for k, v in base.items()
                             if k in accepted and k not in ("vocab_size", "block_size")}}


def run(args: argparse.Namespace) -> int:
    from taming_plugins.training.stage2 import PriorTrainer

    config = _merged_config(args)
    seed_everything(int(config.get("seed", 0)))
    trainer = PriorTrainer(config)
    metrics = trainer.fit(resume=args.resume or False)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"trained prior to step {trainer.step} ({summary}); checkpoints in {trainer.out_dir}")
    return 0

"""``taming train-prior``: train a stage-2 prior on the tokens of a frozen tokenizer."""

from __future__ import annotations

import argparse
from typing import Any

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior", help="train a prior (gpt, maskgit, pixelcnn...) over a frozen tokenizer's tokens (stage 2)",
        description="Tokenize the dataset once with a frozen tokenizer (cached, memory-mapped), "
        "then train a prior of any family on its own objective (--prior gpt|maskgit|pixelcnn). Writes checkpoints/, metrics.jsonl and sample "
        "grids (images/*.png) to --out. Options not given as flags come from --config (YAML/JSON "
        "with the sections of PriorTrainConfig: tokenizer, prior, conditioner, sampler, data, "
        "optim, train).")
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
    add_run_flags(p)
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, device=None, seed=None, _parser=p)


def _merged_config(args: argparse.Namespace) -> dict[str, Any]:
    from taming_core import load_config
    from taming_plugins.training.config import upgrade_stage2_config

    config = upgrade_stage2_config(load_config(args.config)) if args.config else {}
    config = apply_run_overrides(config, args, OVERRIDES)
    if args.precision is not None:
        config.setdefault("optim", {})["bf16"] = args.precision == "bf16"
    if args.prior is not None:
        config["prior"] = _prior_spec(args.prior, config.get("prior"))
    parser: argparse.ArgumentParser = args._parser
    if "out" not in config.get("train", {}):
        parser.error("--out is required (or train.out in --config)")
    if "tokenizer" not in config:
        parser.error("--tokenizer is required (or tokenizer in --config)")
    return config


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
    from taming_plugins.training.stage2 import PriorTrainer

    trainer = PriorTrainer(_merged_config(args))
    result = trainer.fit(resume=resume_option(args), overwrite=args.overwrite)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    print(f"trained prior to step {result.step} ({summary}); checkpoints in "
          f"{trainer.ckpt.directory}")
    return 0

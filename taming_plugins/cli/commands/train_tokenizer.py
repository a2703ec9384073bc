"""``taming train-tokenizer``: train a VQGAN-style tokenizer (stage 1).

Usage::

    taming train-tokenizer --data my_photos/ --out runs/tok          # the packaged default config
    taming train-tokenizer --config tok.yaml --data my_photos/ --image-size 64 --out runs/tok
    taming train-tokenizer --print-config > tok.yaml                 # start your own from the default
    taming train-tokenizer --out runs/tok --resume --steps 4000      # the stored run config

Without ``--config`` the run config is ``taming_plugins/configs/tokenizer.yaml``: a small
VQGAN (f4, 256 codes) for 32×32 crops, 2000 steps, which trains on a CPU in minutes.
``--resume`` continues the run in ``--out`` with the configuration stored in its
checkpoint (data, batch, architecture): ``--config`` is then optional, and flags that
contradict the stored run are refused by name (``--steps`` may extend it). An image
folder's held-out images (``split val``) are never trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from taming_plugins.cli.common import (add_device_flag, add_run_flags, add_seed_flag, apply_run_overrides,
                                      resume_option)

#: The packaged run config used without ``--config`` (in ``taming_plugins/configs``).
DEFAULT_CONFIG = "tokenizer.yaml"
#: Command-line flags that override ``(section, key)`` of the run config.
OVERRIDES = {
    "data": ("data", "train"), "batch_size": ("data", "batch_size"),
    "image_size": ("data", "image_size"), "steps": ("train", "steps"), "out": ("train", "out"),
    "lr": ("optim", "learning_rate"), "device": ("train", "device"), "seed": ("train", "seed"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-tokenizer", help="train a tokenizer (VQGAN stage 1)",
        description=__doc__ + "\nThe config (YAML/JSON) has sections tokenizer, loss, data, optim, "
        "train (see taming_plugins.training.config, docs/training.md); flags override it. Writes "
        "checkpoints/, metrics.jsonl and images/ to train.out.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="run config file (YAML or JSON); default: the packaged "
                   f"{DEFAULT_CONFIG} (a small f4 VQGAN for 32-px crops), or the stored one with --resume")
    p.add_argument("--print-config", action="store_true",
                   help="print the run config these flags give (YAML) and exit without training")
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
    p.set_defaults(func=run, device=None, seed=None, _parser=p)  # not given: the config's value


def _resumed(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    from ._runs import flag_namer, resumed_config, stored_config

    out = args.out or (given.get("train") or {}).get("out")
    stored, ckpt = stored_config(out, args.resume, lambda c: c if isinstance(c.get("tokenizer"), dict)
                                 and "train" in c else None)
    return resumed_config(stored, given, ckpt, flag_namer(OVERRIDES))


def _describe_data(trainer: Any) -> str:
    from taming_plugins.data import ImageFolder

    dataset = trainer.stream.dataset
    data = trainer.config.data
    what = dataset.describe() if isinstance(dataset, ImageFolder) else f"{len(dataset)} items of {data.train}"
    return (f"train-tokenizer: {what}; {data.image_size}×{data.image_size} px; "
            f"{trainer.config.train.steps} steps of batch {data.batch_size}")


def default_config_path() -> Path:
    """The packaged default run config (``taming_plugins/configs/tokenizer.yaml``)."""
    from importlib import resources

    return Path(str(resources.files("taming_plugins.configs").joinpath(DEFAULT_CONFIG)))


def run(args: argparse.Namespace) -> int:
    from taming_core.config import load_config
    from taming_plugins.training.config import TokenizerTrainConfig
    from taming_plugins.training.stage1 import TokenizerTrainer

    packaged = args.config is None and args.resume is None
    source = default_config_path() if packaged else args.config
    given = apply_run_overrides(load_config(source) if source else {}, args, OVERRIDES)
    if packaged:  # the default's GAN term starts half-way, also when --steps changes the length
        given["loss"]["disc_start"] = int(given["train"]["steps"]) // 2
    config = _resumed(args, given) if args.resume is not None else given
    if args.print_config:
        import yaml

        print(yaml.safe_dump(TokenizerTrainConfig.from_dict(config).to_dict(), sort_keys=False), end="")
        return 0
    trainer = TokenizerTrainer(config)
    if trainer.is_main_process:
        if packaged:
            print(f"train-tokenizer: no --config: the packaged default {DEFAULT_CONFIG} (a small f4 VQGAN, "
                  f"{trainer.tokenizer.vocab_size} codes, GAN term from step {given['loss']['disc_start']}; "
                  f"--print-config shows it)")
        print(_describe_data(trainer))
    result = trainer.fit(resume=resume_option(args), overwrite=args.overwrite)
    summary = {"step": result.step, "out": str(result.out),
               "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
               **{k: round(v, 5) for k, v in result.val_metrics.items()}}
    if trainer.is_main_process:
        print(json.dumps(summary))
    return 0

"""``taming demo``: train a small VQGAN and GPT prior on the bundled photos, then sample.

The logic lives in :mod:`taming_plugins.demo`; this module only maps flags to it.
"""

from __future__ import annotations

import argparse

from taming_plugins.demo import DEFAULT_OUT, default_demo_config, run_demo, summary_table

from ..common import add_device_flag

DESCRIPTION = """\
Train a small VQGAN on crops of the bundled photos (stage 1), a small GPT prior on
their tokens (stage 2), and write to --out: reconstructions.png (held-out inputs above
reconstructions), samples.png, sliding_window.png (a sample with 4x the training
window's area), overview.png, metrics.json and the trained pipeline (pipeline/, for
`taming sample --pipeline`). The defaults (taming_plugins/configs/demo.yaml) finish in
under 6 minutes on 2 CPU cores; the flags scale it up.
"""


def register(sub: argparse._SubParsersAction) -> None:
    d = default_demo_config()
    p = sub.add_parser("demo", help="train a small VQGAN + GPT on the bundled photos and sample",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, metavar="DIR", help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--config", metavar="FILE",
                   help="YAML/JSON file merged into the demo defaults (same layout; stage1/stage2 are "
                   "the trainers' run configs)")
    p.add_argument("--steps-tokenizer", type=int, metavar="N",
                   help=f"stage-1 optimizer steps (stage1.train.steps, default {d['stage1']['train']['steps']})")
    p.add_argument("--steps-prior", type=int, metavar="N",
                   help=f"stage-2 optimizer steps (stage2.train.steps, default {d['stage2']['train']['steps']})")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help=f"training crop size in pixels, a multiple of 4 (default {d['image_size']})")
    p.add_argument("--data", metavar="SPEC",
                   help=f"'photos', 'fashion-mnist' or an image folder (default {d['data']})")
    p.add_argument("--threads", type=int, metavar="N", help=f"torch CPU threads (default {d['threads']}: the "
                   "figures depend on the thread count; `threads: auto` in a --config takes the cores other "
                   "processes leave free; the choice is printed)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help=f"random seed (default {d['seed']})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_flag(p)
    p.set_defaults(func=run, device=None, _parser=p)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    for flag in ("steps_tokenizer", "steps_prior", "image_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    result = run_demo(args.config, args.out or DEFAULT_OUT, progress=not args.no_progress,
                      data=args.data, image_size=args.image_size, seed=args.seed, device=args.device,
                      threads=args.threads, stage1__train__steps=args.steps_tokenizer,
                      stage2__train__steps=args.steps_prior)
    print(summary_table(result))
    return 0

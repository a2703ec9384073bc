"""Demo tokenizer quality per setting: held-out PSNR, colour shift, border ratio, time.

Trains the demo's stage 1 (``taming_plugins/configs/demo.yaml`` through
:func:`taming_plugins.demo.stage1_config`) once per variant, each a few keys merged
over the demo config, and measures on the demo's held-out crops (a photo never used for
training):

* ``psnr_db`` — mean PSNR of the reconstructions;
* ``colour_err`` — mean per-channel colour shift (:func:`~taming_plugins.eval.channel_mean_error`,
  [0, 1] scale);
* ``border_ratio`` — outer-ring / interior reconstruction error
  (:func:`~taming_plugins.eval.border_error_ratio`, ring of 1 pixel; ≤ 1.5 = no frame);
* ``usage_pct`` — codebook usage;
* ``cpu_s`` / ``wall_s`` — process CPU and wall seconds of training (CPU seconds are
  less sensitive to other load on a shared machine; compare them, not wall time).

Usage::

    python -m benchmarks.demo_quality --steps 600 --variants base,sympad,centered+cosine
    python -m benchmarks.demo_quality --quick          # 60 steps, base and sympad

Writes ``benchmarks/results/demo_quality[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: Each variant: keys merged over the demo config (layout of demo.yaml; a dict with a
#: ``name`` replaces instead of merging). ``--steps`` sets stage1.train.steps unless the
#: variant sets it. Rows measured before the symmetric pad / cosine decay existed are in
#: docs/benchmarks.md (their variants were relative to the then-current demo.yaml).
_SYM = {"stage1": {"tokenizer": {"downsample_padding": "symmetric"}}}
_CEN = {"stage1": {"tokenizer": {"downsample_padding": "centered"}}}
_COS = {"stage1": {"optim": {"lr_decay": "cosine", "warmup_steps": 30}}}


def _both(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out = _merge(out, part)
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "original_pad": {"stage1": {"tokenizer": {"downsample_padding": "original"}}},
    "sympad": _SYM,
    "centered": _CEN,
}
QUICK_STEPS = 60
QUICK_VARIANTS = ("base", "sympad")
VAL_IMAGES = 64


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "name" not in value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


VARIANTS.update({
    "sympad+cosine": _both(_SYM, _COS),
    "sympad+cosine+lr2e-3": _both(_SYM, _COS, {"stage1": {"optim": {"learning_rate": 2.0e-3}}}),
    "sympad+cosine+betas0.9": _both(_SYM, _COS, {"stage1": {"optim": {"betas": [0.9, 0.99]}}}),
    "sympad+cosine+batch16x300": _both(_SYM, _COS, {"stage1": {"data": {"batch_size": 16}, "train": {"steps": 300}}}),
    "sympad+cosine+dim8": _both(_SYM, _COS, {"stage1": {"tokenizer": {
        "embed_dim": 8, "quantizer": {"name": "ema", "codebook_size": 256, "dim": 8}}}}),
    "centered+cosine": _both(_CEN, _COS),
    "centered+cosine+lr2e-3": _both(_CEN, _COS, {"stage1": {"optim": {"learning_rate": 2.0e-3}}}),
    "centered+cosine+betas0.9": _both(_CEN, _COS, {"stage1": {"optim": {"betas": [0.9, 0.99]}}}),
    "sympad+cosine+ch48": _both(_SYM, _COS, {"stage1": {"tokenizer": {"ch": 48}}}),
})


@torch.no_grad()
def measure(tokenizer: Any, images: torch.Tensor) -> dict[str, float]:
    from taming_plugins.eval import border_error_ratio, channel_mean_error, psnr, worst_edge_error_ratio
    from taming_plugins.eval.codebook import CodebookStats

    tokenizer.eval()
    xrec, enc = tokenizer.reconstruct(images)
    xrec = xrec.clamp(-1, 1)
    stats = CodebookStats(tokenizer.vocab_size, 1)
    stats.update(enc.indices)
    return {"psnr_db": round(float(psnr(xrec, images).mean()), 2),
            "colour_err": round(float(channel_mean_error(xrec, images).mean()), 4),
            "border_ratio": round(float(border_error_ratio(xrec, images).mean()), 3),
            "worst_edge": round(float(worst_edge_error_ratio(xrec, images).mean()), 3),
            "usage_pct": round(100.0 * stats.usage(), 1)}


def run_variant(name: str, steps: int, seed: int, images: torch.Tensor) -> dict[str, Any]:
    from taming_plugins.demo import default_demo_config, perceptual_choice, stage1_config
    from taming_plugins.training.stage1 import TokenizerTrainer

    cfg = _merge(default_demo_config(), VARIANTS[name])
    if "steps" not in VARIANTS[name].get("stage1", {}).get("train", {}):
        cfg["stage1"]["train"]["steps"] = steps
    steps = cfg["stage1"]["train"]["steps"]
    cfg["seed"], cfg["device"] = seed, "cpu"
    perceptual, _ = perceptual_choice(cfg["stage1"]["loss"].get("perceptual", "auto"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = TokenizerTrainer(stage1_config(cfg, Path(tmp), perceptual, progress=False))
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.fit()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"variant": name, "steps": steps, **measure(trainer.tokenizer, images),
           "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--variants", default="base,no_gan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default=None, help="results file name (default demo_quality[_quick])")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from benchmarks._common import write_results
    from taming_plugins.data import get_dataset
    from taming_plugins.demo import default_demo_config

    steps = QUICK_STEPS if args.quick else args.steps
    names = list(QUICK_VARIANTS) if args.quick else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown[0]!r}; expected some of {', '.join(VARIANTS)}")
    size = int(default_demo_config()["image_size"])
    val = get_dataset("photos", size, split="val", length=VAL_IMAGES)
    images = torch.stack([val[i] for i in range(VAL_IMAGES)])
    rows = []
    for name in names:  # results are rewritten after every variant, so a stopped run keeps its rows
        rows.append(run_variant(name, steps, args.seed, images))
        _write(args, rows, names, size, write_results)


def _write(args: argparse.Namespace, rows: list, names: list, size: int, write_results: Any) -> None:
    load = os.getloadavg()[0]
    write_results(args.name or ("demo_quality_quick" if args.quick else "demo_quality"), rows,
                  columns=["variant", "steps", "psnr_db", "colour_err", "border_ratio", "worst_edge", "usage_pct",
                           "cpu_s", "wall_s"],
                  title="Demo tokenizer quality per setting (held-out photo crops)",
                  notes=[f"1 torch thread; shared 2-core machine, load average {load:.1f} at the end "
                         "(other engineers' processes running): compare cpu_s, not wall_s",
                         f"{VAL_IMAGES} held-out {size}-px crops of a photo never used for training",
                         "variants: " + "; ".join(f"{n} = {VARIANTS[n] or 'demo.yaml'}" for n in names)])


if __name__ == "__main__":
    main()

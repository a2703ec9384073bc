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
    python -m benchmarks.demo_quality --step-speed     # one step: float32 vs bf16 autocast

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
})
#: Round 3 (docs/benchmarks.md): measured over the demo.yaml of round 2, i.e. L1 pixel loss
#: and float32; each variant restores those two so its row reproduces with today's demo.yaml
#: (which took ``bf16x1600+mse``: pixel_loss mse, bf16 auto, 1600 steps).
_R2 = {"stage1": {"loss": {"pixel_loss": "l1"}, "optim": {"bf16": False}}}
_BF16 = {"stage1": {"optim": {"bf16": True}}}
VARIANTS.update({
    "bf16": _both(_R2, _BF16),
    "bf16x1000": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1000}}})),
    "x1000": _both(_R2, {"stage1": {"train": {"steps": 1000}}}),
    "kmeans+decay0.95": _both(_R2, {"stage1": {"tokenizer": {"quantizer": {
        "name": "ema", "codebook_size": 256, "dim": 32, "kmeans_init": True, "decay": 0.95}}}}),
    "bf16x1000+mse": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1000}, "loss": {"pixel_loss": "mse"}}})),
    "bf16+batch4x2000": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 2000}, "data": {"batch_size": 4}}})),
    "bf16x1400+mse": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1400}, "loss": {"pixel_loss": "mse"}}})),
    "bf16x1000+mse+lr2e-3": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1000}, "loss": {"pixel_loss": "mse"},
                                                     "optim": {"learning_rate": 2.0e-3}}})),
    "mse": _both(_R2, {"stage1": {"loss": {"pixel_loss": "mse"}}}),
    "bf16x1000+mse+mult124": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1000}, "loss": {"pixel_loss": "mse"},
                                                      "tokenizer": {"ch_mult": [1, 2, 4]}}})),
    "bf16x1000+mse+pw4": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1000},
                                                  "loss": {"pixel_loss": "mse", "pixel_weight": 4.0}}})),
    "bf16x1200+mse": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1200}, "loss": {"pixel_loss": "mse"}}})),
    "bf16x1000+mse+codes512": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1000}, "loss": {"pixel_loss": "mse"},
                                                       "tokenizer": {"quantizer": {"name": "ema", "codebook_size": 512,
                                                                                   "dim": 32}}}})),
    "bf16x1000+mse+codes1024": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1000}, "loss": {"pixel_loss": "mse"},
                                                        "tokenizer": {"quantizer": {"name": "ema",
                                                                                    "codebook_size": 1024,
                                                                                    "dim": 32}}}})),
    "bf16x1200+mse+codes512": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1200}, "loss": {"pixel_loss": "mse"},
                                                       "tokenizer": {"quantizer": {"name": "ema", "codebook_size": 512,
                                                                                   "dim": 32}}}})),
    "bf16x1600+mse+codes512": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1600}, "loss": {"pixel_loss": "mse"},
                                                       "tokenizer": {"quantizer": {"name": "ema", "codebook_size": 512,
                                                                                   "dim": 32}}}})),
    "bf16x1600+mse": _both(_R2, _both(_BF16, {"stage1": {"train": {"steps": 1600}, "loss": {"pixel_loss": "mse"}}})),
    "bf16x1600+mse+codes512+lr7e-4": _both(_R2, _both(_BF16, {"stage1": {
        "train": {"steps": 1600}, "loss": {"pixel_loss": "mse"}, "optim": {"learning_rate": 7.0e-4},
        "tokenizer": {"quantizer": {"name": "ema", "codebook_size": 512, "dim": 32}}}})),
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


@torch.no_grad()
def thumbnail_reference(images: torch.Tensor, factor: int = 4) -> float:
    """Held-out PSNR of an unquantized reference: each crop area-downsampled by ``factor``
    (float pixels, 3 numbers per token position where a token has 8 bits) and upsampled
    bicubically. It says how much detail the crops hold at the token grid's resolution."""
    import torch.nn.functional as F

    from taming_plugins.eval import psnr

    small = F.interpolate(images, scale_factor=1 / factor, mode="area")
    up = F.interpolate(small, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)
    return round(float(psnr(up, images).mean()), 2)


def run_variant(name: str, steps: int, seed: int, images: torch.Tensor) -> dict[str, Any]:
    from taming_plugins.demo import default_demo_config, stage1_config
    from taming_plugins.losses.lpips import perceptual_choice
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


def step_speed(repeats: int = 20) -> list[dict[str, Any]]:
    """CPU seconds per training step of the demo tokenizer (batch 8, 32 px, MSE + quantizer
    loss, Adam) in float32 and under bf16 autocast, interleaved in one process."""
    from taming_core import create
    from taming_plugins.demo import default_demo_config

    cfg = default_demo_config()
    spec = {**cfg["stage1"]["tokenizer"], "resolution": int(cfg["image_size"])}
    tokenizer = create("tokenizer", spec.pop("name"), **spec)
    opt = torch.optim.Adam(tokenizer.parameters(), 1e-4)
    x = torch.rand(int(cfg["stage1"]["data"]["batch_size"]), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x * 2 - 1

    def one(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rec, enc = tokenizer.reconstruct(x)
        loss = (rec.float() - x).square().mean() + enc.loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in (False, True):
        for _ in range(3):
            one(bf16)
    for _ in range(repeats):
        for bf16 in (False, True):
            start = time.process_time()
            one(bf16)
            times[bf16].append(time.process_time() - start)
    fp32 = sorted(times[False])[repeats // 2]
    return [{"precision": "bf16 autocast" if bf16 else "float32",
             "cpu_s_per_step": round(sorted(times[bf16])[repeats // 2], 4),
             "speedup": round(fp32 / sorted(times[bf16])[repeats // 2], 2)} for bf16 in (False, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--variants", default="base,no_gan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default=None, help="results file name (default demo_quality[_quick])")
    parser.add_argument("--step-speed", action="store_true",
                        help="only time one training step in float32 vs bf16 autocast (median of 20, interleaved)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from benchmarks._common import write_results

    if args.step_speed:
        from taming_plugins.training.runtime import cpu_has_native_bf16

        write_results("demo_step_speed", step_speed(), columns=["precision", "cpu_s_per_step", "speedup"],
                      title="Demo tokenizer: one training step, float32 vs bf16 autocast (CPU)",
                      notes=[f"1 torch thread; native bf16 instructions: {cpu_has_native_bf16()}; "
                             f"load average {os.getloadavg()[0]:.1f} at the end; median CPU seconds of 20 "
                             "interleaved steps each"])
        return
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
        _write(args, rows, names, size, write_results, thumbnail_reference(images))


def _write(args: argparse.Namespace, rows: list, names: list, size: int, write_results: Any,
           reference_db: float) -> None:
    load = os.getloadavg()[0]
    write_results(args.name or ("demo_quality_quick" if args.quick else "demo_quality"), rows,
                  columns=["variant", "steps", "psnr_db", "colour_err", "border_ratio", "worst_edge", "usage_pct",
                           "cpu_s", "wall_s"],
                  title="Demo tokenizer quality per setting (held-out photo crops)",
                  notes=[f"1 torch thread; shared 2-core machine, load average {load:.1f} at the end "
                         "(other engineers' processes running): compare cpu_s, not wall_s",
                         f"{VAL_IMAGES} held-out {size}-px crops of a photo never used for training",
                         f"reference: the same crops area-downsampled 4× (float pixels, no quantization) "
                         f"and upsampled bicubically give {reference_db} dB",
                         "variants: " + "; ".join(f"{n} = {VARIANTS[n] or 'demo.yaml'}" for n in names)])


if __name__ == "__main__":
    main()

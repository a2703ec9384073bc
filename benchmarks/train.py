"""Training speed: stage-1 step time and images/s, stage-2 tokens/s; 1 process vs torchrun.

Run ``python -m benchmarks.train`` (``--quick`` for fewer steps). Every case runs in a
fresh process (the DDP cases under ``python -m torch.distributed.run --standalone
--nproc_per_node=2``) on the default configs of ``taming_plugins/configs/demo.yaml``
(stage 1: f4 VQGAN, EMA quantizer, PatchGAN on, 32 px, batch 8 per process; stage 2:
GPT 4×128 over 8×8 tokens + SOS, batch 32 per process). Timed: ``train_step`` on
pre-loaded batches (data loading excluded), after warm-up steps, all ranks synchronised.
Rates count the global batch (all processes). A single process uses 1 intra-op thread
(``SINGLE_PROCESS_THREADS``; the "2 threads" cases use 2), each of N torchrun processes
uses ``cpu_count / N`` threads (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks._common import write_results

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "taming_plugins" / "configs" / "demo.yaml"
DDP_PROCS = 2
WARMUP_STEPS = 2
STEPS, QUICK_STEPS = 8, 3
#: Items of the bundled-photos dataset used by the runs (enough for every batch).
DATA_ITEMS = 256
#: Wall-clock limit of one case (process start, model build, warm-up and timing).
CASE_TIMEOUT_S = 900

#: Intra-op threads of a single process unless a case says otherwise (see the notes).
SINGLE_PROCESS_THREADS = 1

#: name -> (stage, processes, option overrides)
CASES: dict[str, tuple[int, int, dict[str, Any]]] = {
    "stage1 fp32": (1, 1, {}),
    "stage1 fp32 2 threads": (1, 1, {"threads": 2}),
    "stage1 bf16 autocast": (1, 1, {"bf16": True}),
    "stage1 channels_last": (1, 1, {"channels_last": True}),
    "stage1 grad checkpointing": (1, 1, {"grad_checkpointing": True}),
    "stage1 fp32 torchrun×2": (1, DDP_PROCS, {}),
    "stage2 fp32": (2, 1, {}),
    "stage2 fp32 2 threads": (2, 1, {"threads": 2}),
    "stage2 bf16 autocast": (2, 1, {"bf16": True}),
    "stage2 fp32 torchrun×2": (2, DDP_PROCS, {}),
}


def _demo(device: str = "cpu") -> dict[str, Any]:
    from taming_plugins.demo import resolve_demo_config

    return resolve_demo_config(DEMO_CONFIG, device=device)


def _stage1_trainer(out: Path, device: str, options: dict[str, Any]) -> Any:
    from taming_plugins.demo import stage1_config
    from taming_plugins.training.stage1 import TokenizerTrainer

    config = stage1_config(_demo(device), out, None, progress=False).to_dict()
    for key in ("channels_last", "grad_checkpointing"):
        if options.get(key):
            config["tokenizer"][key] = True
    config["loss"]["disc_start"] = 0
    config["data"]["train_kwargs"] = {"length": DATA_ITEMS}
    config["optim"]["bf16"] = bool(options.get("bf16"))
    config["train"].update(steps=10**6, compile=options.get("compile", False))
    return TokenizerTrainer(config)


def _stage2_trainer(out: Path, device: str, options: dict[str, Any]) -> Any:
    from taming_core import create_from_spec
    from taming_plugins.demo import stage1_config, stage2_config
    from taming_plugins.training.stage2 import PriorTrainer

    demo = _demo(device)
    torch.manual_seed(demo["seed"])  # the same (untrained) tokenizer on every rank
    tokenizer = create_from_spec("tokenizer", stage1_config(demo, out, None, progress=False).tokenizer)
    config = stage2_config(demo, out, progress=False).to_dict()
    config["data"].update(max_items=DATA_ITEMS, train_kwargs={"length": DATA_ITEMS})
    config["optim"]["bf16"] = bool(options.get("bf16"))
    config["train"].update(steps=10**6, compile=options.get("compile", False))
    return PriorTrainer(config, tokenizer=tokenizer)


def _timed(step: Any, batches: list[Any], warmup: int) -> float:
    """Mean seconds per step over the timed steps (after ``warmup``; ranks synchronised)."""
    from taming_plugins.training.distributed import barrier

    for batch in batches[:warmup]:
        step(batch)
    barrier()
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    barrier()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def run_case(name: str, steps: int, device: str, result_path: Path) -> None:
    """Worker: build the trainer of ``name``, time ``steps`` steps, rank 0 writes JSON."""
    from taming_plugins.training.distributed import cleanup, get_world_size, is_main_process

    stage, _, options = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        if stage == 1:
            trainer = _stage1_trainer(Path(tmp), device, options)
            it = iter(trainer.stream)
            batches = [[next(it).to(trainer.device)] for _ in range(WARMUP_STEPS + steps)]
            seconds = _timed(trainer.run_step, batches, WARMUP_STEPS)  # as the loop runs a step
            per_rank = trainer.stream.batch_size
            unit_per_item = 1
        else:
            trainer = _stage2_trainer(Path(tmp), device, options)
            it = iter(trainer.stream)
            batches = [tuple(t.to(trainer.device) for t in next(it)) for _ in range(WARMUP_STEPS + steps)]
            seconds = _timed(trainer.run_step, batches, WARMUP_STEPS)  # as the loop runs a step
            per_rank = trainer.stream.batch_size
            unit_per_item = int(trainer.cache.tokens.shape[1])  # predicted image tokens per item
        world = get_world_size()
        if is_main_process():
            global_batch = per_rank * world
            row = {"case": name, "stage": stage, "processes": world, "threads_per_process":
                   torch.get_num_threads(), "batch_per_process": per_rank, "global_batch": global_batch,
                   "step_ms": seconds * 1e3, "steps_timed": steps, "device": str(trainer.device)}
            rate = global_batch * unit_per_item / seconds
            row["images_per_s" if stage == 1 else "tokens_per_s"] = rate
            result_path.write_text(json.dumps(row))
    cleanup()


def _launch(name: str, steps: int, device: str) -> Optional[dict[str, Any]]:
    _, procs, options = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        worker = ["-m", "benchmarks.train", "--worker", name, "--steps", str(steps), "--device", device,
                  "--result", str(result)]
        env = dict(os.environ)
        threads = options.get("threads", SINGLE_PROCESS_THREADS if procs == 1 else
                              max(1, (os.cpu_count() or 1) // procs))
        env["OMP_NUM_THREADS"] = str(threads)
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={procs}", *worker]
        else:
            cmd = [sys.executable, *worker]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
        if proc.returncode != 0 or not result.is_file():
            log.error("%s failed:\n%s", name, proc.stderr[-3000:])
            return None
        return json.loads(result.read_text())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} timed steps instead of {STEPS}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per torchrun process)")
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), help="subset of the cases")
    parser.add_argument("--worker", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        run_case(args.worker, args.steps, args.device, Path(args.result))
        return 0
    steps = QUICK_STEPS if args.quick else STEPS
    rows = []
    for name in args.cases or list(CASES):
        row = _launch(name, steps, args.device)
        if row is not None:
            rows.append(row)
            print(f"{name}: {row['step_ms']:.0f} ms/step", flush=True)
    for row in rows:  # throughput relative to the single-process fp32 run of the same stage
        key = "images_per_s" if row["stage"] == 1 else "tokens_per_s"
        base = next((r for r in rows if r["stage"] == row["stage"] and r["case"].endswith("fp32")), None)
        row["speedup"] = row[key] / base[key] if base else None
    write_results("train", rows, columns=["case", "processes", "threads_per_process", "global_batch",
                                          "step_ms", "images_per_s", "tokens_per_s", "speedup"],
                  title="Training speed (stage 1 and stage 2, 1 process vs torchrun)",
                  notes=["Default configs of taming_plugins/configs/demo.yaml; stage 1 with the "
                         "PatchGAN step on from step 0 and no LPIPS (offline), EMA quantizer.",
                         "Data loading excluded (pre-loaded batches); warm-up steps not timed.",
                         "speedup: throughput relative to the 1-process fp32 case (1 thread) of "
                         "the same stage (torchrun×2 doubles the global batch: each process keeps "
                         "its batch size, and uses 1 thread).",
                         "Cases ran one after another in fresh processes on a machine shared with "
                         "other jobs: expect noise of tens of percent.",
                         "Single processes use 1 intra-op thread: on this oversubscribed 2-core "
                         "machine (load ~7 from other jobs) a process with 2 threads stalls whenever "
                         "one of them is descheduled (the '2 threads' cases show it), so 1 thread "
                         "per process is the comparable setting for every case."],
                  meta={"steps": steps, "warmup_steps": WARMUP_STEPS}, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

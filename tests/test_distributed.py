"""Multi-process training (DDP, gloo, 2 CPU processes launched by torchrun).

The multi-process tests launch this file under ``python -m torch.distributed.run`` (the
real torchrun path); the ``__main__`` block below is the worker. The rest checks the
pieces in one process: sharding, speed options, trainer config keys.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from taming_core.errors import ConfigError, ValidationError
from taming_plugins.training import CheckpointManager, read_metrics
from taming_plugins.training.distributed import (ShardedDataStream, fast_optimizer_kwargs,
                                                 max_rank_divergence, maybe_compile, module_digest,
                                                 unwrap,
                                                 with_fast_kernels)
from taming_plugins.training.stage1 import TokenizerTrainer
from taming_plugins.training.stage2 import PriorTrainer

REPO = Path(__file__).resolve().parents[1]
#: A small original VQGAN checkpoint (f4), the frozen tokenizer of the stage-2 runs.
F4_CKPT = REPO / "tests" / "fixtures" / "taming_reference" / "vqgan_f4.ckpt"
NPROC = 2
#: Per-process batch in the multi-process runs; the single-process reference uses NPROC×.
BATCH = 2
STEPS = 3
#: Generous wall-clock limit of one torchrun launch (it normally takes ~15-30 s).
LAUNCH_TIMEOUT_S = 300
#: Two runs that differ only in the float summation order (all-reduce vs one big batch).
EQUIV_ATOL = 2e-5
EQUIV_RTOL = 1e-3
#: Gradients that are zero up to rounding (attention key biases: softmax is shift-invariant).
GRAD_FLOOR = 1e-8

TINY: dict[str, Any] = {
    "tokenizer": {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                  "attn_resolutions": [], "z_channels": 8, "resolution": 16, "embed_dim": 8,
                  "n_embed": 32, "quantizer": {"name": "vq"}},
    "loss": {"name": "vqgan", "disc_start": 0, "perceptual": None,
             "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 2}},
    "data": {"train": "photos", "image_size": 16, "batch_size": BATCH, "train_kwargs": {"length": 32},
             "val_kwargs": {"length": 4}, "val_batches": 1},
    "optim": {"learning_rate": 1e-3},
    "train": {"steps": STEPS, "log_every": 1, "val_every": 100, "image_every": 100, "ckpt_every": 100,
              "keep_last": 2, "progress": False, "device": "cpu"},
}


def tiny_config(out: Path, *, quantizer: str = "vq", gan: bool = True, batch: int = BATCH,
                **train: Any) -> dict[str, Any]:
    """The tiny run config; ``gan=False`` keeps the discriminator off (disc_start > steps)."""
    cfg = copy.deepcopy(TINY)
    cfg["tokenizer"]["quantizer"] = {"name": quantizer}
    cfg["data"]["batch_size"] = batch
    if not gan:
        cfg["loss"]["disc_start"] = 10 * STEPS
    cfg["train"].update(out=str(out), **train)
    return cfg


def torchrun(args: list[str], *, nproc: int = NPROC) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node=N ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _weights_and_grads(trainer: TokenizerTrainer) -> dict[str, torch.Tensor]:
    """Tokenizer state dict plus ``grad.<name>``: the gradients of the last step (after
    DDP's all-reduce; the trainer zeroes them only at the start of the next step)."""
    out = {k: v.detach().clone().contiguous() for k, v in trainer.tokenizer.state_dict().items()}
    out.update({f"grad.{k}": p.grad.detach().clone() for k, p in trainer.tokenizer.named_parameters()
                if p.grad is not None})
    return out


# --------------------------------------------------------------------------- worker
def _worker(spec_path: str) -> None:
    """Run every scenario of the spec in one process group; rank 0 writes the report."""
    import torch.distributed as dist

    from taming_plugins.training.distributed import cleanup, is_main_process

    spec = json.loads(Path(spec_path).read_text())
    report: dict[str, Any] = {}
    for name, scenario in spec["scenarios"].items():
        if "resume_from_steps" in scenario:  # a shorter run first, then resume to the end
            first = copy.deepcopy(scenario["config"])
            first["train"]["steps"] = scenario["resume_from_steps"]
            TokenizerTrainer(first).fit()
        trainer = TokenizerTrainer(scenario["config"])
        result = trainer.fit(resume="resume_from_steps" in scenario)
        entry = {"world_size": dist.get_world_size(), "step": result.step,
                 "tokenizer": max_rank_divergence(trainer.tokenizer),
                 "discriminator": max_rank_divergence(trainer.discriminator),
                 "ddp": type(trainer.model).__name__,
                 "losses": [m["total_loss"] for m in result.train_metrics]}
        if trainer.ema is not None:
            entry["ema"] = max_rank_divergence(trainer.ema.shadow)
        if is_main_process():
            save_file(_weights_and_grads(trainer), str(Path(spec["out"]) / f"{name}.safetensors"))
        report[name] = entry
    for name, config in spec.get("priors", {}).items():
        prior_trainer = PriorTrainer(config)
        result = prior_trainer.fit()
        report[name] = {"step": result.step, "loss": result.metrics["loss"],
                        "ddp": type(prior_trainer.model).__name__,
                        "prior": max_rank_divergence(prior_trainer.prior)}
    if is_main_process():
        (Path(spec["out"]) / "report.json").write_text(json.dumps(report))
    cleanup()


# --------------------------------------------------------------------------- multi-process
@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict[str, Any]:
    """One torchrun launch (2 processes) running all scenarios; returns the report."""
    root = tmp_path_factory.mktemp("ddp")
    ema_gan = tiny_config(root / "ema_gan", quantizer="ema")
    ema_gan["optim"].update(accumulate_grad_batches=2, ema_decay=0.9)
    scenarios = {
        "vq_gan": {"config": tiny_config(root / "vq_gan")},
        "ema_gan": {"config": ema_gan},
        "vq_equiv": {"config": tiny_config(root / "vq_equiv", gan=False)},
        "ema_equiv": {"config": tiny_config(root / "ema_equiv", quantizer="ema", gan=False)},
        "resume": {"config": tiny_config(root / "resume", steps=4, ckpt_every=2), "resume_from_steps": 2},
        "straight": {"config": tiny_config(root / "straight", steps=4, ckpt_every=2)},
    }
    spec = root / "spec.json"
    priors = {"prior": {"tokenizer": str(F4_CKPT),
                        "prior": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32},
                        "data": {"image_size": 16, "train_kwargs": {"length": 8}, "batch_size": BATCH},
                        "train": {"out": str(root / "prior"), "steps": STEPS, "log_every": 1,
                                  "ckpt_every": STEPS, "image_every": STEPS, "num_samples": 1,
                                  "pkeep": 0.5, "device": "cpu", "progress": False}}}
    spec.write_text(json.dumps({"out": str(root), "scenarios": scenarios, "priors": priors}))
    torchrun([str(Path(__file__).resolve()), "worker", str(spec)])
    return {"root": root, "report": json.loads((root / "report.json").read_text())}


@pytest.mark.parametrize("name", ["vq_gan", "ema_gan", "resume"])
def test_ranks_hold_identical_weights(ddp_runs, name) -> None:
    """After several steps (GAN on, EMA weights, grad accumulation) every rank holds the
    same tokenizer (codebook included), discriminator and EMA weights."""
    entry = ddp_runs["report"][name]
    assert entry["world_size"] == NPROC and entry["ddp"] == "DistributedDataParallel"
    assert entry["tokenizer"] == 0.0 and entry["discriminator"] == 0.0
    assert entry.get("ema", 0.0) == 0.0


@pytest.mark.parametrize("quantizer", ["vq", "ema"])
def test_two_processes_match_one_with_double_batch(ddp_runs, tmp_path, quantizer) -> None:
    """2 processes × batch b == 1 process × batch 2b: same losses every step, same averaged
    gradients, same codebook (float tolerance).

    Weights are compared through the gradients: conv biases followed by a one-channel
    GroupNorm have a zero gradient up to rounding, which Adam's first step turns into ±lr,
    so weight differences of order lr there say nothing about the distributed sum.
    """
    ref = TokenizerTrainer(tiny_config(tmp_path, quantizer=quantizer, gan=False, batch=NPROC * BATCH))
    init = {k: v.clone() for k, v in ref.tokenizer.state_dict().items()}
    result = ref.fit()
    ddp = load_file(str(ddp_runs["root"] / f"{quantizer}_equiv.safetensors"))
    ref_state = _weights_and_grads(ref)
    assert ddp.keys() == ref_state.keys()
    losses = [m["total_loss"] for m in result.train_metrics]
    torch.testing.assert_close(ddp_runs["report"][f"{quantizer}_equiv"]["losses"], losses,
                               rtol=EQUIV_RTOL, atol=0)
    grads = [k for k in ddp if k.startswith("grad.")]
    assert len(grads) > 10
    for key in grads:
        scale = float(ref_state[key].abs().max())
        torch.testing.assert_close(ddp[key], ref_state[key], rtol=EQUIV_RTOL, atol=EQUIV_RTOL * scale + GRAD_FLOOR,
                                   msg=lambda m, key=key: f"{key}: {m}")
    codebook = "quantize.embedding.weight"
    torch.testing.assert_close(ddp[codebook], ref_state[codebook], rtol=0, atol=EQUIV_ATOL)
    # Meaningful: training moved the codebook far more than the tolerance.
    assert float((ref_state[codebook] - init[codebook]).abs().max()) > 20 * EQUIV_ATOL


def test_resume_under_torchrun_continues_the_trajectory(ddp_runs) -> None:
    """Under torchrun, 2 steps + resume to 4 == 4 straight steps (GAN on): rank 0 wrote the
    checkpoint, every rank loaded it, the data shards continued where they stopped."""
    report = ddp_runs["report"]
    assert report["resume"]["step"] == report["straight"]["step"] == 4
    torch.testing.assert_close(report["resume"]["losses"], report["straight"]["losses"][2:])
    ckpts = CheckpointManager(ddp_runs["root"] / "resume" / "checkpoints")
    assert ckpts.latest() is not None and ckpts.latest().name.endswith("4")
    resumed = load_file(str(ddp_runs["root"] / "resume.safetensors"))
    straight = load_file(str(ddp_runs["root"] / "straight.safetensors"))
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, msg=lambda m, key=key: f"{key}: {m}")


def test_prior_trainer_under_torchrun(ddp_runs) -> None:
    """Stage 2 under torchrun: rank 0 builds the token cache, DDP keeps the prior identical,
    rank 0 writes checkpoints, samples and metrics."""
    entry, out = ddp_runs["report"]["prior"], ddp_runs["root"] / "prior"
    assert entry["step"] == STEPS and entry["ddp"] == "DistributedDataParallel"
    assert entry["prior"] == 0.0 and entry["loss"] > 0
    assert CheckpointManager(out / "checkpoints").latest().name.endswith(str(STEPS))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")] == list(range(1, STEPS + 1))
    assert len(list((out / "images").glob("*.png"))) == 1


def test_cli_train_tokenizer_under_torchrun(tmp_path) -> None:
    """`taming train-tokenizer` under torchrun: rank 0 writes metrics and a checkpoint."""
    cfg = tiny_config(tmp_path / "run", steps=2, ckpt_every=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = torchrun(["-m", "taming_plugins.cli", "train-tokenizer", "--config", str(path),
                     "--no-progress", "--device", "cpu"])
    assert '"step": 2' in proc.stdout
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [1, 2]  # one writer: no duplicated rows
    assert CheckpointManager(tmp_path / "run" / "checkpoints").latest() is not None


# --------------------------------------------------------------------------- one process
def test_sharded_stream_partitions_the_global_batch() -> None:
    """Rank shards are disjoint and together form the single-process batch of size world·b."""
    data = torch.arange(20).float().unsqueeze(1)
    single = ShardedDataStream(data, 4, seed=3)
    shards = [ShardedDataStream(data, 2, rank=r, world_size=2, seed=3) for r in range(2)]
    assert shards[0].batches_per_epoch == single.batches_per_epoch == 5
    it_single, its = iter(single), [iter(s) for s in shards]
    for _ in range(2 * single.batches_per_epoch):  # two epochs
        full = set(next(it_single).flatten().tolist())
        parts = [set(next(it).flatten().tolist()) for it in its]
        assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == full
    state = shards[1].state_dict()
    assert state["world_size"] == 2
    with pytest.raises(ValidationError, match="2 process"):
        ShardedDataStream(data, 2, seed=3).load_state_dict(state)
    with pytest.raises(ValidationError, match="rank"):
        ShardedDataStream(data, 2, rank=2, world_size=2)


def test_single_process_helpers_are_no_ops() -> None:
    module = torch.nn.Linear(3, 2)
    assert max_rank_divergence(module) == 0.0
    assert module_digest(module).shape == (4,)
    assert unwrap(module) is module


def test_maybe_compile() -> None:
    module = torch.nn.Linear(3, 2)
    assert maybe_compile(module, False) is module
    compiled = maybe_compile(module, "eager")
    x = torch.randn(4, 3)
    assert unwrap(compiled) is module and torch.equal(compiled(x), module(x))
    with pytest.raises(ConfigError, match="compile"):
        maybe_compile(module, 3)


def test_fast_adam_kernels() -> None:
    assert fast_optimizer_kwargs("cpu") == {"foreach": True}
    assert fast_optimizer_kwargs("cuda") == {"fused": True}
    assert fast_optimizer_kwargs("cpu", False) == {}
    module = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW([{"params": [module.weight], "weight_decay": 0.1},
                             {"params": [module.bias], "weight_decay": 0.0}], lr=0.01)
    fast = with_fast_kernels(opt, "cpu")
    assert [g["weight_decay"] for g in fast.param_groups] == [0.1, 0.0]
    assert all(g["foreach"] and g["lr"] == 0.01 for g in fast.param_groups)


@pytest.mark.parametrize("options", [
    {"optim": {"bf16": True}},
    {"tokenizer": {"channels_last": True}},
    {"tokenizer": {"grad_checkpointing": True}},
    {"optim": {"fused": False}},
    pytest.param({"train": {"compile": "eager"}}, marks=pytest.mark.slow),  # ~25 s of tracing
])
def test_speed_options_train(tmp_path, options) -> None:
    """Each speed option runs a real step and gives finite losses."""
    cfg = tiny_config(tmp_path, steps=1)
    for section, values in options.items():
        cfg[section].update(values)
    trainer = TokenizerTrainer(cfg)
    result = trainer.fit()
    assert result.step == 1 and torch.isfinite(torch.tensor(result.train_metrics[-1]["total_loss"]))
    if "compile" in options.get("train", {}):
        assert type(trainer.model).__name__ == "OptimizedModule"


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker(sys.argv[2])

"""Stage-1 trainer: real training on the bundled photos, exact resume, NaN guard, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from PIL import Image

from taming_core.errors import ConfigError, TrainingError
from taming_plugins.cli import main as cli_main
from taming_plugins.training import CheckpointManager, read_metrics
from taming_plugins.training.stage1 import TokenizerTrainer
from taming_plugins.training.stage1_config import learning_rate, resolve_config

#: A tiny VQGAN (f2) so a step takes milliseconds on CPU.
TINY = {
    "tokenizer": {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                  "attn_resolutions": [], "z_channels": 8, "resolution": 16, "embed_dim": 8,
                  "n_embed": 32, "quantizer": {"name": "vq"}},
    "loss": {"name": "vqgan", "disc_start": 2, "perceptual": None,
             "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 2}},
    "data": {"train": "photos", "image_size": 16, "batch_size": 2, "train_kwargs": {"length": 64},
             "val_kwargs": {"length": 8}, "val_batches": 1},
    "optim": {"learning_rate": 1e-3},
    "train": {"steps": 4, "log_every": 1, "val_every": 2, "image_every": 2, "ckpt_every": 2,
              "keep_last": 2, "progress": False, "device": "cpu"},
}


def _config(tmp_path, **train) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["train"].update(out=str(tmp_path), **train)
    return cfg


def _params(trainer: TokenizerTrainer) -> dict[str, torch.Tensor]:
    state = {f"tok.{k}": v for k, v in trainer.tokenizer.state_dict().items()}
    state.update({f"disc.{k}": v for k, v in trainer.discriminator.state_dict().items()})
    return state


def test_resume_continues_the_same_trajectory(tmp_path) -> None:
    """4 straight steps == 2 steps + resume + 2 steps (losses, weights, EMA, optimizers)."""
    def cfg(out):
        c = _config(out, steps=4)
        c["optim"].update(ema_decay=0.9, accumulate_grad_batches=2, grad_clip=1.0)
        return c

    straight = TokenizerTrainer(cfg(tmp_path / "a"))
    ref = straight.fit()
    first_cfg = cfg(tmp_path / "b")
    first_cfg["train"]["steps"] = 2
    TokenizerTrainer(first_cfg).fit()
    resumed = TokenizerTrainer(cfg(tmp_path / "b"))
    out = resumed.fit(resume=True)
    assert out.step == 4 and [h["step"] for h in out.train_metrics] == [3.0, 4.0]
    for got, want in zip(out.train_metrics, ref.train_metrics[2:]):
        # every metric, the quantizer's running usage window included (its state is checkpointed)
        diff = {k: (got[k], want.get(k)) for k in got if got[k] != want.get(k)}
        assert not diff, diff
    assert "disc_loss" in out.train_metrics[-1]  # the discriminator was trained after disc_start
    for key, value in _params(straight).items():
        assert torch.equal(value, _params(resumed)[key]), key
    for key, value in straight.ema.shadow.items():
        assert torch.equal(value, resumed.ema.shadow[key]), key
    # the metrics file reads like one run
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl", split="train")]
    assert steps == [1, 2, 3, 4]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    trainer = TokenizerTrainer(_config(tmp_path, steps=6))
    real = trainer.loss.generator_loss

    def poisoned(*args, step, **kwargs):
        total, logs = real(*args, step=step, **kwargs)
        if step == 2:  # the step right after the checkpoint at step 2 diverges
            return total * float("nan"), {**logs, "total_loss": float("nan")}
        return total, logs

    monkeypatch.setattr(trainer.loss, "generator_loss", poisoned)
    # the third step (logged as step 3) diverges; the guard names it and the checkpoint before it
    with pytest.raises(TrainingError, match=r"step 3: non-finite loss.*step_00000002"):
        trainer.fit()
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert [p.name for p in manager.checkpoints()] == ["step_00000002"]
    ck = manager.load("latest", modules={"tokenizer": trainer.tokenizer}, restore_rng=False)
    assert ck.step == 2
    assert all(torch.isfinite(v).all() for v in trainer.tokenizer.state_dict().values()
               if v.dtype.is_floating_point)


def test_outputs_grid_and_checkpoint_config(tmp_path) -> None:
    result = TokenizerTrainer(_config(tmp_path)).fit()
    grid = Image.open(tmp_path / "images" / "step_00000004.png")
    assert grid.size[1] > 2 * 16 and grid.size[1] < 3 * 16 + 10  # two rows: inputs, reconstructions
    config = json.loads((result.last_checkpoint / "config.json").read_text())
    assert config["tokenizer"]["name"] == "vqgan" and config["tokenizer"]["quantizer"]["codebook_size"] == 32
    assert set(result.val_metrics) >= {"val/l1", "val/usage", "val/perplexity", "val/codes_used"}
    # stage 2 can load the trained tokenizer from the run directory
    from taming_plugins.training.artifacts import load_frozen_tokenizer

    tok = load_frozen_tokenizer(tmp_path / "checkpoints")
    assert torch.equal(tok.last_layer, _saved_last_layer(tmp_path))


def _saved_last_layer(run_dir) -> torch.Tensor:
    from taming_core.io import load_tensors

    ck = CheckpointManager(run_dir / "checkpoints").latest()
    return load_tensors(ck / "model.safetensors")["tokenizer.decoder.conv_out.weight"]


def test_config_validation_and_lr_rule() -> None:
    cfg = resolve_config(TINY)
    assert cfg["optim"]["betas"] == [0.5, 0.9] and cfg["loss"]["gan_objective"] == "hinge"
    optim = {"base_learning_rate": 4.5e-6, "accumulate_grad_batches": 2, "learning_rate": None}
    assert learning_rate(optim, batch_size=12, world_size=2) == pytest.approx(2 * 2 * 12 * 4.5e-6)
    with pytest.raises(ConfigError, match="train.stepz: unknown key"):
        resolve_config({**TINY, "train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="tokenizer: required"):
        resolve_config({"data": {}})
    with pytest.raises(ConfigError, match="data.batch_size"):
        resolve_config({**TINY, "data": {"batch_size": 0}})


def test_cli_train_tokenizer(tmp_path, capsys) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path / "unused")))
    out = tmp_path / "run"
    rc = cli_main(["train-tokenizer", "--config", str(path), "--steps", "2", "--out", str(out),
                   "--no-progress", "--device", "cpu"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and "val/l1" in summary
    rc = cli_main(["train-tokenizer", "--config", str(path), "--steps", "3", "--out", str(out),
                   "--no-progress", "--resume"])
    assert rc == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    path.write_text(yaml.safe_dump({**TINY, "train": {"typo": 1}}))
    assert cli_main(["train-tokenizer", "--config", str(path)]) == 1
    assert "train.typo: unknown key" in capsys.readouterr().err


def test_bf16_autocast_step_is_finite(tmp_path) -> None:
    cfg = _config(tmp_path, steps=1)
    cfg["optim"]["bf16"] = True
    trainer = TokenizerTrainer(cfg)
    batch = next(iter(trainer.stream))
    logs = trainer.train_step([batch])
    assert torch.isfinite(torch.as_tensor(logs["total_loss"]))


def test_short_real_training_run_on_photos(tmp_path) -> None:
    """Evidence: on real photo crops the reconstruction error falls; usage is reported."""
    cfg = _config(tmp_path, steps=60, log_every=10, val_every=60, image_every=60, ckpt_every=60)
    cfg["tokenizer"].update(resolution=32)
    cfg["loss"]["disc_start"] = 1000  # reconstruction phase only (as the original warm-up)
    cfg["data"].update(image_size=32, batch_size=4, train_kwargs={"length": 256},
                       val_kwargs={"length": 16}, val_batches=4)
    cfg["optim"]["learning_rate"] = 2e-3
    trainer = TokenizerTrainer(cfg)
    before = trainer.evaluate()
    result = trainer.fit()
    after = result.val_metrics
    assert after["val/l1"] < 0.8 * before["val/l1"], (before, after)
    assert len(result.train_metrics) == 6  # one record per log_every steps (window means)
    assert result.train_metrics[-1]["l1"] < result.train_metrics[0]["l1"]
    assert 0 < after["val/usage"] <= 1 and after["val/codes_used"] >= 2
    assert "q_usage" in result.train_metrics[-1] and "q_perplexity" in result.train_metrics[-1]


def test_resume_restores_the_gumbel_temperature_schedule(tmp_path) -> None:
    """The Gumbel annealing step is not in the state dict; resume must set it again."""
    cfg = _config(tmp_path, steps=2)
    cfg["tokenizer"]["quantizer"] = {"name": "gumbel", "temperature": 1.0,
                                     "min_temperature": 0.5, "anneal_steps": 10}
    cfg["optim"]["accumulate_grad_batches"] = 2
    first = TokenizerTrainer(cfg)
    first.fit()
    trained_step = first.tokenizer.quantize.step
    assert trained_step == 4  # one schedule step per training forward (2 steps × 2 micro-batches)
    resumed = TokenizerTrainer(cfg)
    assert resumed.tokenizer.quantize.step == 0
    resumed.resume()
    assert resumed.tokenizer.quantize.step == trained_step
    assert resumed.tokenizer.quantize.temperature == first.tokenizer.quantize.temperature < 1.0

"""Run-directory safety, the divergence guard, crash leftovers and clear load errors (issue 12),
and the shared config/loop pieces of both trainers (issue 13)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from taming_core.errors import CheckpointError, ConfigError, TrainingError
from taming_plugins.cli import main as cli_main
from taming_plugins.training import CheckpointManager, read_metrics
from taming_plugins.training.checkpoint import INDEX_FILE, load_module_tensors
from taming_plugins.training.config import LEGACY_STAGE2_KEYS, PriorTrainConfig, TokenizerTrainConfig
from taming_plugins.training.guard import DivergenceGuard
from taming_plugins.training.stage1 import TokenizerTrainer
from taming_plugins.training.stage2 import PriorTrainer
from taming_plugins.training.trainer import FitResult, MetricWindow

from test_train_tokenizer import TINY


def _stage1(out, **train) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["train"].update(out=str(out), val_every=100, image_every=100, **train)
    return cfg


# --------------------------------------------------------------------------- run directory
def test_rerun_into_a_run_directory_is_refused_then_overwritten(tmp_path, capsys) -> None:
    """Re-running without --resume used to truncate metrics.jsonl and leave the old run's later
    checkpoints listed (so `latest` loaded the old run)."""
    out = tmp_path / "run"
    TokenizerTrainer(_stage1(out, steps=4, ckpt_every=2)).fit()
    with pytest.raises(ConfigError, match=r"holds an earlier run \(checkpoints up to step_00000004\).*"
                                          r"--resume.*--overwrite"):
        TokenizerTrainer(_stage1(out, steps=2, ckpt_every=2)).fit()
    assert len(read_metrics(out / "metrics.jsonl", "train")) == 4, "the refused run changed nothing"
    # the CLI says so in one line and exits 1
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_stage1(out, steps=2, ckpt_every=2)))
    assert cli_main(["train-tokenizer", "--config", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "--resume" in err[0]
    # --overwrite deletes the earlier run: one run per directory
    assert cli_main(["train-tokenizer", "--config", str(path), "--no-progress", "--overwrite"]) == 0
    manager = CheckpointManager(out / "checkpoints")
    assert [p.name for p in manager.checkpoints()] == ["step_00000002"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")] == [1, 2]
    with pytest.raises(ConfigError, match="exclude each other"):
        TokenizerTrainer(_stage1(out, steps=2)).fit(resume=True, overwrite=True)
    # resuming another run's checkpoint into this directory would mix two runs: refused too
    other = tmp_path / "other"
    TokenizerTrainer(_stage1(other, steps=2, ckpt_every=2)).fit()
    with pytest.raises(ConfigError, match="holds an earlier run"):
        TokenizerTrainer(_stage1(out, steps=4)).fit(resume=other / "checkpoints" / "step_00000002")


def test_stage2_refuses_a_run_directory_too(tmp_path) -> None:
    from test_train_prior import _config, _tokenizer
    from taming_plugins.data import BundledPhotos

    photos, tok = BundledPhotos(8, length=32, seed=0), _tokenizer()
    PriorTrainer(_config(tmp_path / "p", steps=3, ckpt_every=3), dataset=photos, tokenizer=tok).fit()
    again = PriorTrainer(_config(tmp_path / "p", steps=2, ckpt_every=2), dataset=photos, tokenizer=tok)
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):
        again.fit()
    result = again.fit(overwrite=True)
    assert isinstance(result, FitResult) and result.step == 2 and "loss" in result.metrics
    assert [p.name for p in CheckpointManager(tmp_path / "p" / "checkpoints").checkpoints()] == ["step_00000002"]


# --------------------------------------------------------------------------- divergence guard
def test_nonfinite_step_stops_through_the_guard(tmp_path) -> None:
    """At lr 1e6 a quantizer ValidationError used to fire instead of the guard."""
    trainer = TokenizerTrainer(_stage1(tmp_path, steps=6, ckpt_every=1, keep_last=1,
                                       log_every=1) | {"optim": {"learning_rate": 1e6}})
    with pytest.raises(TrainingError, match=r"step 2: non-finite .*step_00000001"):
        trainer.fit()
    assert [p.name for p in trainer.ckpt.checkpoints()] == ["step_00000001"]


def test_exploding_finite_loss_is_detected_and_the_good_checkpoint_kept(tmp_path) -> None:
    """At lr 30 the weights grow to ~1e18 with finite losses; it used to save them as good
    checkpoints and rotate the last good one away (keep_last 1)."""
    trainer = TokenizerTrainer(_stage1(tmp_path, steps=8, ckpt_every=1, keep_last=1,
                                       log_every=1) | {"optim": {"learning_rate": 30.0}})
    with pytest.raises(TrainingError, match=r"step \d: total_loss .* exceeds 100x its running median.*"
                                            r"step_0000000\d"):
        trainer.fit()
    kept = trainer.ckpt.checkpoints()
    assert len(kept) == 1 and kept[0] == trainer.last_checkpoint
    fresh = TokenizerTrainer(_stage1(tmp_path / "check", steps=1))
    trainer.ckpt.load(kept[0], modules={"tokenizer": fresh.tokenizer}, restore_rng=False)
    assert max(float(p.detach().abs().max()) for p in fresh.tokenizer.parameters()) < 1e3


def test_divergence_factor_is_configurable() -> None:
    guard = DivergenceGuard("loss", factor=3.0, window=4)
    for v in (1.0, 1.2, 0.9):
        guard.check(1, {"loss": v})
    guard.check(2, {"loss": 2.9})
    with pytest.raises(TrainingError, match="exceeds 3x"):
        guard.check(3, {"loss": 10.0})
    DivergenceGuard("loss", factor=None).check(1, {"loss": 1e30})  # off
    with pytest.raises(ConfigError, match="train.divergence_factor"):
        TokenizerTrainConfig.from_dict({**TINY, "train": {"divergence_factor": 0.5}})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=30), st.integers(0, 29))
def test_guard_only_fires_on_values_above_factor_times_median(values, bad_at) -> None:
    """Property: finite values within the factor never stop a run; a NaN observed at any step
    is reported with that step at the next check."""
    guard = DivergenceGuard("loss", factor=1000.0, window=10)
    for i, v in enumerate(values):
        guard.observe(i + 1, {"loss": torch.tensor(v)})
        guard.check(i + 1, {"loss": v})
    n = len(values)
    bad_step = n + 1 + bad_at % 5
    for step in range(n + 1, bad_step + 3):
        value = torch.tensor(float("nan") if step == bad_step else 1.0)
        guard.observe(step, {"loss": value, "other": torch.tensor(1.0)})
    with pytest.raises(TrainingError, match=rf"^step {bad_step}: non-finite loss or gradient \(loss\)"):
        guard.check(bad_step + 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2), min_size=1, max_size=20))
def test_metric_window_means_equal_python_means(rows) -> None:
    window = MetricWindow()
    for a, b in rows:
        window.add({"t": torch.tensor(a, dtype=torch.float64), "f": b})
    mean = window.mean()
    assert mean["t"] == pytest.approx(sum(r[0] for r in rows) / len(rows), rel=1e-5, abs=1e-3)
    assert mean["f"] == pytest.approx(sum(r[1] for r in rows) / len(rows), rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------- crash leftovers
def test_crash_leftovers_are_cleaned_and_an_unindexed_checkpoint_is_recovered(tmp_path) -> None:
    TokenizerTrainer(_stage1(tmp_path, steps=4, ckpt_every=2)).fit()
    ckpts = tmp_path / "checkpoints"
    # a crash after step_00000004 was moved into place, before the index listed it
    index = json.loads((ckpts / INDEX_FILE).read_text())
    index["checkpoints"] = ["step_00000002"]
    (ckpts / INDEX_FILE).write_text(json.dumps(index))
    # and leftovers of unfinished writes
    (ckpts / ".step_00000006.abc123.tmp").mkdir()
    (ckpts / ".step_00000006.abc123.tmp" / "model.safetensors").write_bytes(b"partial")
    (ckpts / f".{INDEX_FILE}.xyz.tmp").write_text("{")
    resumed = TokenizerTrainer(_stage1(tmp_path, steps=5, ckpt_every=5))
    result = resumed.fit(resume=True)
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) == []
    # recovered, not redone: training went on from step 4
    assert [h["step"] for h in result.train_metrics] == [5.0]
    assert [p.name for p in resumed.ckpt.checkpoints()][-2:] == ["step_00000004", "step_00000005"]


# --------------------------------------------------------------------------- load errors
def test_state_dict_mismatch_names_the_keys(tmp_path) -> None:
    a = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    tensors = {f"m.{k}": v for k, v in a.state_dict().items()}
    tensors["m.extra.weight"] = torch.zeros(1)
    del tensors["m.1.bias"]
    tensors["m.0.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError) as info:
        load_module_tensors({"m": nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))}, tensors, "ckpt")
    message = str(info.value)
    assert "missing 1.bias" in message and "unexpected extra.weight" in message
    assert "mis-shaped 0.weight: checkpoint (4, 2), model (3, 2)" in message
    assert "\n" not in message


def test_resume_with_another_architecture_names_the_keys(tmp_path) -> None:
    TokenizerTrainer(_stage1(tmp_path, steps=2, ckpt_every=2)).fit()
    other = _stage1(tmp_path, steps=4)
    other["tokenizer"]["n_embed"] = 64
    with pytest.raises(CheckpointError, match=r"mis-shaped quantize\.embedding\.weight: checkpoint "
                                              r"\(32, 8\), model \(64, 8\)"):
        TokenizerTrainer(other).fit(resume=True)


# --------------------------------------------------------------------------- configs
def test_flat_stage2_configs_still_load_with_a_mapping(tmp_path) -> None:
    flat = {"out_dir": str(tmp_path), "data": "photos", "image_size": 16, "lr": 1e-3, "steps": 7,
            "sample_every": 3, "precision": "bf16", "data_kwargs": {"length": 8}, "pkeep": 0.5}
    with pytest.warns(DeprecationWarning, match=r"lr -> optim\.learning_rate.*sample_every -> train\.image_every"):
        cfg = PriorTrainConfig.from_dict(flat)
    assert (cfg.train.out, cfg.train.steps, cfg.train.image_every, cfg.train.pkeep) == (str(tmp_path), 7, 3, 0.5)
    assert (cfg.data.train, cfg.data.image_size, cfg.data.train_kwargs) == ("photos", 16, {"length": 8})
    assert cfg.optim.learning_rate == 1e-3 and cfg.optim.bf16 is True
    with pytest.raises(ConfigError, match=r"train\.steps: given both as a flat key and in the 'train' section"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PriorTrainConfig.from_dict({"steps": 3, "train": {"steps": 4}})


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(LEGACY_STAGE2_KEYS)))
def test_every_flat_key_maps_to_an_existing_section_key(key) -> None:
    section, name = LEGACY_STAGE2_KEYS[key]
    default = getattr(getattr(PriorTrainConfig(), section), name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = PriorTrainConfig.from_dict({key: default})
    assert getattr(getattr(cfg, section), name) == default


def test_both_stages_share_section_names_and_round_trip() -> None:
    one = TokenizerTrainConfig.from_dict(TINY)
    two = PriorTrainConfig.from_dict({"tokenizer": "x"})
    shared = {"tokenizer", "data", "optim", "train"}
    assert shared <= set(one.to_dict()) and shared <= set(two.to_dict())
    # the same data keys in both stages (stage 2's class only changes the default batch)
    assert isinstance(two.data, type(one.data)) and set(one.to_dict()["data"]) == set(two.to_dict()["data"])
    assert TokenizerTrainConfig.from_dict(one.to_dict()) == one
    assert PriorTrainConfig.from_dict(json.loads(json.dumps(two.to_dict()))) == two
    for cls, raw in ((TokenizerTrainConfig, {**TINY, "optim": {"lr": 1}}),
                     (PriorTrainConfig, {"optim": {"lr": 1}})):
        with pytest.raises(ConfigError, match=r"^optim\.lr: unknown key; expected one of learning_rate"):
            cls.from_dict(raw)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5, unique=True), st.integers(0, 3),
       st.booleans(), st.booleans())
def test_recover_keeps_every_complete_checkpoint_and_drops_leftovers(steps, unindexed, tmp_dir, tmp_index) -> None:
    """Property: after recover() no unfinished file is left, the newest complete checkpoint
    (indexed or not) is `latest`, and keep_last still holds."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        manager = CheckpointManager(Path(d), keep_last=3)
        module = nn.Linear(1, 1)
        steps = sorted(steps)
        for s in steps:
            manager.save(s, modules={"m": module}, save_rng=False)
        index_path = Path(d) / INDEX_FILE
        index = json.loads(index_path.read_text())
        drop = min(unindexed, len(index["checkpoints"]) - 1)  # the newest ones were never indexed
        if drop:
            index["checkpoints"] = index["checkpoints"][:-drop]
            index_path.write_text(json.dumps(index))
        if tmp_dir:
            (Path(d) / ".step_00000099.x.tmp").mkdir()
        if tmp_index:
            (Path(d) / f".{INDEX_FILE}.y.tmp").write_text("{")
        manager.recover()
        assert not [p for p in Path(d).iterdir() if p.name.startswith(".")]
        assert manager.latest().name == f"step_{steps[-1]:08d}"
        assert len(manager.checkpoints()) <= 3


def test_flat_stage2_keywords_still_construct(tmp_path) -> None:
    """`PriorTrainConfig(out_dir=..., steps=...)` as the earlier docs showed."""
    with pytest.warns(DeprecationWarning, match="out_dir -> train.out"):
        cfg = PriorTrainConfig(tokenizer="runs/vq", out_dir=str(tmp_path), data="photos", image_size=64,
                               steps=2000)
    assert (cfg.train.out, cfg.data.train, cfg.data.image_size, cfg.train.steps) == (
        str(tmp_path), "photos", 64, 2000)
    assert cfg == PriorTrainConfig.from_dict(cfg.to_dict())

"""Generic training infrastructure: state flattening, checkpoints, EMA, data stream, metrics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from taming_core.errors import CheckpointError, TrainingError, ValidationError
from taming_plugins.training import (EMA, CheckpointManager, DataStream, MetricsLogger, check_finite,
                                     flatten_state, read_metrics, unflatten_state)
from taming_plugins.training import checkpoint as checkpoint_mod


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.5, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(6, 3)).square().mean().backward()
        opt.step()
    return model, opt


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _assert_same_state(a[k], b[k])
        else:
            assert a[k] == b[k], k


# ---------------------------------------------------------------- state flattening
def test_flatten_roundtrip_keeps_types() -> None:
    value = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
             "groups": [{"betas": (0.5, 0.9), "params": [0, 1], "lr": float("inf")}],
             "np": np.arange(5, dtype=np.uint32), "py": random.getstate(), "none": None}
    skeleton, tensors = flatten_state(value, "x")
    json.dumps(skeleton)  # JSON-able
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["exp_avg"], torch.ones(2))
    assert back["groups"][0]["betas"] == (0.5, 0.9) and back["groups"][0]["lr"] == float("inf")
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == list(range(5))
    random.setstate(back["py"])  # a valid python RNG state


def test_flatten_rejects_unknown_types() -> None:
    with pytest.raises(CheckpointError, match="unsupported type object"):
        flatten_state({"a": object()}, "x")


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_restores_everything(tmp_path) -> None:
    model, opt = _trained()
    ema = EMA(model, 0.9)
    ema.update()
    manager = CheckpointManager(tmp_path)
    manager.save(3, modules={"m": model}, optimizers={"opt": opt}, stateful={"ema": ema},
                 config={"lr": 1e-2}, extra={"note": "x"}, metrics={"loss": 1.5})
    expected = (torch.rand(2), random.random(), np.random.rand())

    model2, opt2 = _trained(seed=1)
    ema2 = EMA(model2, 0.5)
    ck = manager.load("latest", modules={"m": model2}, optimizers={"opt": opt2}, stateful={"ema": ema2})
    assert ck.step == 3 and ck.config == {"lr": 1e-2} and ck.extra == {"note": "x"}
    assert ck.metrics == {"loss": 1.5}
    _assert_same_state(model.state_dict(), model2.state_dict())
    _assert_same_state(opt.state_dict(), opt2.state_dict())
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.5, 0.9)
    assert ema2.decay == 0.9 and ema2.num_updates == 1
    _assert_same_state(ema.shadow, ema2.shadow)
    # the RNG states were restored to the moment of saving
    assert torch.equal(torch.rand(2), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
    # no pickle anywhere: safetensors + JSON only
    files = {p.name for p in ck.path.iterdir()}
    assert files == {"model.safetensors", "train_state.safetensors", "state.json", "config.json"}


def test_keep_last_and_best(tmp_path) -> None:
    model, opt = _trained()
    manager = CheckpointManager(tmp_path, keep_last=2, best_metric="val", best_mode="min")
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0), (5, float("nan"))]:
        manager.save(step, modules={"m": model}, optimizers={"opt": opt}, metrics={"val": val})
    names = [p.name for p in manager.checkpoints()]
    assert names == ["step_00000002", "step_00000004", "step_00000005"]
    assert manager.best().name == "step_00000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"] + names
    ck = manager.load("best", modules={"m": _model()})
    assert ck.step == 2


def test_crash_during_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch) -> None:
    model, opt = _trained()
    manager = CheckpointManager(tmp_path)
    first = manager.save(1, modules={"m": model}, optimizers={"opt": opt})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    real = checkpoint_mod.save_tensors

    def crash(path, tensors, metadata=None):
        if path.name == checkpoint_mod.TRAIN_STATE_FILE:
            raise OSError("disk full")
        real(path, tensors, metadata)

    monkeypatch.setattr(checkpoint_mod, "save_tensors", crash)
    with pytest.raises(OSError, match="disk full"):
        manager.save(2, modules={"m": model}, optimizers={"opt": opt})
    assert [p.name for p in manager.checkpoints()] == ["step_00000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "step_00000001"]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def test_load_errors_are_clear(tmp_path) -> None:
    model, opt = _trained()
    manager = CheckpointManager(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no latest checkpoint"):
        manager.load("latest", modules={"m": model})
    manager.save(1, modules={"m": model}, optimizers={"opt": opt})
    with pytest.raises(CheckpointError, match="do not match the model"):
        manager.load("latest", modules={"m": nn.Linear(3, 4)})
    with pytest.raises(CheckpointError, match="no weights for module 'other'"):
        manager.load("latest", modules={"other": nn.Linear(3, 4)})
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        manager.load(tmp_path, modules={"m": model})
    # a run directory resolves to its latest checkpoint
    assert manager.resolve(tmp_path / "run").name == "step_00000001"


def test_non_main_process_does_not_write(tmp_path) -> None:
    model, _ = _trained()
    assert CheckpointManager(tmp_path / "c", is_main_process=False).save(1, modules={"m": model}) is None
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- EMA
def test_ema_average_and_swap() -> None:
    torch.manual_seed(0)
    model = _model()
    ema = EMA(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    weight = "0.weight"
    expected = 0.75 * start[weight] + 0.25 * (start[weight] + 1.0)
    assert torch.allclose(ema.shadow[weight], expected)
    current = model.state_dict()[weight].clone()
    with ema.swapped():
        assert torch.allclose(model.state_dict()[weight], expected)
    assert torch.equal(model.state_dict()[weight], current)
    with pytest.raises(ValidationError, match=r"decay.*\[0, 1\)"):
        EMA(model, decay=1.0)


# ---------------------------------------------------------------- data stream
class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.epochs = n, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def test_data_stream_resumes_exactly() -> None:
    full = DataStream(_Items(10), 3, seed=5)
    it = iter(full)
    reference = [next(it).tolist() for _ in range(8)]
    assert sorted(sum(reference[:3], [])) != list(range(9))  # shuffled
    first = DataStream(_Items(10), 3, seed=5)
    it = iter(first)
    head = [next(it).tolist() for _ in range(4)]
    resumed = DataStream(_Items(10), 3, seed=5)
    resumed.load_state_dict(first.state_dict())
    it = iter(resumed)
    tail = [next(it).tolist() for _ in range(4)]
    assert head + tail == reference
    assert resumed.dataset.epochs[0] == 1  # set_epoch called with the restored epoch
    with pytest.raises(ValidationError, match="batch size 3"):
        DataStream(_Items(10), 2, seed=5).load_state_dict(first.state_dict())
    with pytest.raises(ValidationError, match="fewer than one batch"):
        DataStream(_Items(2), 3)


# ---------------------------------------------------------------- metrics / NaN guard
def test_metrics_logger_truncates_on_resume(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    logger = MetricsLogger(path)
    for step in range(1, 6):
        logger.log(step, {"loss": step * 0.5})
    logger.log(5, {"l1": float("nan")}, split="val")
    resumed = MetricsLogger(path, resume_step=3)
    resumed.log(4, {"loss": 9.0})
    records = read_metrics(path, split="train")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == 9.0
    assert read_metrics(path, split="val") == []


def test_check_finite_names_step_and_checkpoint() -> None:
    check_finite({"loss": torch.tensor(1.0)}, step=3)
    with pytest.raises(TrainingError, match=r"step 7: non-finite loss \(loss=nan\).*ckpt/step_5"):
        check_finite({"loss": torch.tensor(float("nan")), "ok": 1.0}, step=7,
                     last_checkpoint="ckpt/step_5")
    with pytest.raises(TrainingError, match="no checkpoint was written yet"):
        check_finite({"loss": float("inf")}, step=1)

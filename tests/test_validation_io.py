"""Input validation helpers and safe, atomic checkpoint IO."""

from __future__ import annotations

import pickle

import pytest
import torch

from taming_core import CheckpointError, ValidationError
from taming_core.io import (atomic_path, load_tensors, read_json, save_tensors, torch_load_safe,
                            write_json)
from taming_core.validation import check_choice, check_divisible, check_positive, check_tensor


def test_check_tensor_accepts_and_binds_dims():
    sizes = check_tensor(torch.zeros(2, 3, 4, 4), "x", dims=("B", 3, "H", "H"), dtype="float",
                         value_range=(-1, 1), finite=True)
    assert sizes == {"B": 2, "H": 4}


@pytest.mark.parametrize("value, kwargs, message", [
    ([1, 2], {"dims": ("N",)}, r"x: expected a tensor of shape N, got list"),
    (torch.zeros(2, 3, dtype=torch.long), {"dtype": "float"}, r"expected a float tensor, got torch.int64"),
    (torch.zeros(2, 3), {"dims": ("B", "C", "H")}, r"of shape B×C×H, got torch.float32 of shape \(2, 3\)"),
    (torch.zeros(2, 3), {"dims": ("B", 4)}, r"dim 1 must be 4"),
    (torch.zeros(2, 3), {"dims": ("N", "N")}, r"N is both 2 and 3"),
    (torch.zeros(0, 3), {}, r"expected a non-empty tensor"),
    (torch.tensor([0.0, float("nan")]), {"finite": True}, r"contains NaN or Inf"),
    (torch.tensor([0.0, 2.0]), {"value_range": (-1, 1)}, r"values must lie in \[-1, 1\], got min 0, max 2"),
    (torch.zeros(2, dtype=torch.float32), {"dtype": "long"}, r"expected an int64 \(Long\) tensor"),
])
def test_check_tensor_errors(value, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        check_tensor(value, "x", **kwargs)


def test_scalar_checks():
    check_positive(3, "n")
    with pytest.raises(ValidationError, match=r"n: expected an integer > 0, got 0"):
        check_positive(0, "n")
    with pytest.raises(ValidationError, match="got True"):
        check_positive(True, "n")
    check_positive(0.5, "p", integer=False)
    with pytest.raises(ValidationError, match="expected one of"):
        check_choice("c", "mode", ["a", "b"])
    with pytest.raises(ValidationError, match="divisible by the downsample factor 4, got 6×8"):
        check_divisible(6, 8, 4, "encode(images)")


def test_save_and_load_tensors_roundtrip(tmp_path):
    t = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.long)}
    t["view"] = t["a"][0]  # shared storage must be fine
    save_tensors(tmp_path / "w.safetensors", t, metadata={"k": "v"})
    back = load_tensors(tmp_path / "w.safetensors")
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("crash while writing")
    assert read_json(target) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_corrupt_and_foreign_files_raise_checkpoint_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_tensors(bad)
    with pytest.raises(CheckpointError, match="file not found"):
        load_tensors(tmp_path / "nope.safetensors")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "obj": Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        torch_load_safe(evil, "a taming-transformers checkpoint")
    truncated = tmp_path / "trunc.ckpt"
    torch.save({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt or not"):
        torch_load_safe(truncated)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        torch_load_safe(text)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert torch_load_safe(good)["w"].sum() == 3


def test_pickle_module_unused():
    # io must not fall back to plain pickle for checkpoints
    import inspect

    import taming_core.io as io_mod

    assert "pickle.load" not in inspect.getsource(io_mod)
    assert pickle  # imported for the test module only

"""Smoke test of ``benchmarks/quantizers.py``: every default column trains and reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds benchmarks/

from benchmarks import quantizers as bench  # noqa: E402
from benchmarks._image_sets import ImageSet  # noqa: E402

TINY = bench.Budget(steps=2, batch_size=4, train_images=8, val_images=4)


def test_every_default_quantizer_trains_evaluates_and_plots(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = ImageSet("tiny", torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1,
                    torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1, "random")
    rows = []
    for name in bench.DEFAULT_QUANTIZERS.split(","):
        spec = bench.default_spec(name)
        row = bench.train_one(name, lambda spec=spec: bench.build_quantizer(spec, TINY.steps), data,
                              TINY, seed=0)
        assert 0 < row["usage_pct"] <= 100 and 0 < row["train_usage_pct"] <= 100
        assert row["bits_nominal"] == pytest.approx(10, abs=0.05)  # every default is ~10 bits/token
        assert 0 <= row["bits_effective"] <= row["bits_nominal"] + 1e-6
        assert row["psnr_db"] > 0 and row["s_per_step"] > 0 and len(row["curve"]) == TINY.steps
        rows.append(row)
    (note,) = bench.target_notes(rows)
    assert note.startswith("target on tiny: ema held-out usage")
    bench.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_unknown_quantizer_name_fails_before_training():
    with pytest.raises(KeyError, match="unknown quantizer"):
        bench.main(["--quantizers", "vqq", "--no-peers", "--steps", "1"])


def test_rfid_column_on_held_out_images():
    """With the eval extra, ``--rfid-images`` adds a finite rFID computed by the bundled network."""
    from taming_plugins.eval import fid_available

    ok, reason = fid_available()
    if not ok:
        pytest.skip(f"eval extra not installed: {reason}")
    gen = torch.Generator().manual_seed(1)
    data = ImageSet("tiny", torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1,
                    torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1, "random")
    spec = bench.default_spec("vq")
    row = bench.train_one("vq", lambda: bench.build_quantizer(spec, TINY.steps), data, TINY, seed=0,
                          rfid_images=2)
    assert row["rfid"] == row["rfid"] and row["rfid"] >= 0  # finite, not NaN

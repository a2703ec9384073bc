"""``taming demo`` at a tiny scale: every output file, sane metrics, flags and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from PIL import Image

from taming_core.errors import ConfigError
from taming_plugins.cli import main
from taming_plugins.demo import (FILES, default_demo_config, resolve_demo_config,
                                 summary_table, DemoResult)

#: A demo small enough for the default test run (a few steps of each stage).
TINY = {
    "stage1": {"tokenizer": {"name": "vqgan", "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
                             "attn_resolutions": [], "z_channels": 8, "embed_dim": 8,
                             "quantizer": {"name": "ema", "codebook_size": 32, "dim": 8}},
               "loss": {"discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 1}},
               "data": {"batch_size": 4}},
    "stage2": {"data": {"batch_size": 8, "max_items": 32},
               "prior": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32},
               "sampler": {"name": "autoregressive", "top_k": 16}, "train": {"num_samples": 2}},
    "eval": {"val_images": 8, "show_images": 4, "sample_fid": False},  # Inception on the CPU: ~20 s
}
TINY_SIZE = 16          # 4×4 token grid
TINY_STEPS = ("3", "4")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Run the CLI once for the whole module (threads restored afterwards)."""
    tmp = tmp_path_factory.mktemp("demo")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    out = tmp / "out"
    threads = torch.get_num_threads()
    try:
        rc = main(["demo", "--out", str(out), "--config", str(config), "--image-size", str(TINY_SIZE),
                   "--steps-tokenizer", TINY_STEPS[0], "--steps-prior", TINY_STEPS[1], "--threads", "1",
                   "--seed", "3", "--device", "cpu", "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out


def test_demo_writes_every_output(demo_run):
    for key, name in FILES.items():
        assert (demo_run / name).exists(), key
    assert (demo_run / "pipeline" / "pipeline.json").is_file()
    assert (demo_run / "tokenizer" / "checkpoints").is_dir()
    assert (demo_run / "prior" / "metrics.jsonl").is_file()


def test_demo_images_have_the_promised_layout(demo_run):
    grid = TINY_SIZE // 4
    with Image.open(demo_run / "reconstructions.png") as recon:
        # 4 columns (show_images) × 2 rows (inputs above reconstructions), 2 px padding
        assert recon.size == (2 + 4 * (TINY_SIZE + 2), 2 + 2 * (TINY_SIZE + 2))
    with Image.open(demo_run / "sliding_window.png") as big:
        side = 2 * TINY_SIZE  # window_scale 2: 4× the area of the training window
        n = default_demo_config()["sampling"]["sliding_samples"]
        # the sliding-window samples in one row, 2 px padding (one image: no padding)
        assert big.size == ((2 + n * (side + 2), side + 4) if n > 1 else (side, side))
    with Image.open(demo_run / "samples.png") as samples:
        assert samples.size[1] == TINY_SIZE + 4
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["settings"]["token_grid"] == [grid, grid]
    assert metrics["settings"]["sliding_window_grid"] == [2 * grid, 2 * grid]


def test_demo_metrics_are_sane(demo_run):
    m = json.loads((demo_run / "metrics.json").read_text())
    for key in ("psnr_db", "ssim", "codebook_usage_pct", "codebook_perplexity", "prior_perplexity",
                "prior_val_loss", "sampling_tokens_per_s", "sliding_window_tokens_per_s"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert 0 < m["psnr_db"] < 60
    assert 0 < m["codebook_usage_pct"] <= 100
    assert 1 <= m["codebook_perplexity"] <= 32
    assert 1 <= m["prior_perplexity"] <= 33 + 1e-6  # at most the prior's vocabulary (32 codes + SOS)
    assert m["sampling_tokens_per_s"] > 0 and m["sliding_window_tokens_per_s"] > 0
    assert set(m["seconds"]) == set(m["cpu_seconds"]) == {"stage1", "stage2", "eval", "sampling", "figures",
                                                          "total"}
    assert 0 <= m["colour_err"] < 1 and m["border_ratio"] > 0 and m["sliding_edge_ratio"] > 0
    assert "sample_fid_note" in m and ("sample_fid" not in m or m["sample_fid"] >= 0)
    s = m["settings"]
    assert (s["stage1_steps"], s["stage2_steps"]) == tuple(map(int, TINY_STEPS))
    assert s["seed"] == 3 and s["threads"] == 1 and s["codebook_size"] == 32


def test_demo_pipeline_is_usable_by_taming_sample(demo_run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", "--pipeline", str(demo_run / "pipeline"), "--n", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "grid.png", "sample_0000.png", "sample_0001.png"]


def test_summary_table_lists_metrics_and_files(tmp_path):
    result = DemoResult(out=tmp_path, files={"metrics": tmp_path / "metrics.json"},
                        metrics={"psnr_db": 21.5, "sampling_tokens_per_s": 1234.0,
                                 "seconds": {"total": 200.0}})
    text = summary_table(result)
    assert "held-out PSNR (dB)" in text and "21.50" in text and "1234" in text
    assert "time: total (s" in text and str(tmp_path / "metrics.json") in text


def test_config_merges_and_overrides():
    cfg = resolve_demo_config({"stage2": {"train": {"steps": 7}}}, image_size=64,
                              stage1__train__steps=9, seed=None)
    assert (cfg["stage2"]["train"]["steps"], cfg["stage1"]["train"]["steps"], cfg["image_size"]) == (7, 9, 64)
    assert cfg["seed"] == default_demo_config()["seed"]  # None overrides are ignored
    assert cfg["stage2"]["data"]["batch_size"] == default_demo_config()["stage2"]["data"]["batch_size"]


def test_demo_builds_the_trainers_own_configs(tmp_path):
    """No third schema: the demo's stages are TokenizerTrainConfig / PriorTrainConfig, the
    classes `taming train-tokenizer` and `taming train-prior` read their --config with."""
    from taming_plugins.demo import stage1_config, stage2_config
    from taming_plugins.training.config import PriorTrainConfig, TokenizerTrainConfig

    cfg = resolve_demo_config(TINY, image_size=16, stage1__train__steps=10, disc_start_fraction=0.7)
    one = stage1_config(cfg, tmp_path / "tok", None, progress=False)
    two = stage2_config(cfg, tmp_path / "prior", progress=False)
    assert isinstance(one, TokenizerTrainConfig) and isinstance(two, PriorTrainConfig)
    assert TokenizerTrainConfig.from_dict(one.to_dict()) == one  # round trip through the CLI's reader
    assert PriorTrainConfig.from_dict(two.to_dict()) == two
    assert one.loss["disc_start"] == 7 and one.tokenizer["resolution"] == 16  # 0.7 of 10 steps
    assert two.data.max_items == 32 and two.train.out == str(tmp_path / "prior")


@pytest.mark.parametrize("bad, match", [
    ({"nonsense": 1}, "nonsense: unknown demo config key"),
    ({"stage1": {"train": {"stpes": 3}}}, "stage1.train.stpes: unknown key"),
    ({"disc_start_fraction": 2}, "disc_start_fraction"),
    ({"sampling": {"sliding_policy": "fast"}}, "sliding_policy"),
    ({"image_size": 0}, "image_size"),
])
def test_bad_config_is_rejected_with_its_key(bad, match):
    with pytest.raises(ValueError, match=match):
        resolve_demo_config(bad)


def test_perceptual_choice_is_explicit(monkeypatch, tmp_path):
    import taming_plugins.losses.lpips as lpips_mod
    from taming_plugins.losses.lpips import perceptual_choice

    monkeypatch.setattr(lpips_mod, "default_backbone_path", lambda net="vgg": tmp_path / "missing.pth")
    spec, text = perceptual_choice("auto")
    assert spec is None and "not found" in text
    (tmp_path / "missing.pth").write_bytes(b"x")
    spec, text = perceptual_choice("auto")
    assert spec == {"name": "lpips"} and text.startswith("lpips")
    assert perceptual_choice("none")[0] is None
    with pytest.raises(ConfigError, match="stage1.loss.perceptual"):
        perceptual_choice(3, "stage1.loss.perceptual")


def test_cli_usage_and_runtime_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--steps-prior", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1: {train: {stpes: 3}}\n", encoding="utf-8")
    assert main(["demo", "--config", str(bad), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage1.train.stpes" in err[0]


def test_prior_data_is_cut_to_train_images(tmp_path):
    import numpy as np

    from taming_plugins.demo import _prior_dataset

    for i in range(5):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    cfg = resolve_demo_config({"data": str(tmp_path), "stage2": {"data": {"max_items": 3}}}, image_size=16)
    assert len(_prior_dataset(cfg)) == 3
    cfg = resolve_demo_config({"stage2": {"data": {"max_items": 7}}}, image_size=16)  # photos: drawn crops
    assert len(_prior_dataset(cfg)) == 7

"""``taming sample``, ``taming reconstruct`` and ``taming bench`` on a tiny saved pipeline."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

import taming_core
from taming_plugins.cli import main

IMAGE = 8          # pixels; f2 tokenizer -> 4×4 tokens
GRID = [4, 4]
CODES = 16
CONFIG = {
    "tokenizer": {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                  "attn_resolutions": [], "z_channels": 8, "resolution": IMAGE, "embed_dim": 4,
                  "quantizer": {"name": "vq", "codebook_size": CODES, "dim": 4}},
    # block 17 = SOS + 4×4 tokens: larger grids need the sliding window
    "prior": {"name": "gpt", "vocab_size": CODES + 1, "block_size": 17, "n_layer": 1, "n_head": 2,
              "n_embd": 16},
    "sampler": {"name": "autoregressive", "top_k": 8},
    "conditioner": {"name": "sos"}, "grid": GRID,
}


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe") / "pipeline"
    taming_core.Pipeline.from_config(CONFIG).save(d)
    return d


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return d


def _pngs(folder, prefix):
    return sorted(p.name for p in folder.glob(f"{prefix}*.png"))


# --------------------------------------------------------------------------- sample
def test_sample_writes_files_and_grid(pipeline_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--pipeline", str(pipeline_dir), "--n", "3", "--batch-size", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert _pngs(out, "sample_") == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    with Image.open(out / "sample_0000.png") as im:
        assert im.size == (IMAGE, IMAGE)
    assert (out / "grid.png").is_file()
    assert "wrote 3 samples" in capsys.readouterr().out


def test_sample_is_reproducible_with_a_seed(pipeline_dir, tmp_path):
    runs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        main(["sample", "--pipeline", str(pipeline_dir), "--n", "2", "--seed", seed,
              "--out", str(tmp_path / name)])
        runs.append(np.asarray(Image.open(tmp_path / name / "grid.png")))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_sample_larger_grid_uses_the_sliding_window(pipeline_dir, tmp_path):
    out = tmp_path / "big"
    assert main(["sample", "--pipeline", str(pipeline_dir), "--n", "1", "--grid", "8", "6",
                 "--top-k", "4", "--out", str(out)]) == 0
    with Image.open(out / "sample_0000.png") as im:
        assert im.size == (6 * 2, 8 * 2)
    explicit = tmp_path / "explicit"
    assert main(["sample", "--pipeline", str(pipeline_dir), "--n", "1", "--grid", "8", "8",
                 "--sampler", "sliding_window", "--window", "4", "--policy", "taming",
                 "--out", str(explicit)]) == 0


def test_build_sampler_keeps_and_overrides_options(pipeline_dir):
    import argparse

    from taming_plugins.cli.commands.sample import build_sampler

    pipe = taming_core.Pipeline.load(pipeline_dir)
    blank = dict(sampler=None, temperature=None, top_k=None, top_p=None, window=None, policy=None)
    assert build_sampler(pipe, argparse.Namespace(**blank), (4, 4)) is None  # the pipeline's own
    s = build_sampler(pipe, argparse.Namespace(**{**blank, "temperature": 0.5}), (4, 4))
    spec = taming_core.spec_of(s)
    assert spec["name"] == "autoregressive" and spec["top_k"] == 8 and spec["temperature"] == 0.5
    s = build_sampler(pipe, argparse.Namespace(**blank), (8, 8))
    spec = taming_core.spec_of(s)
    assert spec["name"] == "sliding_window" and spec["window"] == 4 and spec["vocab_limit"] == CODES


def test_sample_errors(pipeline_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--pipeline", str(pipeline_dir), "--n", "0"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["sample", "--pipeline", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a saved pipeline" in err[0]
    assert main(["sample", "--pipeline", str(pipeline_dir), "--sampler", "nope",
                 "--out", str(tmp_path)]) == 1
    assert "unknown sampler 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- reconstruct
def test_reconstruct_pipeline_on_a_folder(pipeline_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reconstruct", "--pipeline", str(pipeline_dir), "--input", str(image_folder),
                 "--num-images", "5", "--batch-size", "2", "--metrics", "psnr,usage",
                 "--out", str(out)]) == 0
    assert _pngs(out, "recon_") == [f"recon_{i:04d}.png" for i in range(5)]
    with Image.open(out / "recon_0000.png") as im:
        assert im.size == (IMAGE, IMAGE)  # default size: the tokenizer's resolution
    with Image.open(out / "comparison.png") as im:  # 5 inputs above 5 reconstructions
        assert im.size == (2 + 5 * (IMAGE + 2), 2 + 2 * (IMAGE + 2))
    report = json.loads((out / "eval.json").read_text())
    assert report["metrics"]["psnr"] > 0 and 0 < report["metrics"]["usage_pct"] <= 100
    assert report["details"]["num_images"] == 5
    assert (out / "eval.md").is_file() and (out / "codebook_histogram.png").is_file()
    assert "psnr:" in capsys.readouterr().out


def test_reconstruct_original_tokenizer_checkpoint(fixtures_dir, tmp_path):
    out = tmp_path / "r"
    assert main(["reconstruct", "--tokenizer", str(fixtures_dir / "vqgan_f4.ckpt"), "--input", "photos",
                 "--size", "16", "--num-images", "2", "--metrics", "psnr,ssim", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert set(report["metrics"]) == {"psnr", "ssim"}
    assert _pngs(out, "recon_") == ["recon_0000.png", "recon_0001.png"]


def test_reconstruct_errors(pipeline_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", "--pipeline", str(pipeline_dir), "--input", "photos", "--metrics", "fid"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", "--input", "photos"])  # neither --pipeline nor --tokenizer
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["reconstruct", "--pipeline", str(pipeline_dir), "--input", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected one of photos, fashion-mnist or an existing image folder" in err[0]


# --------------------------------------------------------------------------- bench
def test_bench_lists_the_repository_benchmarks(capsys):
    assert main(["bench", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "sampling" in names and not any(n.startswith("_") for n in names)


@pytest.fixture
def fake_benchmarks(tmp_path):
    pkg = tmp_path / "benchmarks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_helper.py").write_text('"""Not a benchmark."""\n')
    (pkg / "ok.py").write_text(textwrap.dedent('''\
        """Writes its arguments."""
        import sys
        from pathlib import Path
        Path("ran.txt").write_text(" ".join(sys.argv[1:]))
        '''))
    (pkg / "broken.py").write_text('"""Always fails."""\nraise SystemExit(3)\n')
    return tmp_path


def test_bench_runs_scripts_with_the_same_python(fake_benchmarks, capsys):
    assert main(["bench", "--dir", str(fake_benchmarks), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "ok" in listed and "Writes its arguments." in listed and "_helper" not in listed
    assert main(["bench", "ok", "--quick", "--args", "--threads 2", "--dir", str(fake_benchmarks)]) == 0
    assert (fake_benchmarks / "ran.txt").read_text() == "--quick --threads 2"


def test_bench_failures_and_unknown_names(fake_benchmarks, tmp_path, capsys):
    assert main(["bench", "broken", "--dir", str(fake_benchmarks)]) == 1
    assert "broken (exit 3)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nope", "--dir", str(fake_benchmarks)])
    assert exc.value.code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "--list", "--dir", str(empty)]) == 1


def test_bench_update_docs_copies_result_tables(fake_benchmarks, capsys):
    results = fake_benchmarks / "benchmarks" / "results"
    results.mkdir()
    (results / "speed.md").write_text("# Speed\n\n![plot](speed.png)\n\n| a |\n|---|\n| 1 |\n")
    (results / "speed_quick.md").write_text("# Speed (quick, superseded)\n")
    (results / "lookup_quick.md").write_text("# Lookup\n\n## Case\n")
    (results / "scratch_try.md").write_text("# Scratch\n")
    docs = fake_benchmarks / "docs"
    docs.mkdir()
    page = docs / "benchmarks.md"
    page.write_text("# Benchmarks\n\nintro\n\n<!-- generated results below -->\nold tables\n")
    assert main(["bench", "--update-docs", "--dir", str(fake_benchmarks)]) == 0
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n<!-- generated results below -->\n")
    assert "old tables" not in text and "superseded" not in text and "Scratch" not in text
    assert "### Speed" in text and "### Lookup" in text and "#### Case" in text
    assert "![plot](../benchmarks/results/speed.png)" in text
    assert text.index("### Lookup") < text.index("### Speed")  # sorted by file name
    page.write_text("# no marker\n")
    assert main(["bench", "--update-docs", "--dir", str(fake_benchmarks)]) == 1

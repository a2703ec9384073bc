"""The whole journey from the command line on generated image folders (issue 16):
train-tokenizer -> train-prior -> sample -> eval -> resume, for a plain folder of 12
images and for a folder with 3 class sub-folders; plus Net2Net -> pipeline and the
data conventions behind it (held-out split, crops per image, class names)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st
from PIL import Image

import taming_core
from taming_plugins.cli import main
from taming_plugins.data import ImageFolder, default_crops_per_image, get_dataset

SIZE = 16                 # training crops; f2 tokenizer -> 8×8 tokens
GRID = 8
TOKENIZER = {
    "tokenizer": {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                  "attn_resolutions": [], "z_channels": 8, "embed_dim": 8, "resolution": SIZE,
                  "quantizer": {"name": "vq", "codebook_size": 32, "dim": 8}},
    "loss": {"name": "vqgan", "perceptual": None, "disc_start": 1,
             "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 1}},
    "data": {"batch_size": 4},
    "optim": {"learning_rate": 1.0e-3},
    "train": {"log_every": 1, "val_every": 2, "image_every": 2, "ckpt_every": 2},
}
PRIOR = {"prior": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16}, "data": {"encode_batch_size": 64}}


def _photo(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A smooth random colour field (a stand-in for a photo)."""
    base = rng.uniform(0, 255, (3, 3, 3))
    big = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float32)
    noise = rng.normal(0, 8, big.shape)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("journey")
    rng = np.random.default_rng(0)
    flat = root / "flat"
    flat.mkdir()
    for i in range(12):
        _photo(rng, 24 + i, 28).save(flat / f"photo_{i:02d}.png")
    classes = root / "classes"
    for name in ("cat", "dog", "fox"):
        (classes / name).mkdir(parents=True)
        for i in range(4):
            _photo(rng, 26, 22).save(classes / name / f"{name}_{i}.jpg")
    (root / "tok.yaml").write_text(yaml.safe_dump(TOKENIZER))
    (root / "prior.yaml").write_text(yaml.safe_dump(PRIOR))
    return root


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


# --------------------------------------------------------------------------- the journeys
def test_journey_on_a_folder_of_12_images(folders, tmp_path, capsys):
    run = tmp_path
    rc, out, err = _cli(capsys, "train-tokenizer", "--config", folders / "tok.yaml", "--data", folders / "flat",
                        "--steps", 2, "--image-size", SIZE, "--out", run / "tok", "--no-progress",
                        "--device", "cpu")
    assert rc == 0, err
    # 12 images: 1 held out, 11 trained on, each in many random crops ("auto")
    assert "11 training image(s)" in out and f"× {default_crops_per_image(11)} crops" in out
    assert json.loads(out.strip().splitlines()[-1])["step"] == 2

    # train-prior: the image size comes from the tokenizer; the batch is capped at the data
    rc, out, err = _cli(capsys, "train-prior", "--tokenizer", run / "tok", "--data", folders / "flat",
                        "--out", run / "prior", "--steps", 3, "--ckpt-every", 2, "--sample-every", 3,
                        "--crops-per-image", 2, "--batch-size", 64, "--config", folders / "prior.yaml",
                        "--no-progress", "--device", "cpu")
    assert rc == 0, err
    assert "--batch-size 64 is larger than the 22 training items; using batches of 22" in err
    assert "11 training image(s)" in out and "× 2 crops = 22 items" in out
    assert f"22 token sequences of {GRID}×{GRID} tokens; 3 steps of batch 22" in out
    assert "trained prior to step 3" in out and "taming sample --pipeline" in out
    pipe_dir = run / "prior" / "pipeline"
    assert json.loads((pipe_dir / "source.json").read_text())["step"] == 3
    pipe = taming_core.Pipeline.load(pipe_dir)
    assert pipe.grid == (GRID, GRID) and pipe.tokenizer.vocab_size == 32

    # sample: from the pipeline, and composed from the runs (the same samples)
    rc, out, err = _cli(capsys, "sample", "--pipeline", pipe_dir, "--n", 3, "--out", run / "s1",
                        "--no-progress", "--seed", 4)
    assert rc == 0, err
    assert _pngs(run / "s1") == ["grid.png", "sample_0000.png", "sample_0001.png", "sample_0002.png"]
    assert f"wrote 3 samples ({GRID}×{GRID} tokens, ({SIZE}, {SIZE}) pixels)" in out
    rc, out, err = _cli(capsys, "sample", "--prior", run / "prior", "--n", 3, "--out", run / "s2",
                        "--no-progress", "--seed", 4)
    assert rc == 0, err
    assert np.array_equal(np.asarray(Image.open(run / "s1" / "grid.png")),
                          np.asarray(Image.open(run / "s2" / "grid.png")))
    # a second run into the same --out removes its own old files; a foreign folder is refused
    rc, out, err = _cli(capsys, "sample", "--pipeline", pipe_dir, "--n", 1, "--out", run / "s1", "--no-progress")
    assert rc == 0 and _pngs(run / "s1") == ["grid.png", "sample_0000.png"]
    rc, out, err = _cli(capsys, "sample", "--pipeline", pipe_dir, "--n", 1, "--out", run / "tok")
    assert rc == 1 and "not empty and was not written by `taming sample`" in err

    # eval: size from the pipeline, the real held-out split with its true size
    rc, out, err = _cli(capsys, "eval", "--pipeline", pipe_dir, "--data", folders / "flat",
                        "--metrics", "psnr,usage", "--out", run / "ev", "--no-progress", "--device", "cpu")
    assert rc == 0, err
    assert "on 1 item(s): 1 held-out image(s)" in out
    assert f"{SIZE}×{SIZE} px (the pipeline's grid {GRID}×{GRID} × f2)" in out
    report = json.loads((run / "ev" / "eval.json").read_text())
    assert report["details"]["num_images"] == 1 and report["source"]["size"] == SIZE

    rc, out, err = _cli(capsys, "eval", "--pipeline", pipe_dir, "--data", folders / "flat", "--metrics", "fid",
                        "--out", run / "ev2", "--no-progress")
    assert rc == 1 and "FID needs at least 2 images; 1 held-out image(s)" in err and "--crops-per-image" in err

    # resume: the stored run config (data, batch) without repeating it; contradictions refused
    rc, out, err = _cli(capsys, "train-prior", "--out", run / "prior", "--resume", "--batch-size", 8)
    assert rc == 1 and "--batch-size 8 contradicts the run being resumed" in err and "batch_size = 22" in err
    rc, out, err = _cli(capsys, "train-prior", "--out", run / "prior", "--resume", "--steps", 4, "--no-progress")
    assert rc == 0, err
    assert "resuming" in out and "batch 22" in out and "trained prior to step 4" in out
    assert json.loads((pipe_dir / "source.json").read_text())["step"] == 4
    rc, out, err = _cli(capsys, "train-tokenizer", "--out", run / "tok", "--resume", "--steps", 3, "--no-progress")
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 3


def test_journey_on_class_folders(folders, tmp_path, capsys):
    run = tmp_path
    rc, out, err = _cli(capsys, "train-tokenizer", "--config", folders / "tok.yaml", "--data",
                        folders / "classes", "--steps", 1, "--image-size", SIZE, "--out", run / "tok",
                        "--no-progress", "--device", "cpu")
    assert rc == 0, err
    assert "9 training image(s)" in out  # one held-out image per class
    rc, out, err = _cli(capsys, "train-prior", "--tokenizer", run / "tok", "--data", folders / "classes",
                        "--conditioner", "class_label", "--crops-per-image", 3, "--out", run / "prior",
                        "--steps", 2, "--batch-size", 9, "--config", folders / "prior.yaml", "--no-progress")
    assert rc == 0, err
    assert "9 training image(s)" in out and "27 items in 3 classes (cat, dog, fox)" in out
    config = json.loads((run / "prior" / "pipeline" / "pipeline.json").read_text())
    assert config["conditioner"] == {"name": "class_label", "num_classes": 3,
                                     "class_names": ["cat", "dog", "fox"]}
    assert config["cond_offset"] == 32  # after the 32 image codes
    rc, out, err = _cli(capsys, "sample", "--pipeline", run / "prior" / "pipeline", "--label", "dog",
                        "--n", 2, "--out", run / "dogs", "--no-progress")
    assert rc == 0, err
    assert "wrote 2 samples of class 'dog' (id 1)" in out and len(_pngs(run / "dogs")) == 3
    rc, out, err = _cli(capsys, "sample", "--pipeline", run / "prior" / "pipeline", "--n", 1, "--out", run / "x")
    assert rc == 1 and "--label is required: the pipeline is class-conditional (cat, dog, fox)" in err
    rc, out, err = _cli(capsys, "sample", "--prior", run / "prior", "--label", "zebra", "--n", 1,
                        "--out", run / "z")
    assert rc == 1 and "unknown label 'zebra'; expected one of cat, dog, fox or an id in [0, 2]" in err
    rc, out, err = _cli(capsys, "eval", "--tokenizer", run / "tok", "--data", folders / "classes",
                        "--metrics", "psnr", "--out", run / "ev", "--no-progress")
    assert rc == 0, err
    assert "on 3 item(s): 3 held-out image(s)" in out and "(the tokenizer's training size)" in out
    rc, out, err = _cli(capsys, "train-prior", "--out", run / "prior", "--resume", "--steps", 3,
                        "--no-progress")
    assert rc == 0, err
    assert "trained prior to step 3" in out
    restored = json.loads((run / "prior" / "pipeline" / "pipeline.json").read_text())
    assert restored["conditioner"]["class_names"] == ["cat", "dog", "fox"]


def test_train_prior_refuses_class_labels_without_classes(folders, tmp_path, capsys):
    rc, out, err = _cli(capsys, "train-prior", "--tokenizer", tmp_path / "none", "--data", folders / "flat",
                        "--image-size", SIZE, "--conditioner", "class_label", "--out", tmp_path / "p")
    assert rc == 1 and "expected one sub-folder per class" in err


# --------------------------------------------------------------------------- Net2Net -> pipeline
def test_convert_net2net_gives_a_pipeline_that_reproduces_the_original(fixtures_dir, tmp_path, capsys):
    name = "net2net_gpt_small"
    rc, out, err = _cli(capsys, "convert", fixtures_dir / f"{name}.ckpt", tmp_path / "pipe",
                        "--config", fixtures_dir / f"{name}.yaml")
    assert rc == 0, err
    assert "condition sos at id offset 64; grid 8×8" in out
    pipe = taming_core.Pipeline.load(tmp_path / "pipe")
    io = torch.load(fixtures_dir / f"{name}.io.pt", weights_only=True)
    cond = pipe.condition_tokens(None, 2)
    assert torch.equal(cond, io["greedy_cond"].view(2, -1))
    greedy = taming_core.create("sampler", "autoregressive", greedy=True)
    tokens = greedy.sample(pipe.prior, grid=pipe.grid, batch_size=2, condition=cond)
    assert torch.equal(tokens, io["greedy_full"].view(2, 8, 8))


# --------------------------------------------------------------------------- data conventions
@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=4), holdout=st.sampled_from([0.0, 0.1, 0.5]),
       labels=st.booleans())
def test_folder_splits_partition_the_files(tmp_path_factory, counts, holdout, labels):
    root = tmp_path_factory.mktemp("split")
    for c, n in enumerate(counts):
        (root / f"class{c}").mkdir()
        for i in range(n):
            Image.new("RGB", (6, 5), (c * 40, i * 30, 0)).save(root / f"class{c}" / f"{i}.png")
    splits = {}
    for split in ("train", "all"):
        splits[split] = ImageFolder(root, 4, split=split, holdout=holdout, return_labels=labels)
    held = splits["all"].held_out
    if held:
        splits["val"] = ImageFolder(root, 4, split="val", holdout=holdout, return_labels=labels)
    else:
        with pytest.raises(taming_core.ValidationError, match="no held-out images"):
            ImageFolder(root, 4, split="val", holdout=holdout)
    train = set(splits["train"].files)
    val = set(splits["val"].files) if held else set()
    assert not train & val and train | val == set(splits["all"].files)
    # per class: a class of >= 2 images keeps at least one for training and, with a holdout, gives one
    for c, n in enumerate(counts):
        in_val = sum(p.parent.name == f"class{c}" for p in val)
        assert in_val <= max(n - 1, 0)
        if holdout > 0 and n >= 2:
            assert in_val >= 1
    if labels:
        assert splits["all"].classes == [f"class{c}" for c in range(len(counts))]


@settings(max_examples=25, deadline=None)
@given(n_files=st.integers(1, 5), crops=st.integers(1, 4))
def test_crops_per_image_counts_and_fixes_each_crop(tmp_path_factory, n_files, crops):
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(n_files)
    for i in range(n_files):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / f"{i}.png")
    data = ImageFolder(root, 8, crops_per_image=crops)
    assert len(data) == n_files * crops and data.num_images == n_files
    assert torch.equal(data[len(data) - 1], data[len(data) - 1])  # an item is a fixed crop
    with pytest.raises(IndexError):
        data[len(data)]
    assert default_crops_per_image(n_files) * n_files >= min(2048, 256 * n_files)


def test_get_dataset_folder_defaults(folders):
    train = get_dataset(folders / "flat", 8, split="train")
    val = get_dataset(folders / "flat", 8, split="val")
    assert train.num_images == 11 and val.num_images == 1 and len(val) == 1
    assert len(train) == 11 * default_crops_per_image(11)
    assert not set(train.files) & set(val.files)


# --------------------------------------------------------------------------- checkpoints
def test_mismatched_weights_name_the_tensors_and_files_get_normal_permissions(tmp_path):
    import os

    from taming_core.errors import CheckpointError
    from taming_plugins.training.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path / "ckpts")
    path = manager.save(1, modules={"prior": torch.nn.Linear(2, 3)})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o777 & ~umask
    for f in path.iterdir():
        assert (f.stat().st_mode & 0o777) == 0o666 & ~umask, f.name
    with pytest.raises(CheckpointError, match=r"mis-shaped weight: checkpoint \(3, 2\), model \(4, 2\)"):
        manager.load(path, modules={"prior": torch.nn.Linear(2, 4)})
    with pytest.raises(CheckpointError, match=r"missing 0\.weight"):
        manager.load(path, modules={"prior": torch.nn.Sequential(torch.nn.Linear(2, 3))})


def test_demo_thread_choice_is_said(monkeypatch):
    import os

    from taming_plugins.demo import AUTO_MAX_THREADS, choose_threads, resolve_demo_config

    assert choose_threads(3) == (3, "from the config")
    assert resolve_demo_config()["threads"] == 1  # reproducible figures; "auto" on request
    assert resolve_demo_config(threads="auto")["threads"] == "auto"
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))  # another process holds a core
    assert choose_threads("auto") == (1, "auto: 2 CPU cores, load average 1.2")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert choose_threads("auto")[0] == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert choose_threads("auto")[0] == AUTO_MAX_THREADS
    monkeypatch.setattr(os, "getloadavg", lambda: (70.0, 70.0, 70.0))
    assert choose_threads("auto")[0] == 1


@pytest.mark.parametrize("mode", ["replicate", "reflect"])
def test_vqgan_padding_mode_is_stored_and_not_exported(mode, tmp_path):
    from taming_plugins.compat import save_taming_checkpoint

    spec = {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
            "z_channels": 8, "resolution": 16, "embed_dim": 4, "n_embed": 32, "quantizer": {"name": "vq"}}
    zeros = taming_core.create("tokenizer", **spec).eval()
    padded = taming_core.create("tokenizer", **spec, padding_mode=mode).eval()
    padded.load_state_dict(zeros.state_dict())  # same weights, other padding
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = zeros.encoder(x), padded.encoder(x)
    assert not torch.allclose(a, b)  # the padding changes the edges
    rebuilt = taming_core.build({"tokenizer": taming_core.spec_of(padded)})["tokenizer"].eval()
    rebuilt.load_state_dict(padded.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.encoder(x), b)
    assert "padding_mode" not in taming_core.spec_of(zeros)
    with pytest.raises(taming_core.ConfigError, match="pads with zeros only"):
        save_taming_checkpoint(tmp_path / "x.ckpt", padded)
    with pytest.raises(taming_core.ConfigError, match="padding_mode"):
        taming_core.create("tokenizer", **spec, padding_mode="circle")


def test_guided_run_gives_a_guided_pipeline(folders, tmp_path, capsys):
    """A prior trained with guidance dropout and a guided sampler: OUT/pipeline and the
    pipeline composed from the runs both sample with classifier-free guidance (the null
    condition is stored in pipeline.json as prior ids)."""
    run = tmp_path
    rc, out, err = _cli(capsys, "train-tokenizer", "--config", folders / "tok.yaml", "--data",
                        folders / "classes", "--steps", 1, "--image-size", SIZE, "--out", run / "tok",
                        "--no-progress")
    assert rc == 0, err
    guided = dict(PRIOR, sampler={"name": "autoregressive", "guidance_scale": 3.0, "top_k": 8},
                  train={"cfg_drop": 0.3})
    (run / "guided.yaml").write_text(yaml.safe_dump(guided))
    rc, out, err = _cli(capsys, "train-prior", "--tokenizer", run / "tok", "--data", folders / "classes",
                        "--conditioner", "class_label", "--crops-per-image", 2, "--out", run / "prior",
                        "--steps", 2, "--config", run / "guided.yaml", "--no-progress")
    assert rc == 0, err
    sampler = json.loads((run / "prior" / "pipeline" / "pipeline.json").read_text())["sampler"]
    assert sampler["guidance_scale"] == 3.0
    assert sampler["null_condition"] == [[32 + 3]]  # class_label's null id 3, after the 32 image codes
    pipe = taming_core.Pipeline.load(run / "prior" / "pipeline")
    assert pipe.sampler.guidance_scale == 3.0
    rc, out, err = _cli(capsys, "sample", "--pipeline", run / "prior" / "pipeline", "--label", "fox",
                        "--n", 2, "--out", run / "a", "--no-progress", "--seed", 1)
    assert rc == 0, err
    rc, out, err = _cli(capsys, "sample", "--prior", run / "prior", "--label", "fox",
                        "--n", 2, "--out", run / "b", "--no-progress", "--seed", 1)
    assert rc == 0, err
    assert np.array_equal(np.asarray(Image.open(run / "a" / "grid.png")),
                          np.asarray(Image.open(run / "b" / "grid.png")))
    # without guidance the same seed gives other samples: the stored guidance is used
    rc, out, err = _cli(capsys, "sample", "--pipeline", run / "prior" / "pipeline", "--label", "fox",
                        "--n", 2, "--out", run / "c", "--no-progress", "--seed", 1, "--guidance-scale", 1)
    assert rc == 0, err
    assert not np.array_equal(np.asarray(Image.open(run / "a" / "grid.png")),
                              np.asarray(Image.open(run / "c" / "grid.png")))


def test_train_tokenizer_without_config_uses_the_packaged_default(folders, tmp_path, capsys):
    from taming_plugins.cli.commands.train_tokenizer import default_config_path

    packaged = yaml.safe_load(default_config_path().read_text())
    rc, out, err = _cli(capsys, "train-tokenizer", "--print-config", "--steps", 7, "--data", folders / "flat")
    assert rc == 0, err
    printed = yaml.safe_load(out)
    assert printed["tokenizer"] == packaged["tokenizer"] and printed["train"]["steps"] == 7
    assert printed["loss"]["disc_start"] == 3  # half-way through the 7 steps
    assert printed["data"]["train"] == str(folders / "flat") and printed["loss"]["perceptual"] == "auto"
    assert not (tmp_path / "tok").exists()

    rc, out, err = _cli(capsys, "train-tokenizer", "--data", folders / "flat", "--steps", 1,
                        "--out", tmp_path / "tok", "--no-progress", "--device", "cpu")
    assert rc == 0, err
    assert "no --config: the packaged default tokenizer.yaml (a small f4 VQGAN, 256 codes, GAN term from " \
        "step 0" in out
    assert "32×32 px; 1 steps of batch 8" in out
    # the run stores the perceptual choice made on this machine, never "auto"
    ckpt = sorted((tmp_path / "tok" / "checkpoints").glob("step_*"))[-1]
    stored = json.loads((ckpt / "config.json").read_text())
    assert stored["loss"]["perceptual"] in (None, {"name": "lpips"})
    assert stored["optim"]["bf16"] in (True, False)  # "auto" resolved on this machine


def test_a_folder_named_like_a_bundled_dataset_is_not_silently_replaced(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "photos" / "a.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(taming_core.ValidationError, match=r"'photos' is ambiguous: .* write \./photos"):
        get_dataset("photos", 16)
    assert isinstance(get_dataset("./photos", 16, split="all"), ImageFolder)


def test_eval_crops_per_image_on_a_bundled_dataset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # before any model is loaded
        main(["eval", "--tokenizer", str(tmp_path / "none"), "--data", "photos", "--crops-per-image", "4",
              "--metrics", "psnr", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--crops-per-image applies to image folders, not the bundled 'photos'" in err

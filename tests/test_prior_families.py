"""Every prior family (gpt, maskgit, pixelcnn) through the same stage-2 trainer, pipeline
and CLI: a few training steps, exact resume, Pipeline.save/load, sampling commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import taming_core
from taming_core import ValidationError
from taming_plugins.cli import main as cli_main
from taming_plugins.data import BundledPhotos
from taming_plugins.training.metrics import read_metrics
from taming_plugins.training.stage2 import PriorTrainConfig, PriorTrainer

SEED = 0
IMAGE_SIZE = 8
N_IMAGES = 24
#: A tiny real VQGAN (f2, 32 codes): 8×8 images -> 4×4 token grids.
TINY_VQGAN = dict(ch=32, ch_mult=[1, 1], num_res_blocks=1, attn_resolutions=[], z_channels=8,
                  resolution=IMAGE_SIZE, embed_dim=8, n_embed=32, quantizer={"name": "vq"})
PRIORS = {
    "gpt": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32},
    "maskgit": {"name": "maskgit", "n_layer": 1, "n_head": 2, "n_embd": 32, "resid_pdrop": 0.1},
    "pixelcnn": {"name": "pixelcnn", "n_layer": 3, "channels": 16, "kernel_size": 3},
}
FAMILY = {"gpt": "autoregressive", "maskgit": "masked", "pixelcnn": "autoregressive"}


@pytest.fixture(scope="module")
def tokenizer() -> taming_core.Tokenizer:
    torch.manual_seed(SEED)
    return taming_core.create("tokenizer", "vqgan", **TINY_VQGAN).eval()


@pytest.fixture(scope="module")
def photos() -> BundledPhotos:
    return BundledPhotos(IMAGE_SIZE, length=N_IMAGES, seed=SEED)


def _config(out: Path, prior: dict, steps: int = 4) -> PriorTrainConfig:
    return PriorTrainConfig.from_dict({
        "prior": prior,
        "data": {"batch_size": 8, "cache_dir": str(out.parent / "shared_cache")},
        "optim": {"learning_rate": 3e-3},
        "train": {"out": str(out), "steps": steps, "log_every": 1, "ckpt_every": 2, "image_every": 4,
                  "num_samples": 2, "progress": False, "device": "cpu", "seed": SEED, "pkeep": 0.8}})


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_family_trains_resumes_exactly_and_round_trips_the_pipeline(name, tokenizer, photos, tmp_path):
    prior = PRIORS[name]
    full = PriorTrainer(_config(tmp_path / "full", prior), dataset=photos, tokenizer=tokenizer)
    assert full.prior.family == FAMILY[name]
    full.fit()
    assert (tmp_path / "full" / "images" / "step_00000004.png").is_file()  # the family's sampler
    part = PriorTrainer(_config(tmp_path / "part", prior, steps=2), dataset=photos, tokenizer=tokenizer)
    part.fit()
    torch.manual_seed(SEED + 1)
    resumed = PriorTrainer(_config(tmp_path / "part", prior), dataset=photos, tokenizer=tokenizer)
    resumed.fit(resume=True)
    a = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")]
    assert len(a) == 4 and a == pytest.approx(b, rel=1e-6, abs=1e-7)
    for pa, pb in zip(full.prior.parameters(), resumed.prior.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)

    sampler = taming_core.create("sampler", full.prior.default_sampler, vocab_limit=32)
    pipe = taming_core.Pipeline(tokenizer, full.prior, sampler,
                                taming_core.create("conditioner", "sos"), grid=(4, 4))
    pipe.save(tmp_path / "pipe")
    loaded = taming_core.Pipeline.load(tmp_path / "pipe")
    for (ka, va), (kb, vb) in zip(pipe.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x, tx = pipe.generate(2, seed=3, return_tokens=True)
    y, ty = loaded.generate(2, seed=3, return_tokens=True)
    assert torch.equal(tx, ty) and x.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert int(ty.max()) < tokenizer.vocab_size  # never a condition or mask id


def test_masked_prior_without_sampler_uses_its_default(tokenizer):
    prior = taming_core.create("prior", "maskgit", vocab_size=33, block_size=17, n_layer=1, n_head=2,
                               n_embd=16)
    pipe = taming_core.Pipeline(tokenizer, prior, None, taming_core.create("conditioner", "sos"),
                                grid=(4, 4))
    tokens = pipe.generate(2, seed=0, return_tokens=True)[1]
    assert tokens.shape == (2, 4, 4) and int(tokens.max()) < 32


@pytest.mark.parametrize("name", ["maskgit", "pixelcnn"])
def test_cli_train_prior_with_another_family(name, fixtures_dir, tmp_path, capsys):
    out = tmp_path / name
    argv = ["train-prior", "--prior", name, "--tokenizer", str(fixtures_dir / "vqgan_f4.ckpt"),
            "--data", "photos", "--image-size", "32", "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--max-items", "4", "--device", "cpu", "--no-progress"]
    assert cli_main(argv) == 0
    assert "trained prior to step 2" in capsys.readouterr().out
    assert (out / "images" / "step_00000002.png").is_file()
    from taming_plugins.training.stage2 import load_trained_prior

    trained = load_trained_prior(out)
    assert trained.prior.family == FAMILY[name] and trained.config["prior"]["name"] == name


def test_cli_sample_with_maskgit_steps(tokenizer, tmp_path, capsys):
    prior = taming_core.create("prior", "maskgit", vocab_size=33, block_size=17, n_layer=1, n_head=2,
                               n_embd=16)
    pipe = taming_core.Pipeline(tokenizer, prior, taming_core.create("sampler", "maskgit", vocab_limit=32),
                                taming_core.create("conditioner", "sos"), grid=(4, 4))
    pipe.save(tmp_path / "pipe")
    out = tmp_path / "samples"
    assert cli_main(["sample", "--pipeline", str(tmp_path / "pipe"), "--n", "2", "--sampler", "maskgit",
                     "--steps", "3", "--schedule", "linear", "--out", str(out), "--device", "cpu"]) == 0
    with Image.open(out / "sample_0001.png") as im:
        assert im.size == (IMAGE_SIZE, IMAGE_SIZE)
    # a sampler of the wrong family: one line naming the samplers that fit
    assert cli_main(["sample", "--pipeline", str(tmp_path / "pipe"), "--n", "1", "--sampler",
                     "autoregressive", "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use maskgit" in err


def test_plugins_lists_each_prior_family(capsys):
    assert cli_main(["plugins", "--kind", "prior"]) == 0
    rows = {line.split()[1]: line.split()[3] for line in capsys.readouterr().out.splitlines()[1:]
            if line.startswith("prior")}
    assert rows["gpt"] == "autoregressive" and rows["maskgit"] == "masked"
    assert rows["pixelcnn"] == "autoregressive"


def test_wrong_family_sampler_in_the_pipeline_is_one_line(tokenizer):
    prior = taming_core.create("prior", "pixelcnn", vocab_size=33, block_size=17, grid=[4, 4], n_layer=2,
                               channels=8)
    pipe = taming_core.Pipeline(tokenizer, prior, taming_core.create("sampler", "maskgit"),
                                taming_core.create("conditioner", "sos"), grid=(4, 4))
    with pytest.raises(ValidationError, match="use autoregressive") as info:
        pipe.generate(1)
    assert "\n" not in str(info.value)

"""Stage-2 trainer: token cache, a short real run, resume equality, sample grids, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import taming_core
from taming_core.errors import CheckpointError, ConfigError, TrainingError
from taming_plugins.cli import main as cli_main
from taming_plugins.data import BundledPhotos
from taming_plugins.training.checkpoint import CheckpointManager
from taming_plugins.training.metrics import read_metrics
from taming_plugins.training.stage2 import PriorTrainConfig, PriorTrainer, load_trained_prior
from taming_plugins.training.token_cache import build_token_cache, cache_key, open_token_cache

SEED = 0
IMAGE_SIZE = 8
N_IMAGES = 32
TINY_PRIOR = {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32}
#: A tiny real VQGAN (f2, 32 codes): 8×8 images -> 4×4 token grids.
TINY_VQGAN = dict(ch=32, ch_mult=[1, 1], num_res_blocks=1, attn_resolutions=[], z_channels=8,
                  resolution=IMAGE_SIZE, embed_dim=8, n_embed=32, quantizer={"name": "vq"})


def _tokenizer(seed: int = SEED) -> taming_core.Tokenizer:
    torch.manual_seed(seed)
    return taming_core.create("tokenizer", "vqgan", **TINY_VQGAN).eval()


class LabelledPhotos(Dataset):
    """Photos paired with a class label (index mod NUM_CLASSES)."""

    NUM_CLASSES = 3

    def __init__(self) -> None:
        self.photos = BundledPhotos(IMAGE_SIZE, length=N_IMAGES, seed=SEED)

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int):
        return self.photos[i], i % self.NUM_CLASSES


@pytest.fixture(scope="module")
def tokenizer() -> taming_core.Tokenizer:
    return _tokenizer()


@pytest.fixture(scope="module")
def photos() -> BundledPhotos:
    return BundledPhotos(IMAGE_SIZE, length=N_IMAGES, seed=SEED)


#: Where each keyword of ``_config`` lives in the run config.
_SECTION = {"steps": "train", "log_every": "train", "ckpt_every": "train", "image_every": "train",
            "num_samples": "train", "progress": "train", "device": "train", "seed": "train",
            "pkeep": "train", "cfg_drop": "train", "keep_last": "train", "divergence_factor": "train",
            "batch_size": "data", "cache_dir": "data", "learning_rate": "optim"}


def _config(out: Path, **kw) -> PriorTrainConfig:
    cfg: dict = {"prior": TINY_PRIOR,
                 "data": {"batch_size": 8, "cache_dir": str(out.parent / "shared_cache")},
                 "optim": {"learning_rate": 3e-3},
                 "train": {"out": str(out), "steps": 6, "log_every": 1, "ckpt_every": 3,
                           "image_every": 1000, "num_samples": 2, "progress": False, "device": "cpu",
                           "seed": SEED}}
    for key, value in kw.items():
        if key in _SECTION:
            cfg[_SECTION[key]][key] = value
        else:
            cfg[key] = value
    return PriorTrainConfig.from_dict(cfg)


# --------------------------------------------------------------------------- token cache
def test_token_cache_matches_direct_tokenization_and_is_reused(tokenizer, photos, tmp_path, monkeypatch) -> None:
    data = {"spec": "photos", "size": IMAGE_SIZE, "length": N_IMAGES}
    cache = build_token_cache(tokenizer, photos, tmp_path, data=data, batch_size=10, progress=False)
    direct = tokenizer.encode(torch.stack([photos[i] for i in range(N_IMAGES)])).indices
    assert cache.tokens.dtype == np.int16 and isinstance(cache.tokens, np.memmap)
    assert cache.grid == (4, 4) and cache.cond is None
    assert np.array_equal(np.asarray(cache.tokens), direct.reshape(N_IMAGES, -1).numpy())
    tokens, _ = cache.batch([3, 0])
    assert tokens.dtype == torch.long and torch.equal(tokens[1], direct[0].flatten())
    # the same tokenizer and data reuse the entry without encoding anything
    monkeypatch.setattr(tokenizer, "encode", lambda *_: pytest.fail("the cache was rebuilt"))
    again = build_token_cache(tokenizer, photos, tmp_path, data=data, progress=False)
    assert again.key == cache.key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"tokens-{cache.key[:20]}.npy", f"tokens-{cache.key[:20]}.json"])


def test_token_cache_key_invalidation(tokenizer, photos, tmp_path) -> None:
    data = {"spec": "photos", "size": IMAGE_SIZE, "length": N_IMAGES}
    key = cache_key(tokenizer, data)
    assert key == cache_key(_tokenizer(), data), "same weights, same key"
    changed = _tokenizer()
    with torch.no_grad():
        changed.quantize.embedding.weight[0, 0] += 1e-3
    assert cache_key(changed, data) != key, "changed weights must not reuse the cache"
    assert cache_key(tokenizer, {**data, "size": IMAGE_SIZE * 2}) != key
    assert cache_key(tokenizer, {**data, "spec": "fashion-mnist"}) != key
    sos = taming_core.create("conditioner", "sos")
    assert cache_key(tokenizer, data, sos) != key
    # same description, different content (other crops): the item fingerprint tells them apart
    cache = build_token_cache(tokenizer, photos, tmp_path, data=data, progress=False)
    other = build_token_cache(tokenizer, BundledPhotos(IMAGE_SIZE, length=N_IMAGES, seed=SEED + 1),
                              tmp_path, data=data, progress=False)
    assert other.key != cache.key and len(list(tmp_path.glob("*.json"))) == 2
    # a stale metadata file (another key under the same name) is not reused
    meta_path = next(tmp_path.glob(f"tokens-{cache.key[:20]}.json"))
    meta = json.loads(meta_path.read_text())
    meta["key"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    assert open_token_cache(tmp_path, cache.key) is None


def test_token_cache_stores_condition_ids(tokenizer, tmp_path) -> None:
    cl = taming_core.create("conditioner", "class_label", num_classes=LabelledPhotos.NUM_CLASSES)
    cache = build_token_cache(tokenizer, LabelledPhotos(), tmp_path, data={"labelled": True},
                              conditioner=cl, progress=False)
    assert cache.cond is not None and cache.cond.shape == (N_IMAGES, 1)
    assert np.asarray(cache.cond)[:, 0].tolist() == [i % 3 for i in range(N_IMAGES)]


# --------------------------------------------------------------------------- training
def test_short_run_loss_falls_and_writes_samples(tokenizer, photos, tmp_path) -> None:
    cfg = _config(tmp_path / "run", steps=20, log_every=5, ckpt_every=20, image_every=20)
    trainer = PriorTrainer(cfg, dataset=photos, tokenizer=tokenizer)
    assert trainer.layout.prior_vocab_size == 33 and trainer.seq_len == 17
    assert trainer.prior.vocab_size == 33 and trainer.prior.block_size == 17
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.5, f"the loss did not fall: {losses}"
    png = tmp_path / "run" / "images" / "step_00000020.png"
    pad = 2  # torchvision's make_grid padding
    with Image.open(png) as img:  # 2 samples over their 2 reconstructions
        side = 2 * (IMAGE_SIZE + pad) + pad
        assert img.format == "PNG" and img.size == (side, side)
    ckpt = CheckpointManager(tmp_path / "run" / "checkpoints").latest()
    assert ckpt is not None and (ckpt / "model.safetensors").is_file()
    stored = json.loads((ckpt / "config.json").read_text())
    assert stored["layout"] == {"image_vocab_size": 32, "cond_vocab_size": 1, "cond_offset": 32}
    assert stored["grid"] == [4, 4] and stored["prior"]["vocab_size"] == 33
    loaded = load_trained_prior(tmp_path / "run")
    assert loaded.grid == (4, 4) and loaded.cond_len == 1 and loaded.layout == trainer.layout
    assert all(torch.equal(a, b) for a, b in zip(loaded.prior.parameters(), trainer.prior.parameters()))


def test_resume_continues_the_same_loss_trajectory(tokenizer, photos, tmp_path) -> None:
    extra = dict(pkeep=0.7, prior={**TINY_PRIOR, "resid_pdrop": 0.1})  # exercise every RNG
    full = PriorTrainer(_config(tmp_path / "full", **extra), dataset=photos, tokenizer=tokenizer)
    full.fit()
    part = PriorTrainer(_config(tmp_path / "part", steps=3, **extra), dataset=photos, tokenizer=tokenizer)
    part.fit()
    torch.manual_seed(SEED + 1)  # a resumed process starts from unrelated RNG state
    resumed = PriorTrainer(_config(tmp_path / "part", **extra), dataset=photos, tokenizer=tokenizer)
    resumed.fit(resume=True)
    a = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")]
    assert [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")] == list(range(1, 7))
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    for pa, pb in zip(full.prior.parameters(), resumed.prior.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_class_conditional_run_with_pkeep_and_cfg(tokenizer, tmp_path) -> None:
    cfg = _config(tmp_path / "cond", steps=2, pkeep=0.5, cfg_drop=0.5, ckpt_every=100,
                  conditioner={"name": "class_label", "num_classes": LabelledPhotos.NUM_CLASSES},
                  sampler={"name": "autoregressive", "guidance_scale": 2.0})  # null id filled in
    trainer = PriorTrainer(cfg, dataset=LabelledPhotos(), tokenizer=tokenizer)
    assert trainer.layout.prior_vocab_size == 32 + 4 and trainer.cond_len == 1
    tokens, cond = trainer.cache.batch(list(range(4)))
    seq_loss = trainer.loss_on(tokens, cond, train=False)
    assert torch.isfinite(seq_loss)
    trainer.fit()
    assert (tmp_path / "cond" / "images" / "step_00000002.png").is_file()


def test_nan_guard_stops_training(tokenizer, photos, tmp_path) -> None:
    trainer = PriorTrainer(_config(tmp_path / "nan", steps=2), dataset=photos, tokenizer=tokenizer)
    with torch.no_grad():
        trainer.prior.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="step 1: non-finite loss"):
        trainer.fit()


def test_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="stepz: unknown stage-2 config section"):
        PriorTrainConfig.from_dict({"train": {"out": str(tmp_path)}, "stepz": 3})
    with pytest.raises(ConfigError, match="train.stepz: unknown key"):
        PriorTrainConfig.from_dict({"train": {"out": str(tmp_path), "stepz": 3}})
    with pytest.raises(ConfigError, match="train.pkeep"):
        PriorTrainConfig.from_dict({"train": {"pkeep": 1.5}})
    with pytest.raises(ConfigError, match="tokenizer: required"):
        PriorTrainer(PriorTrainConfig.from_dict({"train": {"out": str(tmp_path)}}))


def test_prior_block_size_too_small_is_rejected(tokenizer, photos, tmp_path) -> None:
    cfg = _config(tmp_path / "small", prior={**TINY_PRIOR, "block_size": 10})
    with pytest.raises(ConfigError, match="block_size"):
        PriorTrainer(cfg, dataset=photos, tokenizer=tokenizer)


# --------------------------------------------------------------------------- CLI
def test_cli_train_prior_from_original_checkpoint(fixtures_dir, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    config = tmp_path / "prior.yaml"
    config.write_text("prior: {name: gpt, n_layer: 1, n_head: 2, n_embd: 32}\n"
                      "data: {train_kwargs: {length: 8}}\ntrain: {num_samples: 1}\n")
    argv = ["train-prior", "--tokenizer", str(fixtures_dir / "vqgan_f4.ckpt"), "--data", "photos",
            "--image-size", "32", "--out", str(out), "--config", str(config), "--steps", "2",
            "--batch-size", "4", "--max-items", "6", "--device", "cpu", "--no-progress"]
    assert cli_main(argv) == 0
    assert "trained prior to step 2" in capsys.readouterr().out
    assert (out / "images" / "step_00000002.png").is_file()
    assert CheckpointManager(out / "checkpoints").latest().name == "step_00000002"
    meta = json.loads(next((out / "token_cache").glob("*.json")).read_text())
    assert meta["tokens_shape"] == [6, 64] and meta["cond_shape"] == [6, 1]  # --max-items, 8×8 grid
    # resuming a finished run trains no further and succeeds
    assert cli_main(argv[:-1] + ["--resume", "--no-progress"]) == 0
    assert cli_main(["train-prior", "--tokenizer", str(tmp_path / "missing"), "--out", str(out)]) == 1


def test_load_frozen_tokenizer_from_stage1_run(tmp_path) -> None:
    from taming_plugins.training.ema import EMA
    from taming_plugins.training.stage2 import load_frozen_tokenizer

    tok = _tokenizer()
    ema = EMA(tok)
    key = "quantize.embedding.weight"
    ema.shadow[key] += 1.0
    CheckpointManager(tmp_path / "stage1" / "checkpoints").save(
        5, modules={"tokenizer": tok}, stateful={"ema": ema},
        config={"tokenizer": {"name": "vqgan", **TINY_VQGAN}})
    loaded = load_frozen_tokenizer(tmp_path / "stage1")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.state_dict()[key], ema.shadow[key]), "EMA weights are preferred"
    raw = load_frozen_tokenizer(tmp_path / "stage1" / "checkpoints" / "step_00000005", use_ema=False)
    assert all(torch.equal(v, tok.state_dict()[k]) for k, v in raw.state_dict().items())
    with pytest.raises(CheckpointError, match="expected a stage-1 checkpoint"):
        load_frozen_tokenizer(tmp_path)


class DepthPhotos(Dataset):
    """Photos paired with a one-channel "depth" map (their grey level) in [-1, 1]."""

    def __init__(self) -> None:
        self.photos = BundledPhotos(IMAGE_SIZE, length=N_IMAGES, seed=SEED)

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int):
        image = self.photos[i]
        return image, image.mean(0, keepdim=True)


def test_spatial_conditional_run_from_a_condition_tokenizer_checkpoint(tokenizer, tmp_path) -> None:
    depth_spec = {"name": "vqgan", **TINY_VQGAN, "in_channels": 1, "out_ch": 1}
    torch.manual_seed(SEED)
    depth_tok = taming_core.create("tokenizer", "vqgan", **{k: v for k, v in depth_spec.items() if k != "name"})
    CheckpointManager(tmp_path / "depth_vq").save(1, modules={"tokenizer": depth_tok},
                                                 config={"tokenizer": depth_spec})
    cfg = _config(tmp_path / "spatial", steps=2, ckpt_every=100,
                  conditioner={"name": "spatial", "tokenizer": str(tmp_path / "depth_vq")})
    trainer = PriorTrainer(cfg, dataset=DepthPhotos(), tokenizer=tokenizer)
    grid = IMAGE_SIZE // 2
    assert trainer.cond_len == grid * grid and trainer.seq_len == 2 * grid * grid
    first = DepthPhotos()[0][1].unsqueeze(0)
    assert np.array_equal(np.asarray(trainer.cache.cond[0]),
                          depth_tok.encode(first).indices.flatten().numpy())
    trainer.fit()
    assert (tmp_path / "spatial" / "images" / "step_00000002.png").is_file()

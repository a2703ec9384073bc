"""Pretrained pipelines from local directories and from the Hugging Face cache.

The Hub tests lay out a cache in the standard layout (``models--owner--name/blobs``,
``snapshots/<commit>``, ``refs/<branch>``) under a temporary directory and run the real
``huggingface_hub`` client with ``HF_HUB_OFFLINE=1``: nothing goes to the network and
nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taming_core
from taming_core import Pipeline, Prior, Tokenizer
from taming_core.errors import CheckpointError, ValidationError
from taming_core.hub import HubRef, parse_ref, read_card

pytest.importorskip("huggingface_hub")

REF = Path(__file__).parent / "fixtures" / "llamagen_reference"
REPO_ROOT = Path(__file__).resolve().parents[1]
LLAMAGEN = "FoundationVision/LlamaGen"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], *, commit: str = COMMIT,
                      ref: str = "main") -> Path:
    """Put ``files`` (name in repo -> local file) into ``cache`` the way huggingface_hub
    stores a download: content-addressed blobs, a snapshot of symlinks, a ref file."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for name, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, link.parent))
    return cache


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    lay_out_hub_cache(cache, LLAMAGEN, {"c2i_T_64.pt": REF / "llamagen_c2i_tiny.pt",
                                        "vq_ds16_c2i.pt": REF / "llamagen_vq_tiny.pt"})
    return cache


def _greedy_cfg(pipe: Pipeline) -> taming_core.Sampler:
    return taming_core.create("sampler", "autoregressive", greedy=True, guidance_scale=4.0,
                              null_condition=torch.tensor([[pipe.prior.null_token]]), vocab_limit=64)


def test_parse_ref(tmp_path):
    assert parse_ref("owner/name") == HubRef("owner/name")
    assert parse_ref("owner/name@v1.0") == HubRef("owner/name", "v1.0")
    assert parse_ref("hf://owner/name@abc/sub/file.pt") == HubRef("owner/name", "abc", "sub/file.pt")
    assert parse_ref("owner/name", revision="r", filename="f.pt") == HubRef("owner/name", "r", "f.pt")
    assert parse_ref(tmp_path) == tmp_path
    with pytest.raises(CheckpointError, match="not a saved pipeline"):
        parse_ref("no/such/local/dir")
    with pytest.raises(ValidationError, match="revision"):
        parse_ref("owner/name@a", revision="b")


def test_llamagen_from_offline_hub_cache(offline_cache):
    """A LlamaGen prior file + tokenizer file from the cache give LlamaGen's greedy samples."""
    io = torch.load(REF / "llamagen_c2i_tiny.io.pt", weights_only=True)
    pipe = Pipeline.from_pretrained(f"hf://{LLAMAGEN}/c2i_T_64.pt", tokenizer=f"hf://{LLAMAGEN}/vq_ds16_c2i.pt",
                                    config={"n_head": 4, "block_size": 16})
    assert pipe.grid == (4, 4) and pipe.cond_offset == 64
    _, tokens = pipe.generate(3, condition=io["cond"], sampler=_greedy_cfg(pipe), return_tokens=True)
    assert torch.equal(tokens.reshape(3, 16), io["greedy_cfg4"])
    assert pipe.card_info["license"] == "mit"
    prior = Prior.from_pretrained(f"hf://{LLAMAGEN}@main/c2i_T_64.pt", config={"n_head": 4, "block_size": 16})
    tok = Tokenizer.from_pretrained(LLAMAGEN, filename="vq_ds16_c2i.pt", revision=COMMIT)
    assert prior.num_classes == 10 and tok.vocab_size == 64


def test_missing_file_offline_is_one_line(offline_cache):
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE") as err:
        Tokenizer.from_pretrained(f"hf://{LLAMAGEN}/vq_ds8_c2i.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(ValidationError, match="holds no tokenizer"):
        Pipeline.from_pretrained(f"hf://{LLAMAGEN}/c2i_T_64.pt", config={"n_head": 4})


def test_save_pretrained_and_our_format_on_the_hub(offline_cache, tmp_path):
    """save_pretrained writes our format + a model card; the directory and the same files
    served from the Hub cache at a tag both load back with equal weights."""
    pipe = Pipeline.from_pretrained(REF / "llamagen_c2i_tiny.pt", tokenizer=REF / "llamagen_vq_tiny.pt",
                                    config=REF / "llamagen_c2i_tiny.json")
    out = pipe.save_pretrained(tmp_path / "saved", metrics={"fid": 99.0})
    card = (out / "README.md").read_text()
    assert read_card(out)["license"] == "mit" and read_card(out)["library_name"] == "taming"
    assert "| fid | 99.0 |" in card and "imagenet-1k" in card and '"name": "llamagen"' in card
    local = Pipeline.from_pretrained(out)
    files = {name: out / name for name in ("pipeline.json", "pipeline.safetensors", "README.md")}
    lay_out_hub_cache(offline_cache, "me/tiny-llamagen", files, ref="v1", commit="f" * 40)
    hub = Pipeline.from_pretrained("me/tiny-llamagen@v1")
    for loaded in (local, hub):
        for key, value in pipe.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    assert hub.card_info["license"] == "mit"
    assert Prior.from_pretrained("me/tiny-llamagen@v1").num_classes == 10
    # a prior file with the tokenizer of a saved pipeline
    mixed = Pipeline.from_pretrained(REF / "llamagen_c2i_tiny.pt", tokenizer="me/tiny-llamagen@v1",
                                     config=REF / "llamagen_c2i_tiny.json")
    assert mixed.tokenizer.vocab_size == 64
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        pipe.push_to_hub("me/tiny-llamagen")


def test_taming_sample_with_llamagen_files(offline_cache, tmp_path, capsys):
    """`taming convert` of a LlamaGen prior (+ tokenizer) writes a pipeline, a VQ file alone a
    tokenizer-only one; `taming sample` draws from the pipeline and from the Hub files
    directly (that run in a subprocess, where HF_HUB_OFFLINE is set before the client is
    imported)."""
    from taming_plugins.cli import main

    c2i = tmp_path / "c2i_T_64.pt"
    shutil.copy(REF / "llamagen_c2i_tiny.pt", c2i)
    (tmp_path / "cfg.json").write_text('{"n_head": 4}')
    assert main(["convert", str(c2i), str(tmp_path / "pipe"), "--tokenizer", str(REF / "llamagen_vq_tiny.pt"),
                 "--config", str(tmp_path / "cfg.json")]) == 0
    assert main(["convert", str(REF / "llamagen_vq_tiny.pt"), str(tmp_path / "tok")]) == 0
    assert Pipeline.from_pretrained(tmp_path / "tok").prior is None
    assert main(["sample", "--pipeline", str(tmp_path / "pipe"), "--n", "2", "--label", "3", "--out",
                 str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert main(["sample", "--pipeline", str(tmp_path / "pipe"), "--n", "2", "--label", "3", "--out",
                 str(tmp_path / "g"), "--device", "cpu", "--guidance-scale", "4"]) == 0
    assert main(["sample", "--pipeline", str(tmp_path / "pipe"), "--n", "2", "--out", str(tmp_path / "h"),
                 "--device", "cpu", "--guidance-scale", "4"]) == 1
    assert "--label is required" in capsys.readouterr().err   # main: class-conditional needs --label
    assert main(["convert", str(c2i), str(tmp_path / "bad"), "--config", str(tmp_path / "cfg.json")]) == 1
    assert "holds no tokenizer" in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "taming_plugins.cli", "sample", "--pipeline",
                          f"hf://{LLAMAGEN}/c2i_T_64.pt", "--tokenizer", f"hf://{LLAMAGEN}/vq_ds16_c2i.pt",
                          "--config", str(tmp_path / "cfg.json"), "--n", "2", "--label", "3", "--out",
                          str(tmp_path / "b"), "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pipe" / "README.md").is_file()
    assert (tmp_path / "a" / "grid.png").is_file() and (tmp_path / "b" / "grid.png").is_file()


_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)


@settings(max_examples=30, deadline=None)
@given(owner=_NAME, name=_NAME, revision=st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True),
       filename=st.none() | st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_]{1,8})?\.(pt|ckpt)", fullmatch=True))
def test_hub_refs_round_trip(owner, name, revision, filename):
    """str(HubRef) parses back to the same reference."""
    ref = HubRef(f"{owner}/{name}", revision, filename)
    assert parse_ref(str(ref)) == ref


def test_taming_ckpt_with_its_yaml_from_the_hub_cache(offline_cache, tmp_path):
    """An original taming .ckpt and its YAML, both Hub references, load as a tokenizer."""
    from taming_plugins.compat import save_taming_checkpoint

    tok = taming_core.create("tokenizer", "vqgan", ch=32, ch_mult=[1, 2], num_res_blocks=1,
                             attn_resolutions=[], z_channels=8, resolution=16, embed_dim=4, n_embed=32,
                             quantizer={"name": "vq"}).eval()
    save_taming_checkpoint(tmp_path / "last.ckpt", tok, config_path=tmp_path / "model.yaml")
    lay_out_hub_cache(offline_cache, "me/vqgan-tiny", {"checkpoints/last.ckpt": tmp_path / "last.ckpt",
                                                        "configs/model.yaml": tmp_path / "model.yaml"})
    loaded = Tokenizer.from_pretrained("hf://me/vqgan-tiny/checkpoints/last.ckpt",
                                       config="hf://me/vqgan-tiny/configs/model.yaml")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).indices, tok.encode(x).indices)


def test_converted_directory_and_unknown_directory(tmp_path):
    from taming_plugins.compat import load_taming_checkpoint, save_converted, save_taming_checkpoint

    tok = taming_core.create("tokenizer", "vqgan", ch=32, ch_mult=[1, 2], num_res_blocks=1,
                             attn_resolutions=[], z_channels=8, resolution=16, embed_dim=4, n_embed=32,
                             quantizer={"name": "vq"}).eval()
    save_taming_checkpoint(tmp_path / "last.ckpt", tok)
    out = save_converted(tmp_path / "conv", load_taming_checkpoint(tmp_path / "last.ckpt"))
    assert Tokenizer.from_pretrained(out).vocab_size == 32
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a saved pipeline"):
        Pipeline.from_pretrained(tmp_path / "empty")

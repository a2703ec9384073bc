"""Original Net2NetTransformer checkpoints through ``load_taming_checkpoint``."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

import taming_core
from taming_core import CheckpointError, ConfigError
from taming_plugins.compat import load_taming_checkpoint
from taming_plugins.compat.net2net import Net2NetCheckpoint
from taming_plugins.priors.gpt import GPT

FIXTURE = "net2net_gpt_small"


@pytest.fixture(scope="module")
def original(fixtures_dir_module):
    d = fixtures_dir_module
    state = torch.load(d / f"{FIXTURE}.ckpt", weights_only=True)["state_dict"]
    config = yaml.safe_load((d / f"{FIXTURE}.yaml").read_text())
    io = torch.load(d / f"{FIXTURE}.io.pt", weights_only=True)
    return state, config, io


@pytest.fixture(scope="module")
def fixtures_dir_module():
    from conftest import FIXTURES

    return FIXTURES


def _save(tmp_path, state, name="model.ckpt"):
    path = tmp_path / name
    torch.save({"state_dict": state, "global_step": 0}, path)
    return path


def test_fixture_checkpoint_loads_and_reproduces_logits(fixtures_dir, original):
    _, _, io = original
    ckpt = load_taming_checkpoint(fixtures_dir / f"{FIXTURE}.ckpt", fixtures_dir / f"{FIXTURE}.yaml")
    assert isinstance(ckpt, Net2NetCheckpoint)
    assert isinstance(ckpt.tokenizer, taming_core.Tokenizer) and ckpt.tokenizer.vocab_size == 64
    assert isinstance(ckpt.prior, GPT) and not ckpt.prior.training
    assert ckpt.sos_token == 64 and ckpt.unconditional and ckpt.cond_stage == "unconditional"
    assert sorted(ckpt.ignored_keys) == [f"transformer.blocks.{i}.attn.mask" for i in range(2)]
    with torch.no_grad():
        assert (ckpt.prior(io["tokens"]) - io["logits"]).abs().max() < 1e-4
    out = taming_core.create("sampler", "autoregressive", greedy=True).sample(
        ckpt.prior, grid=(8, 8), batch_size=2, condition=io["greedy_cond"])
    assert torch.equal(out, io["greedy_full"].view(2, 8, 8))
    images = ckpt.tokenizer.decode(out)
    assert images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("n_layer,n_head,n_embd,block", [(3, 4, 16, 20), (1, 1, 8, 70)])
def test_other_architectures_load(tmp_path, original, n_layer, n_head, n_embd, block):
    state, config, _ = original
    torch.manual_seed(0)
    gpt = GPT(65, block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    with torch.no_grad():
        gpt.pos_emb.normal_()
    new_state = {k: v for k, v in state.items() if k.startswith("first_stage_model.")}
    new_state.update({f"transformer.{k}": v for k, v in gpt.state_dict().items()})
    mask = torch.tril(torch.ones(1, 1, block, block))
    new_state.update({f"transformer.blocks.{i}.attn.mask": mask for i in range(n_layer)})
    cfg = copy.deepcopy(config)
    cfg["model"]["params"]["transformer_config"]["params"].update(
        block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd, attn_pdrop=0.1)
    cfg["model"]["params"].update(unconditional=False, cond_stage_config="__is_first_stage__",
                                  sos_token=3)
    ckpt = load_taming_checkpoint(_save(tmp_path, new_state), cfg)
    assert ckpt.cond_stage == "first_stage" and not ckpt.unconditional and ckpt.sos_token == 3
    tokens = torch.randint(0, 65, (2, block))
    gpt.eval()
    with torch.no_grad():
        assert torch.allclose(ckpt.prior(tokens), gpt(tokens), atol=1e-6)


def test_bad_checkpoints_name_the_problem(tmp_path, original, fixtures_dir):
    state, config, _ = original
    with pytest.raises(CheckpointError, match="YAML"):
        load_taming_checkpoint(fixtures_dir / f"{FIXTURE}.ckpt")
    extra = dict(state, **{"transformer.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys: extra.weight"):
        load_taming_checkpoint(_save(tmp_path, extra), config)
    missing = {k: v for k, v in state.items() if k != "transformer.head.weight"}
    with pytest.raises(CheckpointError, match="missing keys: head.weight"):
        load_taming_checkpoint(_save(tmp_path, missing), config)
    foreign = dict(state, **{"ema_model.x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="ema_model.x"):
        load_taming_checkpoint(_save(tmp_path, foreign), config)
    no_first = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(CheckpointError, match="first_stage_model"):
        load_taming_checkpoint(_save(tmp_path, no_first), config)
    cfg = copy.deepcopy(config)
    cfg["model"]["params"]["permuter_config"] = {"target": "taming.modules.transformer.permuter.Subsample"}
    with pytest.raises(ConfigError, match="permuter"):
        load_taming_checkpoint(fixtures_dir / f"{FIXTURE}.ckpt", cfg)
    cfg = copy.deepcopy(config)
    cfg["model"]["params"]["transformer_config"]["params"]["n_head"] = 3
    with pytest.raises((ConfigError, taming_core.ValidationError), match="n_head"):
        load_taming_checkpoint(fixtures_dir / f"{FIXTURE}.ckpt", cfg)

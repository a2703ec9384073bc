"""A tokenizer, prior and conditioner written only against the declared contracts of
``taming_core`` (no ``last_layer``, no ``configure_optimizers``, no private base class)
train under both stages: the trainers use only what the interfaces declare."""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytest
import torch
from torch import Tensor, nn

import taming_core
from taming_core import (AutoregressivePrior, Conditioner, Encoded, PriorCache, Tokenizer, register,
                         unregister)
from taming_plugins.training.stage1 import TokenizerTrainer
from taming_plugins.training.stage2 import PriorTrainer

CODES, DIM, SIZE = 16, 4, 8


class TinyTokenizer(Tokenizer):
    """f2 conv autoencoder around a built-in quantizer; declares no last_layer."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, DIM, 2, stride=2)
        self.quantizer = taming_core.create("quantizer", "vq", codebook_size=CODES, dim=DIM)
        self.dec = nn.ConvTranspose2d(DIM, 3, 2, stride=2)
        self.steps_seen: list[int] = []

    def set_step(self, step: int) -> None:  # StepAware: the trainer passes the step
        self.steps_seen.append(step)

    def encode(self, images: Tensor) -> Encoded:
        out = self.quantizer(self.enc(images))
        return Encoded(out.indices, out.z_q, out.loss, dict(out.metrics))

    def decode_latent(self, latent: Tensor) -> Tensor:
        return torch.tanh(self.dec(latent))

    def decode_indices_to_latent(self, indices: Tensor) -> Tensor:
        return self.quantizer.decode_indices(indices)

    @property
    def downsample_factor(self) -> int:
        return 2

    @property
    def vocab_size(self) -> int:
        return CODES


class _Cache(PriorCache):
    def __init__(self) -> None:
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        self.length = length


class BigramPrior(AutoregressivePrior):
    """Logits of position t from token t only (causal by construction); the default
    ``loss`` and ``parameter_groups`` of the contract."""

    def __init__(self, vocab_size: int, block_size: int) -> None:
        super().__init__()
        self._vocab, self._block = vocab_size, block_size
        self.table = nn.Embedding(vocab_size, vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def block_size(self) -> int:
        return self._block

    def forward(self, tokens: Tensor) -> Tensor:
        return self.table(tokens)

    def new_cache(self, batch_size: int, max_len: int, *, device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> PriorCache:
        return _Cache()

    def forward_cached(self, tokens: Tensor, cache: PriorCache) -> Tensor:
        cache.length += tokens.shape[1]
        return self.table(tokens)


class ConstantConditioner(Conditioner):
    """One condition id for every image, plus a null id (classifier-free guidance)."""

    @property
    def null_id(self) -> Optional[int]:
        return 1

    @property
    def takes_condition(self) -> bool:
        return False

    def forward(self, condition: Any) -> Tensor:
        n = condition.shape[0] if isinstance(condition, Tensor) else int(condition)
        return torch.zeros(n, 1, dtype=torch.long)

    @property
    def vocab_size(self) -> int:
        return 2


@pytest.fixture()
def bigram_prior():
    register("prior", "zz_bigram")(BigramPrior)
    try:
        yield "zz_bigram"
    finally:
        unregister("prior", "zz_bigram")


def test_contract_only_components_train_under_both_stages(tmp_path, bigram_prior, caplog) -> None:
    torch.manual_seed(0)
    tokenizer = TinyTokenizer()
    stage1 = {"tokenizer": {"name": "unused"},
              "loss": {"name": "vqgan", "perceptual": None, "disc_start": 0, "disc_weight": 0.3,
                       "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 1}},
              "data": {"image_size": SIZE, "batch_size": 4, "train_kwargs": {"length": 16},
                       "val_kwargs": {"length": 4}, "val_batches": 1},
              "optim": {"learning_rate": 1e-3},
              "train": {"out": str(tmp_path / "tok"), "steps": 3, "log_every": 1, "ckpt_every": 3,
                        "device": "cpu", "progress": False}}
    with caplog.at_level(logging.WARNING, logger="taming_plugins.training.stage1"):
        trainer = TokenizerTrainer(stage1, tokenizer=tokenizer)
    said = [r.getMessage() for r in caplog.records if "last_layer" in r.getMessage()]
    assert len(said) == 1 and "fixed disc_weight" in said[0]  # said once
    result = trainer.fit()
    assert result.step == 3 and all(h["d_weight"] == pytest.approx(0.3) for h in result.train_metrics)
    assert tokenizer.steps_seen[:3] == [0, 1, 2]  # StepAware.set_step before every forward

    stage2 = {"prior": {"name": bigram_prior},
              "data": {"image_size": SIZE, "batch_size": 4, "train_kwargs": {"length": 16}},
              "optim": {"learning_rate": 1e-2},
              "train": {"out": str(tmp_path / "prior"), "steps": 3, "log_every": 1, "ckpt_every": 3,
                        "cfg_drop": 0.5, "pkeep": 0.8, "num_samples": 2, "device": "cpu",
                        "progress": False}}
    prior_trainer = PriorTrainer(stage2, tokenizer=tokenizer, conditioner=ConstantConditioner())
    out = prior_trainer.fit()
    assert out.step == 3 and torch.isfinite(torch.tensor(out.metrics["loss"]))
    assert (tmp_path / "prior" / "images" / "step_00000003.png").is_file()  # default_sampler
    assert isinstance(prior_trainer.optimizer, torch.optim.AdamW)
    decays = sorted(g["weight_decay"] for g in prior_trainer.optimizer.param_groups)
    assert decays == [0.0, 0.01]  # Prior.parameter_groups' default

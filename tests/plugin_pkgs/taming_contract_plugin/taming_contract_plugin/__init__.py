"""A third-party tokenizer, prior and conditioner that use only what ``taming_core``
declares (interfaces, registry, public helpers) -- no import of ``taming_plugins``.

Registers ``tokenizer/patch_vq``, ``prior/causal_conv`` and ``conditioner/brightness``.
"""

from typing import Optional

import torch
from torch import nn

import taming_core
from taming_core.quantization import (UsageTracker, check_latent, code_counts, finalize_metrics,
                                      from_rows, straight_through, to_rows)
from taming_core.validation import check_tensor


@taming_core.register("tokenizer", "patch_vq")
class PatchVQTokenizer(taming_core.Tokenizer):
    """A strided-conv encoder, a learned codebook (VQ-VAE loss) and a transposed-conv decoder."""

    def __init__(self, codebook_size: int = 32, dim: int = 8, factor: int = 2, channels: int = 3,
                 beta: float = 0.25):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, 32, factor, stride=factor), nn.SiLU(),
                                     nn.Conv2d(32, dim, 1))
        self.codebook = nn.Embedding(codebook_size, dim)
        self.decoder = nn.Sequential(nn.Conv2d(dim, 32, 1), nn.SiLU(),
                                     nn.ConvTranspose2d(32, channels, factor, stride=factor))
        self.tracker = UsageTracker(codebook_size)
        self.factor, self.beta = factor, beta

    @property
    def downsample_factor(self) -> int:
        return self.factor

    @property
    def vocab_size(self) -> int:
        return self.codebook.num_embeddings

    @property
    def last_layer(self):
        return self.decoder[-1].weight

    def encode(self, images):
        check_tensor(images, "patch_vq(images)", dims=("B", "C", "H", "W"), dtype="float")
        z = self.encoder(images)
        check_latent(z, "patch_vq(latent)")
        rows = to_rows(z)
        idx = torch.cdist(rows.detach(), self.codebook.weight).argmin(dim=1)
        z_q = from_rows(self.codebook(idx), z.shape[0], z.shape[2], z.shape[3])
        loss = ((z_q - z.detach()) ** 2).mean() + self.beta * ((z_q.detach() - z) ** 2).mean()
        metrics = finalize_metrics(code_counts(idx, self.vocab_size), self.tracker, self.training)
        return taming_core.Encoded(idx.view(z.shape[0], *z.shape[2:]), straight_through(z, z_q),
                                   loss, metrics)

    def decode_latent(self, latent):
        return self.decoder(latent)

    def decode_indices_to_latent(self, indices):
        return self.codebook(indices).permute(0, 3, 1, 2)


@taming_core.register("prior", "causal_conv")
class CausalConvPrior(taming_core.AutoregressivePrior):
    """Embedding -> two causal 1-D convolutions (left padding) -> logits."""

    def __init__(self, vocab_size: int, block_size: int, width: int = 32, kernel: int = 3):
        super().__init__()
        self._vocab, self._block, self.kernel = vocab_size, block_size, kernel
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(block_size, width)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, kernel) for _ in range(2))
        self.head = nn.Linear(width, vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def block_size(self) -> int:
        return self._block

    def forward(self, tokens):
        check_tensor(tokens, "causal_conv(tokens)", dims=("B", "T"), dtype="long",
                     value_range=(0, self._vocab - 1))
        h = (self.embed(tokens) + self.pos.weight[:tokens.shape[1]]).transpose(1, 2)
        for conv in self.convs:
            h = h + torch.relu(conv(nn.functional.pad(h, (self.kernel - 1, 0))))
        return self.head(h.transpose(1, 2))

    def new_cache(self, batch_size, max_len, *, device=None, dtype=None):
        # no key/value state: the cache keeps the ids and each step recomputes over them
        return taming_core.TokenHistoryCache(batch_size, max_len,
                                             device if device is not None else self.head.weight.device)

    def forward_cached(self, tokens, cache):
        start = cache.append(tokens)
        return self(cache.tokens)[:, start:]


@taming_core.register("conditioner", "brightness")
class BrightnessConditioner(taming_core.Conditioner):
    """The image itself -> its mean brightness in ``num_bins`` bins (one token); id
    ``num_bins`` is the null condition."""

    def __init__(self, num_bins: int = 4):
        super().__init__()
        self.num_bins = int(num_bins)

    @property
    def vocab_size(self) -> int:
        return self.num_bins + 1

    @property
    def null_id(self) -> Optional[int]:
        return self.num_bins

    def forward(self, condition):
        check_tensor(condition, "brightness(condition)", dims=("B", "C", "H", "W"), dtype="float")
        level = (condition.mean(dim=(1, 2, 3)).clamp(-1, 1) + 1) / 2
        return (level * self.num_bins).long().clamp(max=self.num_bins - 1)[:, None]

"""Abstract interfaces every taming component implements.

The core knows nothing about concrete implementations: plugins subclass these,
register themselves (:func:`taming_core.register`) and are built by name.

Data flow of the two-stage method::

    images (B×C×H×W, [-1, 1]) --Tokenizer.encode--> indices (B×h×w, Long)
    indices --flatten row-major--> tokens (B×T) --Prior--> logits (B×T×V)
    Sampler(prior, grid) --> indices (B×h×w) --Tokenizer.decode--> images

Tensor contracts are given in each docstring; ``B`` is the batch, ``C`` channels,
``H×W`` image size, ``h×w`` latent grid, ``K`` codebook size, ``V`` vocabulary size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

Metrics = dict[str, float]


# --------------------------------------------------------------------------- quantizers
@dataclass
class QuantizerOutput:
    """Result of :meth:`Quantizer.forward`.

    Attributes:
        z_q: quantized latent, same shape as the input ``z`` (B×C×H×W); its gradient
            flows straight through to ``z``.
        indices: Long B×H×W code ids (B×H×W×L for quantizers with L levels).
        loss: scalar tensor added to the training loss (codebook/commitment/entropy);
            zero for quantizers without an auxiliary loss.
        metrics: floats for logging; at least ``usage`` (fraction of codes used in this
            batch) and ``perplexity`` (exp of the entropy of code frequencies).
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    metrics: Metrics = field(default_factory=dict)


class Quantizer(nn.Module, ABC):
    """Maps a continuous latent B×C×H×W to discrete codes and back."""

    @abstractmethod
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` (float B×C×H×W); see :class:`QuantizerOutput`."""

    @abstractmethod
    def decode_indices(self, indices: Tensor) -> Tensor:
        """Long B×H×W (or B×H×W×L) code ids -> quantized latent B×C×H×W."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct ids per level (ids lie in ``[0, codebook_size)``)."""

    @property
    def num_levels(self) -> int:
        """Number of code ids per latent position (1 except for multi-level quantizers)."""
        return 1


# --------------------------------------------------------------------------- tokenizers
@dataclass
class Encoded:
    """Result of :meth:`Tokenizer.encode`.

    Attributes:
        indices: Long B×h×w token ids (B×h×w×L for multi-level quantizers).
        latent: the quantized latent B×c×h×w that :meth:`Tokenizer.decode_latent`
            consumes (straight-through gradient to the encoder).
        loss: scalar quantizer loss.
        metrics: quantizer metrics (``usage``, ``perplexity``...).
    """

    indices: Tensor
    latent: Tensor
    loss: Tensor
    metrics: Metrics = field(default_factory=dict)


class Tokenizer(nn.Module, ABC):
    """Stage 1: images <-> grids of discrete tokens."""

    @abstractmethod
    def encode(self, images: Tensor) -> Encoded:
        """Float B×C×H×W images in [-1, 1] -> :class:`Encoded`."""

    @abstractmethod
    def decode_latent(self, latent: Tensor) -> Tensor:
        """Quantized latent B×c×h×w -> images B×C×H×W (roughly in [-1, 1])."""

    @abstractmethod
    def decode_indices_to_latent(self, indices: Tensor) -> Tensor:
        """Long B×h×w token ids -> quantized latent B×c×h×w."""

    def decode(self, indices: Tensor) -> Tensor:
        """Long B×h×w token ids -> images B×C×H×W."""
        return self.decode_latent(self.decode_indices_to_latent(indices))

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Encoded]:
        """Encode and decode through the straight-through latent (the training path)."""
        enc = self.encode(images)
        return self.decode_latent(enc.latent), enc

    @property
    @abstractmethod
    def downsample_factor(self) -> int:
        """Ratio between image size and token-grid size (e.g. 16 for f16 models)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct token ids."""


# --------------------------------------------------------------------------- priors
class PriorCache(ABC):
    """Key/value cache of an autoregressive prior for incremental decoding.

    ``length`` is the number of positions already in the cache; the next call of
    :meth:`Prior.forward_cached` writes its tokens at positions ``length...``.
    """

    length: int

    @abstractmethod
    def reset(self) -> None:
        """Forget every cached position (keeps the allocated memory)."""

    @abstractmethod
    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` positions."""


class Prior(nn.Module, ABC):
    """Stage 2: autoregressive model over raw token ids.

    Condition tokens (SOS, class labels, condition-tokenizer ids) are part of the
    sequence, as in the original Net2NetTransformer: the caller offsets ids so the
    vocabularies do not collide.
    """

    @abstractmethod
    def forward(self, tokens: Tensor) -> Tensor:
        """Long B×T token ids (T <= block_size) -> float logits B×T×V; position t
        predicts token t+1."""

    def loss(self, tokens: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        """Mean cross-entropy of ``tokens`` (Long B×T) given ``condition`` (Long B×L
        prefix tokens, or None: then ``tokens[:, 0]`` is the start token and only
        ``tokens[:, 1:]`` are predicted)."""
        seq = tokens if condition is None else torch.cat([condition, tokens], dim=1)
        logits = self(seq[:, :-1])
        n_pred = tokens.shape[1] - (1 if condition is None else 0)
        logits = logits[:, -n_pred:]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           tokens[:, -n_pred:].reshape(-1))

    @abstractmethod
    def new_cache(self, batch_size: int, max_len: int, *, device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> PriorCache:
        """Preallocate a cache for ``batch_size`` sequences of up to ``max_len`` tokens."""

    @abstractmethod
    def forward_cached(self, tokens: Tensor, cache: PriorCache) -> Tensor:
        """Append Long B×t tokens to ``cache`` (prefill if t > 1, one step if t == 1)
        and return their logits B×t×V."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the output vocabulary V."""

    @property
    @abstractmethod
    def block_size(self) -> int:
        """Maximum sequence length the prior attends over."""


# --------------------------------------------------------------------------- discriminators
class Discriminator(nn.Module, ABC):
    """Real/fake classifier for the adversarial part of the stage-1 loss."""

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Float B×C×H×W images -> logits (a patch map B×1×h×w, or B×1)."""


# --------------------------------------------------------------------------- losses
class PerceptualLoss(nn.Module, ABC):
    """Distance between images in a feature space (registered as kind ``loss``)."""

    @abstractmethod
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Two float B×3×H×W image batches in [-1, 1] -> per-sample distance B×1×1×1."""


class GANObjective(ABC):
    """Adversarial objective on discriminator logits (registered as kind ``loss``)."""

    @abstractmethod
    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        """Scalar loss the generator minimises."""

    @abstractmethod
    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """Scalar loss the discriminator minimises."""


# --------------------------------------------------------------------------- conditioning
class Conditioner(nn.Module, ABC):
    """Turns side information (a class label, a depth map...) into condition tokens.

    Condition tokens use ids in ``[0, vocab_size)``; a prior that sees both
    condition and image tokens offsets them as its configuration says.
    """

    @abstractmethod
    def forward(self, condition: Any) -> Tensor:
        """Side information -> Long B×L prefix tokens or Long B×h×w spatial tokens."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct condition token ids."""


# --------------------------------------------------------------------------- samplers
ProgressCallback = Callable[[int, int], None]


class Sampler(ABC):
    """Draws token grids from a :class:`Prior`."""

    @abstractmethod
    def sample(self, prior: Prior, grid: tuple[int, int] = (16, 16), *, batch_size: int = 1,
               condition: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Return Long B×H×W token ids.

        ``condition`` is None, Long B×L prefix tokens (SOS/class), or Long B×H×W
        condition tokens spatially aligned with the grid.
        """

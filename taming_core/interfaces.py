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
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

Metrics = dict[str, float]


# --------------------------------------------------------------------------- optional members
class StepAware:
    """Declares "takes the training step": trainers call :meth:`set_step` on every
    sub-module that is ``StepAware`` before each training forward (and once on resume),
    so step-driven schedules (e.g. a Gumbel temperature) need no state of their own.

    Every core component class inherits it with the no-op default, so a plugin that has
    no schedule does nothing.
    """

    def set_step(self, step: int) -> None:
        """Called with the global training step (micro-batches counted); default: no-op."""


# --------------------------------------------------------------------------- quantizers
#: torch layers whose ``reset_parameters`` :meth:`Quantizer.reset_parameters` calls by default.
_RESETTABLE_LAYERS = (nn.Linear, nn.Bilinear, nn.Embedding, nn.modules.conv._ConvNd,
                      nn.modules.normalization.LayerNorm, nn.modules.normalization.GroupNorm,
                      nn.modules.batchnorm._NormBase)


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


class Quantizer(nn.Module, StepAware, ABC):
    """Maps a continuous latent B×C×H×W to discrete codes and back."""

    #: Channels of the input ``z`` when they differ from the code width (e.g. a Gumbel
    #: quantizer's 1×1 projection input); a tokenizer sizes its ``quant_conv`` by it.
    #: Default None: the input has the code width (``dim``).
    in_channels: Optional[int] = None

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

    def reset_parameters(self) -> None:
        """Re-draw the parameters, same configuration (e.g. the independent levels of a
        residual quantizer). Default: ``reset_parameters()`` of every torch layer inside
        that has one (linear, convolution, embedding, normalisation layers); quantizers
        with other state (codebooks held as buffers...) override it."""
        for module in self.modules():
            if module is not self and isinstance(module, _RESETTABLE_LAYERS):
                module.reset_parameters()


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


class Tokenizer(nn.Module, StepAware, ABC):
    """Stage 1: images <-> grids of discrete tokens."""

    @classmethod
    def from_pretrained(cls, ref: Any, **kwargs: Any) -> "Tokenizer":
        """The tokenizer of a saved pipeline or an original checkpoint file: a local path,
        a Hub repo id (``owner/name[@revision]``) or file (``hf://owner/name[@rev]/file``);
        see :func:`taming_core.hub.load_component`."""
        from .hub import load_component

        return load_component(ref, "tokenizer", cls, **kwargs)

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

    def forward(self, images: Tensor) -> tuple[Tensor, Encoded]:
        """Default: :meth:`reconstruct` (what a trainer calls through a DDP wrapper)."""
        return self.reconstruct(images)

    @property
    @abstractmethod
    def downsample_factor(self) -> int:
        """Ratio between image size and token-grid size (e.g. 16 for f16 models)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct token ids."""

    @property
    def last_layer(self) -> Optional[Tensor]:
        """The decoder's last weight, for the stage-1 loss's adaptive GAN weight (the
        ratio of the reconstruction and GAN gradient norms there). Default ``None``: the
        trainer then uses the fixed discriminator weight and says so once."""
        return None


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


class TokenHistoryCache(PriorCache):
    """A :class:`PriorCache` that keeps the ids fed so far, for autoregressive priors
    without a key/value cache: ``forward_cached`` calls :meth:`append` and recomputes
    its logits over :attr:`tokens`. Exact and simple; each step costs a forward over the
    whole history, so it suits small priors and short block sizes."""

    def __init__(self, batch_size: int, max_len: int, device: Optional[torch.device] = None) -> None:
        self.ids = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        """Number of sequences the cache holds."""
        return self.ids.shape[0]

    @property
    def max_len(self) -> int:
        """Number of positions allocated."""
        return self.ids.shape[1]

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        from .errors import ValidationError
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= self.length:
            raise ValidationError(f"{type(self).__name__}.truncate(length): expected an int in "
                                  f"[0, {self.length}] (the cached length), got {length!r}")
        self.length = length

    def append(self, tokens: Tensor) -> int:
        """Write Long B×t ``tokens`` after the cached ones; returns their first position."""
        from .errors import ValidationError
        start, t = self.length, tokens.shape[1]
        if start + t > self.max_len:
            raise ValidationError(f"{type(self).__name__}.append(tokens): the cache holds "
                                  f"{self.max_len} positions ({start} used), got {t} more")
        self.ids[:, start:start + t] = tokens
        self.length = start + t
        return start

    @property
    def tokens(self) -> Tensor:
        """Long B×length: every id fed so far."""
        return self.ids[:, :self.length]


#: Family names a :class:`Prior` declares (``Prior.family``) and a :class:`Sampler` drives.
FAMILIES: tuple[str, ...] = ("autoregressive", "masked")


class Prior(nn.Module, StepAware, ABC):
    """Stage 2: a model over raw token ids, of one declared family.

    Condition tokens (SOS, class labels, condition-tokenizer ids) are part of the
    sequence, as in the original Net2NetTransformer: the caller offsets ids so the
    vocabularies do not collide.

    The training objective belongs to the prior (:meth:`loss`); the stage-2 trainer only
    feeds it. Families: :class:`AutoregressivePrior` (next-token logits and a cache) and
    :class:`MaskedPrior` (bidirectional logits at every position, parallel decoding).
    """

    #: The family this prior belongs to (one of :data:`FAMILIES`); samplers check it.
    family: ClassVar[str] = ""

    #: Registered name of the sampler used when a config names none (trainer grids,
    #: ``Pipeline`` without a sampler).
    default_sampler: ClassVar[str] = ""

    @classmethod
    def from_pretrained(cls, ref: Any, **kwargs: Any) -> "Prior":
        """The prior of a saved pipeline or an original checkpoint file (see
        :meth:`Tokenizer.from_pretrained` and :func:`taming_core.hub.load_component`)."""
        from .hub import load_component

        return load_component(ref, "prior", cls, **kwargs)

    @abstractmethod
    def loss(self, tokens: Tensor, condition: Optional[Tensor] = None, *,
             generator: Optional[torch.Generator] = None, inputs: Optional[Tensor] = None) -> Tensor:
        """Scalar training loss of image ``tokens`` (Long B×T) given ``condition`` (Long
        B×L prefix tokens in the prior's vocabulary, or None).

        ``generator`` drives any randomness of the objective (e.g. the masking of a
        masked prior). ``inputs`` (Long B×T, optional) replaces ``tokens`` as the network
        input while ``tokens`` stay the targets: trainer-side corruption such as pkeep.
        Each family documents what it does with it.
        """

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the output vocabulary V."""

    @property
    @abstractmethod
    def block_size(self) -> int:
        """Maximum sequence length the prior attends over (condition prefix included)."""

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups. Default: ``weight_decay`` on parameters of two or
        more dimensions (weight matrices, convolution kernels, embeddings), none on
        biases and norm scales. Priors with another rule override it."""
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": decay, "weight_decay": float(weight_decay)},
                {"params": no_decay, "weight_decay": 0.0}]


class AutoregressivePrior(Prior):
    """Next-token prior: position t predicts token t+1; incremental decoding via a cache."""

    family: ClassVar[str] = "autoregressive"
    default_sampler: ClassVar[str] = "autoregressive"

    @abstractmethod
    def forward(self, tokens: Tensor) -> Tensor:
        """Long B×T token ids (T <= block_size) -> float logits B×T×V; position t
        predicts token t+1."""

    def loss(self, tokens: Tensor, condition: Optional[Tensor] = None, *,
             generator: Optional[torch.Generator] = None, inputs: Optional[Tensor] = None) -> Tensor:
        """Mean next-token cross-entropy of ``tokens`` (Long B×T) given ``condition``
        (Long B×L prefix tokens, or None: then ``tokens[:, 0]`` is the start token and only
        ``tokens[:, 1:]`` are predicted). ``inputs`` (pkeep-corrupted tokens) are fed in
        place of ``tokens``; the targets stay ``tokens``. ``generator`` is unused."""
        fed = tokens if inputs is None else inputs
        seq = fed if condition is None else torch.cat([condition, fed], dim=1)
        logits = self(seq[:, :-1])
        n_pred = tokens.shape[1] - (1 if condition is None else 0)
        logits = logits[:, -n_pred:]
        try:
            return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                               tokens[:, -n_pred:].reshape(-1))
        except IndexError:  # a target id outside the vocabulary (the error path only)
            from .validation import token_range_error
            raise token_range_error(tokens, self.vocab_size, f"{type(self).__name__}.loss(tokens)") \
                from None

    @abstractmethod
    def new_cache(self, batch_size: int, max_len: int, *, device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> PriorCache:
        """Preallocate a cache for ``batch_size`` sequences of up to ``max_len`` tokens."""

    @abstractmethod
    def forward_cached(self, tokens: Tensor, cache: PriorCache) -> Tensor:
        """Append Long B×t tokens to ``cache`` (prefill if t > 1, one step if t == 1)
        and return their logits B×t×V."""


class MaskedPrior(Prior):
    """Bidirectional prior over partly masked token sequences (MaskGIT / absorbing-state
    discrete diffusion): every position sees every other; masked positions hold
    :attr:`mask_id`."""

    family: ClassVar[str] = "masked"
    default_sampler: ClassVar[str] = "maskgit"

    @property
    @abstractmethod
    def mask_id(self) -> int:
        """The id of the mask token in the input vocabulary (never an output)."""

    @abstractmethod
    def forward(self, tokens: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        """Long B×T image tokens (some equal to :attr:`mask_id`) and an optional Long B×L
        condition prefix -> float logits B×T×V at every image position."""


# --------------------------------------------------------------------------- discriminators
class Discriminator(nn.Module, StepAware, ABC):
    """Real/fake classifier for the adversarial part of the stage-1 loss."""

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Float B×C×H×W images -> logits (a patch map B×1×h×w, or B×1)."""


# --------------------------------------------------------------------------- losses
class PerceptualLoss(nn.Module, ABC):
    """Distance between images in a feature space (registered as kind ``perceptual``)."""

    @abstractmethod
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Two float B×3×H×W image batches in [-1, 1] -> per-sample distance B×1×1×1."""


class GANObjective(ABC):
    """Adversarial objective on discriminator logits (registered as kind ``gan``)."""

    @abstractmethod
    def generator_loss(self, logits_fake: Tensor) -> Tensor:
        """Scalar loss the generator minimises."""

    @abstractmethod
    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """Scalar loss the discriminator minimises."""


class AutoencoderLoss(nn.Module, StepAware, ABC):
    """The stage-1 objective the tokenizer trainer drives (registered as kind
    ``autoencoder_loss``; the built-in is ``vqgan``): a generator (tokenizer) loss, and an
    optional discriminator with its own loss.

    Both losses return ``(scalar loss, float metrics for logging)``; metrics may be
    computed lazily by the trainer only on logging steps, so implementations should
    return tensors' ``.detach()`` values cheaply.
    """

    @property
    def discriminator(self) -> Optional[Discriminator]:
        """The discriminator the trainer optimises with its own optimizer, or None
        (default: no adversarial part)."""
        return None

    @property
    def perceptual(self) -> Optional[PerceptualLoss]:
        """The perceptual distance used (validation reports it), or None (default)."""
        return None

    def discriminator_active(self, step: int) -> bool:
        """Whether the discriminator step runs at ``step`` (default: when there is one)."""
        return self.discriminator is not None

    @abstractmethod
    def generator_loss(self, inputs: Tensor, reconstructions: Tensor, quant_loss: Tensor, *,
                       step: int, last_layer: Optional[Tensor] = None) -> tuple[Tensor, Metrics]:
        """Tokenizer loss; ``last_layer`` is :attr:`Tokenizer.last_layer` (may be None)."""

    def discriminator_loss(self, inputs: Tensor, reconstructions: Tensor, *,
                           step: int) -> tuple[Tensor, Metrics]:
        """Discriminator loss (inputs and reconstructions detached). Required when
        :attr:`discriminator` is not None."""
        raise NotImplementedError(f"{type(self).__name__} has a discriminator but no discriminator_loss")


# --------------------------------------------------------------------------- conditioning
class Conditioner(nn.Module, StepAware, ABC):
    """Turns side information (a class label, a depth map...) into condition tokens.

    Condition tokens use ids in ``[0, vocab_size)``; a prior that sees both
    condition and image tokens offsets them as its configuration says.
    """

    #: True when :meth:`forward` returns a B×h×w grid aligned with the image grid
    #: (default False: a B×L prefix).
    spatial: ClassVar[bool] = False

    @property
    def null_id(self) -> Optional[int]:
        """The local id that stands for "no condition" (classifier-free guidance), or
        None (the default) when the conditioner has none."""
        return None

    @property
    def takes_condition(self) -> bool:
        """Whether :meth:`forward` uses side information (False for conditioners such as
        SOS that only need a batch size). Default True."""
        return True

    def null_condition(self, tokens: Tensor) -> Tensor:
        """Condition tokens shaped like ``tokens`` that all hold :attr:`null_id`."""
        null = self.null_id
        if null is None:
            from .errors import ValidationError
            raise ValidationError(
                f"{type(self).__name__} has no null condition; enable it (e.g. null_token=True) "
                "to train or sample with classifier-free guidance")
        return torch.full_like(tokens, null)

    @abstractmethod
    def forward(self, condition: Any) -> Tensor:
        """Side information -> Long B×L prefix tokens or Long B×h×w spatial tokens."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct condition token ids."""


# --------------------------------------------------------------------------- checkpoint formats
class CheckpointFormat(ABC):
    """Reads checkpoint files of other projects (registered as kind ``checkpoint_format``).

    The core never imports a reader: ``Pipeline.from_pretrained`` / ``*.from_pretrained``
    (:mod:`taming_core.hub`) ask every registered format whether it :meth:`accepts` a file
    and let the first that does turn it into pipeline parts. The built-in ``original``
    format (``taming_plugins.compat``) reads taming ``.ckpt`` and LlamaGen ``.pt`` files.
    """

    @abstractmethod
    def accepts(self, path: Any) -> bool:
        """Cheap check (file name, suffix, a few bytes) that ``path`` (a local file) is one
        of this format's files."""

    @abstractmethod
    def load_parts(self, path: Any, *, config: Any = None) -> dict[str, Any]:
        """``Pipeline`` keyword arguments read from ``path``: any of ``tokenizer``,
        ``prior``, ``sampler``, ``conditioner``, ``cond_offset``, ``grid``, plus ``card``
        (a dict for the model card: ``license``, ``source``, ``datasets``, ``metrics``...).
        ``config`` is the format's own config (path, mapping or name) or None."""


# --------------------------------------------------------------------------- samplers
ProgressCallback = Callable[[int, int], None]


class Sampler(ABC):
    """Draws token grids from a :class:`Prior`."""

    #: The prior family this sampler drives (one of :data:`FAMILIES`).
    family: ClassVar[str] = "autoregressive"

    @abstractmethod
    def sample(self, prior: Prior, grid: tuple[int, int] = (16, 16), *, batch_size: int = 1,
               condition: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Return Long B×H×W token ids.

        ``condition`` is None, Long B×L prefix tokens (SOS/class), or Long B×H×W
        condition tokens spatially aligned with the grid.
        """


class InpaintingSampler(Sampler):
    """A sampler that can also fill in part of a given token grid (inpainting,
    outpainting, editing a region of an encoded image). :class:`Pipeline` uses
    :meth:`inpaint` for ``generate(init_tokens=..., known=...)`` and ``edit``."""

    @abstractmethod
    def inpaint(self, prior: Prior, init_tokens: Tensor, known: Tensor, *,
                condition: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
        """Long B×H×W ``init_tokens`` and a Bool ``known`` mask (H×W or B×H×W, True = keep)
        -> Long B×H×W tokens where every known token equals ``init_tokens`` exactly and
        the others are sampled given them (and ``condition``, as in :meth:`sample`)."""

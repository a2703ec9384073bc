"""Run configs of both trainers: one style, the same section names.

A run config is a dataclass with ``from_dict``/``to_dict``; unknown keys are refused by
name (``train.stepz: unknown key; expected one of ...``). Both stages share the
sections ``tokenizer``, ``data``, ``optim`` and ``train``; stage 1 adds ``loss``, stage
2 adds ``prior``, ``conditioner`` and ``sampler``::

    # stage 1 (TokenizerTrainConfig)           # stage 2 (PriorTrainConfig)
    tokenizer: {name: vqgan, ...}              tokenizer: runs/vqgan      # frozen stage-1 run
    loss: {name: vqgan, ...}                   prior: {name: gpt, ...}
                                               conditioner: {name: sos}
                                               sampler: null              # prior.default_sampler
    data:  DataConfig (same keys in both)
    optim: TokenizerOptimConfig / PriorOptimConfig (shared keys + stage-specific ones)
    train: TokenizerTrainSection / PriorTrainSection (shared keys + stage-specific ones)

Both write the same run directory (:mod:`.trainer`): ``OUT/checkpoints/step_*``,
``OUT/metrics.jsonl``, ``OUT/images/step_*.png``.

Stage-2 configs of the earlier flat layout (``out_dir``, ``steps``, ``lr``, ...) still
load: each flat key is moved to its section (:data:`LEGACY_STAGE2_KEYS`, e.g. ``lr`` ->
``optim.learning_rate``) and one warning names the new keys.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from taming_core.config import load_config, merge_configs
from taming_core.errors import ConfigError
from taming_core.validation import check_choice, check_positive

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
DISTRIBUTED_MODES = ("auto", "off")


def _checked(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Run a validation helper, reporting its error as a :class:`ConfigError`."""
    try:
        fn(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Section:
    """Mixin of the config dataclasses: ``from_dict`` (unknown keys refused by name) and
    ``to_dict`` (JSON-able)."""

    #: Dotted name used in messages (``data``, ``optim``, ...).
    section: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]] = None, *, path: Optional[str] = None):
        path = path or cls.section
        data = {} if data is None else data
        if isinstance(data, Section):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}: unknown key; expected one of {', '.join(known)}")
        obj = cls(**copy.deepcopy(dict(data)))
        obj.validate(path)
        return obj

    def validate(self, path: str) -> None:
        """Raise :class:`ConfigError` naming ``path.key`` for a bad value."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _positive(obj: Any, path: str, names: tuple[str, ...], *, allow_zero: bool = False,
              optional: bool = False, integer: bool = True) -> None:
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        _checked(check_positive, value, f"{path}.{name}", allow_zero=allow_zero, integer=integer)


def _probability(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: expected a probability in [0, 1], got {value!r}")


def _spec(value: Any, name: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, Mapping) or "name" not in value:
        raise ConfigError(f"{name}: expected a spec with a 'name', got {value!r}")


# --------------------------------------------------------------------------- shared sections
@dataclass
class DataConfig(Section):
    """``data``: what to train on (the same keys in both stages).

    Attributes:
        train: ``"photos"``, ``"fashion-mnist"`` or an image folder.
        val: the validation data (default: ``train`` with split ``val``; stage 1 only).
        image_size: training crop size in pixels.
        batch_size: images (stage 1) or token sequences (stage 2) per (micro-)batch.
        num_workers: DataLoader worker processes.
        train_kwargs, val_kwargs: extra dataset arguments (e.g. ``{length: 4096}`` for photos).
        val_batches: validation batches for val metrics and image grids (stage 1).
        max_items: use only the first N training items (None: all).
        cache_dir: stage 2's token cache (default ``OUT/token_cache``).
        encode_batch_size: images per batch when stage 2 tokenizes the data once.
    """

    section: ClassVar[str] = "data"

    train: str = "photos"
    val: Optional[str] = None
    image_size: int = 256
    batch_size: int = 4
    num_workers: int = 0
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    val_kwargs: dict[str, Any] = field(default_factory=dict)
    val_batches: int = 2
    max_items: Optional[int] = None
    cache_dir: Optional[str] = None
    encode_batch_size: int = 32

    def validate(self, path: str) -> None:
        _positive(self, path, ("image_size", "batch_size", "val_batches", "encode_batch_size"))
        _positive(self, path, ("num_workers",), allow_zero=True)
        _positive(self, path, ("max_items",), optional=True)
        for name in ("train_kwargs", "val_kwargs"):
            if not isinstance(getattr(self, name), Mapping):
                raise ConfigError(f"{path}.{name}: expected a mapping, got {getattr(self, name)!r}")
        self.train = str(self.train)


@dataclass
class PriorDataConfig(DataConfig):
    """Stage-2 ``data``: the keys of :class:`DataConfig` with a default batch of 16 token
    sequences (stage 1's 4 images is a small batch for a prior; 16 is the demo prior's
    batch: held-out perplexity 195.5 vs 193.2 at 32 in half the CPU time,
    docs/benchmarks.md "Demo quality", round 3)."""

    batch_size: int = 16


@dataclass
class OptimConfig(Section):
    """``optim``: keys both stages share.

    Attributes:
        learning_rate: the learning rate as is (stage 1: None applies the original rule).
        betas: Adam/AdamW betas.
        weight_decay: weight decay (stage 2: on the prior's ``parameter_groups``).
        warmup_steps: linear learning-rate warm-up over this many steps (0: none).
        lr_decay: ``"none"`` (constant after warm-up) or ``"cosine"`` (cosine decay from
            the end of warm-up to 0 at ``train.steps``).
        grad_clip: max global gradient norm (None: no clipping).
        bf16: bfloat16 autocast for the forward passes: true, false or ``"auto"`` (on
            where bf16 is native: a CUDA GPU that supports it, a CPU with AVX512-BF16/AMX;
            the run stores the choice made).
        fused: Adam kernels: ``auto`` (fused on CUDA, foreach on CPU) or false.
    """

    section: ClassVar[str] = "optim"

    learning_rate: Optional[float] = None
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "none"
    grad_clip: Optional[float] = None
    bf16: Any = False
    fused: Any = "auto"

    def validate(self, path: str) -> None:
        betas = self.betas
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"{path}.betas: expected two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        _positive(self, path, ("learning_rate", "grad_clip"), optional=True, integer=False)
        _positive(self, path, ("weight_decay",), allow_zero=True, integer=False)
        _positive(self, path, ("warmup_steps",), allow_zero=True)
        if self.bf16 not in (True, False, "auto"):
            raise ConfigError(f"{path}.bf16: expected true, false or 'auto', got {self.bf16!r}")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"{path}.lr_decay: expected one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")


#: Learning-rate decays of ``optim.lr_decay``.
LR_DECAYS = ("none", "cosine")


@dataclass
class TrainConfig(Section):
    """``train``: keys both stages share (the loop of :mod:`.trainer`).

    Attributes:
        out: the run directory (``checkpoints/``, ``metrics.jsonl``, ``images/``).
        steps: optimizer steps.
        seed: seeds weights, data order and every random transform.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        log_every: steps between metric records (and divergence checks).
        image_every: steps between image grids (stage 1: reconstructions, stage 2: samples).
        ckpt_every: steps between checkpoints.
        keep_last: checkpoints kept (older ones are deleted, never the best one).
        progress: tqdm progress bar.
        compile: ``torch.compile`` the trained model (true, or a backend name).
        distributed: ``auto`` (DDP when launched by torchrun) or ``off``.
        divergence_factor: stop when a logged loss exceeds this multiple of the running
            median of the earlier logged values (None: only non-finite values stop).
        divergence_window: logged values the running median covers.
    """

    section: ClassVar[str] = "train"

    out: str = "runs/train"
    steps: int = 1000
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    image_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    progress: bool = True
    compile: Any = False
    distributed: str = "auto"
    divergence_factor: Optional[float] = 100.0
    divergence_window: int = 50

    def validate(self, path: str) -> None:
        _positive(self, path, ("steps", "log_every", "image_every", "ckpt_every", "keep_last",
                               "divergence_window"))
        _positive(self, path, ("seed",), allow_zero=True)
        if self.divergence_factor is not None:
            _checked(check_positive, self.divergence_factor, f"{path}.divergence_factor", integer=False)
            if self.divergence_factor <= 1:
                raise ConfigError(f"{path}.divergence_factor: expected a number > 1 (or null), "
                                  f"got {self.divergence_factor!r}")
        _checked(check_choice, self.distributed, f"{path}.distributed", DISTRIBUTED_MODES)
        self.out, self.device = str(self.out), str(self.device)


def _sections(cls: Any, raw: Mapping[str, Any], kinds: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Split a top-level mapping into built sections, refusing unknown section names."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown {what} config section; expected {', '.join(names)}")
    out: dict[str, Any] = {}
    for name, section_cls in kinds.items():
        out[name] = section_cls.from_dict(raw.get(name), path=name)
    return out


class RunConfig:
    """Base of both run configs: component fields (plain specs) and :data:`SECTIONS`
    (:class:`Section` dataclasses); ``to_dict`` is JSON-able and ``from_dict`` of it
    gives an equal config."""

    SECTIONS: ClassVar[dict[str, Any]] = {}
    STAGE: ClassVar[str] = ""

    @classmethod
    def _read(cls, config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(raw mapping, built sections)``; unknown top-level names are refused."""
        raw = cls._upgrade(load_config(config))
        return raw, _sections(cls, raw, cls.SECTIONS, cls.STAGE)

    @classmethod
    def _upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return raw

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Section) else copy.deepcopy(value)
        return out


# --------------------------------------------------------------------------- stage 1
@dataclass
class TokenizerOptimConfig(OptimConfig):
    """Stage-1 ``optim``: the shared keys and the original LR rule.

    Attributes:
        base_learning_rate, scale_lr: the original rule, ``lr = accumulate_grad_batches ·
            world_size · batch_size · base_learning_rate`` (used when ``learning_rate`` is None).
        accumulate_grad_batches: micro-batches per optimizer step.
        ema_decay: e.g. 0.999 keeps an EMA of the tokenizer weights (used for validation).
    """

    base_learning_rate: float = 4.5e-6
    scale_lr: bool = True
    accumulate_grad_batches: int = 1
    ema_decay: Optional[float] = None

    def validate(self, path: str) -> None:
        super().validate(path)
        _positive(self, path, ("accumulate_grad_batches",))
        _positive(self, path, ("base_learning_rate",), integer=False)


@dataclass
class TokenizerTrainSection(TrainConfig):
    """Stage-1 ``train``: the shared keys plus validation.

    Attributes:
        val_every: steps between validation passes.
        best_metric: chooses the "best" checkpoint (lower is better).
    """

    out: str = "runs/tokenizer"
    val_every: int = 500
    best_metric: Optional[str] = "val/l1"

    def validate(self, path: str) -> None:
        super().validate(path)
        _positive(self, path, ("val_every",))


#: Defaults of the stage-1 ``loss`` section (filled into a ``vqgan`` spec only).
DEFAULT_LOSS: dict[str, Any] = {"name": "vqgan", "disc_start": 0, "perceptual": {"name": "lpips"},
                                "discriminator": {"name": "patchgan"}, "gan_objective": "hinge"}


@dataclass
class TokenizerTrainConfig(RunConfig):
    """A stage-1 run: ``tokenizer`` (spec, required), ``loss``, ``data``, ``optim``, ``train``."""

    tokenizer: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_LOSS))
    data: DataConfig = field(default_factory=DataConfig)
    optim: TokenizerOptimConfig = field(default_factory=TokenizerOptimConfig)
    train: TokenizerTrainSection = field(default_factory=TokenizerTrainSection)

    SECTIONS: ClassVar[dict[str, Any]] = {"data": DataConfig, "optim": TokenizerOptimConfig,
                                          "train": TokenizerTrainSection}
    STAGE: ClassVar[str] = "stage-1"

    @classmethod
    def from_dict(cls, config: Any) -> "TokenizerTrainConfig":
        """From a dict, a YAML/JSON path or an instance (returned as a copy)."""
        if isinstance(config, cls):
            return cls.from_dict(config.to_dict())
        raw, sections = cls._read(config)
        tokenizer = raw.get("tokenizer")
        _spec(tokenizer, "tokenizer: required,")
        loss = raw.get("loss", DEFAULT_LOSS)
        _spec(loss, "loss")
        if loss.get("name", DEFAULT_LOSS["name"]) == DEFAULT_LOSS["name"]:
            loss = merge_configs(DEFAULT_LOSS, loss)  # the vqgan defaults fill a vqgan spec
        return cls(tokenizer=copy.deepcopy(dict(tokenizer)), loss=copy.deepcopy(dict(loss)), **sections)


# --------------------------------------------------------------------------- stage 2
@dataclass
class PriorOptimConfig(OptimConfig):
    """Stage-2 ``optim``: AdamW over ``prior.parameter_groups(weight_decay)``."""

    learning_rate: Optional[float] = 4.5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    grad_clip: Optional[float] = 1.0

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.learning_rate is None:
            raise ConfigError(f"{path}.learning_rate: required by stage 2 (a number > 0)")


@dataclass
class PriorTrainSection(TrainConfig):
    """Stage-2 ``train``: the shared keys plus the prior's training transforms.

    Attributes:
        pkeep: probability of keeping each input image token (original ``pkeep``).
        cfg_drop: probability of replacing a sample's condition by the null condition.
        cond_offset: where condition ids start in the prior vocabulary (None: after the
            image codes; 0: the original's shared ids).
        num_samples: samples per image grid.
    """

    out: str = "runs/prior"
    steps: int = 2000
    log_every: int = 50
    pkeep: float = 1.0
    cfg_drop: float = 0.0
    cond_offset: Optional[int] = None
    num_samples: int = 8

    def validate(self, path: str) -> None:
        super().validate(path)
        _probability(self.pkeep, f"{path}.pkeep")
        _probability(self.cfg_drop, f"{path}.cfg_drop")
        _positive(self, path, ("num_samples",), allow_zero=True)
        _positive(self, path, ("cond_offset",), allow_zero=True, optional=True)


#: The stage-2 ``prior`` section when none is given.
DEFAULT_PRIOR: dict[str, Any] = {"name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128}

#: Flat stage-2 keys of the earlier layout -> (section, key) of the current one.
LEGACY_STAGE2_KEYS: dict[str, tuple[str, str]] = {
    "out_dir": ("train", "out"), "steps": ("train", "steps"), "seed": ("train", "seed"),
    "device": ("train", "device"), "log_every": ("train", "log_every"),
    "ckpt_every": ("train", "ckpt_every"), "sample_every": ("train", "image_every"),
    "keep_last": ("train", "keep_last"), "progress": ("train", "progress"),
    "compile": ("train", "compile"), "distributed": ("train", "distributed"),
    "pkeep": ("train", "pkeep"), "cfg_drop": ("train", "cfg_drop"),
    "cond_offset": ("train", "cond_offset"), "num_samples": ("train", "num_samples"),
    "image_size": ("data", "image_size"), "data_kwargs": ("data", "train_kwargs"),
    "max_items": ("data", "max_items"), "batch_size": ("data", "batch_size"),
    "cache_dir": ("data", "cache_dir"), "encode_batch_size": ("data", "encode_batch_size"),
    "lr": ("optim", "learning_rate"), "weight_decay": ("optim", "weight_decay"),
    "betas": ("optim", "betas"), "warmup_steps": ("optim", "warmup_steps"),
    "grad_clip": ("optim", "grad_clip"), "fused": ("optim", "fused"),
}
#: Legacy keys whose value changes form: ``precision: bf16`` -> ``optim.bf16: true``;
#: ``data: photos`` (a string) -> ``data.train: photos``.
_LEGACY_SPECIAL = ("precision", "data")


def upgrade_stage2_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Move the flat keys of the earlier stage-2 layout into their sections (warns once,
    naming every moved key and its new place). Sectioned configs pass unchanged."""
    moved: list[str] = []
    out: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key in LEGACY_STAGE2_KEYS:
            section, new = LEGACY_STAGE2_KEYS[key]
            sections.setdefault(section, {})[new] = value
            moved.append(f"{key} -> {section}.{new}")
        elif key == "precision":
            _checked(check_choice, value, "precision", PRECISIONS)
            sections.setdefault("optim", {})["bf16"] = value == "bf16"
            moved.append("precision -> optim.bf16")
        elif key == "data" and not isinstance(value, Mapping):
            sections.setdefault("data", {})["train"] = value
            moved.append("data -> data.train")
        else:
            out[key] = value
    for section, values in sections.items():
        given = out.get(section) or {}
        clash = [k for k in values if k in given]
        if clash:
            raise ConfigError(f"{section}.{clash[0]}: given both as a flat key and in the "
                              f"'{section}' section; keep only {section}.{clash[0]}")
        out[section] = {**given, **values}
    if moved:
        warnings.warn("stage-2 config uses the earlier flat keys; read as " + ", ".join(moved),
                      DeprecationWarning, stacklevel=3)
    return out


@dataclass(init=False)
class PriorTrainConfig(RunConfig):
    """A stage-2 run: ``tokenizer`` (the frozen stage-1 run, checkpoint or original
    ``.ckpt``; may be None when a tokenizer object is passed to the trainer), ``prior``,
    ``conditioner``, ``sampler`` (None: the prior's ``default_sampler``), ``data``,
    ``optim``, ``train``."""

    tokenizer: Optional[str] = None
    prior: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_PRIOR))
    conditioner: dict[str, Any] = field(default_factory=lambda: {"name": "sos"})
    sampler: Optional[dict[str, Any]] = None
    data: PriorDataConfig = field(default_factory=PriorDataConfig)
    optim: PriorOptimConfig = field(default_factory=PriorOptimConfig)
    train: PriorTrainSection = field(default_factory=PriorTrainSection)

    SECTIONS: ClassVar[dict[str, Any]] = {"data": PriorDataConfig, "optim": PriorOptimConfig,
                                          "train": PriorTrainSection}
    STAGE: ClassVar[str] = "stage-2"

    def __init__(self, tokenizer: Optional[str] = None, prior: Optional[dict[str, Any]] = None,
                 conditioner: Optional[dict[str, Any]] = None, sampler: Optional[dict[str, Any]] = None,
                 data: Any = None, optim: Any = None, train: Any = None, **flat: Any) -> None:
        """Sections as built objects or mappings; the earlier flat keywords
        (``out_dir=...``, ``steps=...``, ``data="photos"``) are read as in :meth:`from_dict`."""
        built_sections = all(v is None or isinstance(v, Section) for v in (data, optim, train))
        if flat or not built_sections:
            given = {"tokenizer": tokenizer, "prior": prior, "conditioner": conditioner, "sampler": sampler,
                     "data": data, "optim": optim, "train": train}
            config = type(self).from_dict({**{k: v for k, v in given.items() if v is not None}, **flat})
            self.__dict__.update(config.__dict__)
            return
        self.tokenizer = tokenizer
        self.prior = prior if prior is not None else copy.deepcopy(DEFAULT_PRIOR)
        self.conditioner = conditioner if conditioner is not None else {"name": "sos"}
        self.sampler = sampler
        self.data = data if data is not None else PriorDataConfig()
        self.optim = optim if optim is not None else PriorOptimConfig()
        self.train = train if train is not None else PriorTrainSection()

    @classmethod
    def _upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return upgrade_stage2_config(raw)

    @classmethod
    def from_dict(cls, config: Any) -> "PriorTrainConfig":
        """From a dict (sectioned, or the earlier flat layout), a YAML/JSON path or an
        instance (returned as a copy)."""
        if isinstance(config, cls):
            return cls.from_dict(config.to_dict())
        raw, sections = cls._read(config)
        tokenizer = raw.get("tokenizer")
        specs = {"prior": raw.get("prior", DEFAULT_PRIOR), "conditioner": raw.get("conditioner", {"name": "sos"}),
                 "sampler": raw.get("sampler")}
        for name, spec in specs.items():
            _spec(spec, name, optional=name == "sampler")
        return cls(tokenizer=None if tokenizer is None else str(tokenizer),
                   **{k: copy.deepcopy(dict(v)) if v is not None else None for k, v in specs.items()},
                   **sections)

"""``Pipeline``: tokenizer + prior + sampler (+ conditioner) composed into one object.

A pipeline is built from registered parts, either as Python objects or from a config
(dict or YAML/JSON file) in the :mod:`taming_core.config` form::

    tokenizer: {name: vqgan, ch: 64, ..., quantizer: {name: vq, codebook_size: 1024}}
    prior: {name: gpt, vocab_size: 1025, block_size: 257, n_layer: 8, n_head: 8, n_embd: 512}
    sampler: {name: autoregressive, top_k: 100}   # vocab_limit defaults to the tokenizer's
    conditioner: {name: sos}        # optional; none = unconditional without prefix
    cond_offset: 1024               # optional; default: the tokenizer's vocabulary size
    grid: [16, 16]                  # default token grid for generate()

Condition tokens share the prior's vocabulary with image tokens: the conditioner's
local ids are shifted by ``cond_offset`` (the image vocabulary size by default, so
``sos`` gives the original unconditional SOS token ``n_embed``).

``save(dir)`` writes ``pipeline.json`` (the config) and ``pipeline.safetensors`` (all
weights); ``load(dir)`` rebuilds from the config and loads the weights strictly.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .config import ConfigLike, build, load_config
from .errors import CheckpointError, ConfigError, ValidationError
from .interfaces import Conditioner, Encoded, Prior, Sampler, Tokenizer
from .registry import get, spec_of
from .io import load_tensors, read_json, save_tensors, write_json
from .validation import check_tensor

CONFIG_FILE = "pipeline.json"
WEIGHTS_FILE = "pipeline.safetensors"
FORMAT_VERSION = 1
_COMPONENTS = ("tokenizer", "prior", "sampler", "conditioner")


def _spec_of(obj: Any, role: str) -> dict[str, Any]:
    """The config spec of a component (see :func:`taming_core.registry.spec_of`)."""
    spec = spec_of(obj)
    if spec is None:
        raise ConfigError(f"{role}: {type(obj).__name__} has no get_config() and was not created "
                          f"through the registry; create it with taming_core.create/build so the "
                          f"pipeline can be saved")
    spec.pop("kind", None)
    return spec


def _accepted_args(kind: str, name: str) -> set[str]:
    try:
        return set(inspect.signature(get(kind, name)).parameters)
    except (TypeError, ValueError):
        return set()


class Pipeline(nn.Module):
    """Tokenizer + prior + sampler (+ conditioner): images <-> tokens <-> samples.

    Args:
        tokenizer: a :class:`Tokenizer`.
        prior: a :class:`Prior` over image ids (and condition ids); optional for a
            tokenizer-only pipeline (``reconstruct``/``tokenize`` still work).
        sampler: a :class:`Sampler` used by :meth:`generate`.
        conditioner: turns the ``condition`` given to :meth:`generate` into tokens.
        cond_offset: added to condition ids (default ``tokenizer.vocab_size``).
        grid: default token grid (h, w) for :meth:`generate`.
    """

    def __init__(self, tokenizer: Tokenizer, prior: Optional[Prior] = None,
                 sampler: Optional[Sampler] = None, conditioner: Optional[Conditioner] = None, *,
                 cond_offset: Optional[int] = None, grid: Optional[tuple[int, int]] = None) -> None:
        super().__init__()
        for role, obj, cls in (("tokenizer", tokenizer, Tokenizer), ("prior", prior, Prior),
                               ("sampler", sampler, Sampler), ("conditioner", conditioner, Conditioner)):
            if obj is not None and not isinstance(obj, cls):
                raise ValidationError(f"Pipeline({role}): expected a {cls.__name__}, got "
                                      f"{type(obj).__name__}")
        if tokenizer is None:
            raise ValidationError("Pipeline(tokenizer): a tokenizer is required")
        self.tokenizer = tokenizer
        self.prior = prior
        self.conditioner = conditioner
        self.sampler = sampler
        self.cond_offset = tokenizer.vocab_size if cond_offset is None else int(cond_offset)
        self.grid = tuple(grid) if grid is not None else None
        #: Model-card fields (license, source, datasets, metrics...) for save_pretrained.
        self.card_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ConfigLike) -> "Pipeline":
        """Build a pipeline (untrained weights) from a dict or YAML/JSON file."""
        cfg = load_config(config)
        unknown = sorted(set(cfg) - set(_COMPONENTS) - {"cond_offset", "grid", "format_version"})
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown pipeline key; expected "
                              f"{', '.join(_COMPONENTS)}, cond_offset, grid")
        if "tokenizer" not in cfg:
            raise ConfigError("tokenizer: missing; a pipeline needs at least a tokenizer")
        specs = {k: cfg[k] for k in _COMPONENTS if cfg.get(k) is not None}
        for role, spec in specs.items():
            if not isinstance(spec, dict) or "name" not in spec:
                raise ConfigError(f"{role}: expected a component spec with a 'name' key, got {spec!r}")
        built = build({"tokenizer": specs["tokenizer"]})
        sampler_spec = specs.get("sampler")
        if sampler_spec is not None and "vocab_limit" not in sampler_spec and \
                "vocab_limit" in _accepted_args("sampler", sampler_spec["name"]):
            # never sample condition ids (SOS, class tokens) as image tokens
            sampler_spec = {**sampler_spec, "vocab_limit": built["tokenizer"].vocab_size}
            specs["sampler"] = sampler_spec
        built.update(build({k: v for k, v in specs.items() if k != "tokenizer"}))
        grid = cfg.get("grid")
        if grid is not None and (not isinstance(grid, (list, tuple)) or len(grid) != 2):
            raise ConfigError(f"grid: expected [height, width] in tokens, got {grid!r}")
        pipe = cls(built["tokenizer"], built.get("prior"), built.get("sampler"),
                   built.get("conditioner"), cond_offset=cfg.get("cond_offset"), grid=grid)
        return pipe

    def get_config(self) -> dict[str, Any]:
        """The config that rebuilds this pipeline (see module docstring)."""
        cfg: dict[str, Any] = {"format_version": FORMAT_VERSION, "cond_offset": self.cond_offset}
        for role in _COMPONENTS:
            obj = getattr(self, role)
            if obj is not None:
                cfg[role] = _spec_of(obj, role)
        if self.grid is not None:
            cfg["grid"] = list(self.grid)
        return cfg

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``pipeline.json`` + ``pipeline.safetensors`` (atomically) into ``directory``."""
        out = Path(directory)
        cfg = self.get_config()
        save_tensors(out / WEIGHTS_FILE, self.state_dict(), metadata={"format": "taming-pipeline"})
        write_json(out / CONFIG_FILE, cfg)
        return out

    @classmethod
    def load(cls, directory: Union[str, os.PathLike],
             map_location: Union[str, torch.device] = "cpu") -> "Pipeline":
        """Rebuild a pipeline saved by :meth:`save` and load its weights strictly."""
        d = Path(directory)
        if not (d / CONFIG_FILE).is_file():
            raise CheckpointError(f"{d}: not a saved pipeline (no {CONFIG_FILE}); "
                                  f"expected a directory written by Pipeline.save")
        cfg = read_json(d / CONFIG_FILE)
        if cfg.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{d / CONFIG_FILE}: format_version {cfg.get('format_version')!r} "
                                  f"is not supported (expected {FORMAT_VERSION})")
        pipe = cls.from_config(cfg)
        state = load_tensors(d / WEIGHTS_FILE, device=map_location)
        try:
            pipe.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
            detail = " ".join(str(exc).split())
            raise CheckpointError(f"{d / WEIGHTS_FILE}: weights do not match {CONFIG_FILE}: "
                                  f"{detail}") from None
        return pipe.to(map_location).eval()

    @classmethod
    def from_pretrained(cls, ref: Any, **kwargs: Any) -> "Pipeline":
        """A local directory, a Hub repo (``owner/name[@revision]``) or an original file
        (``hf://owner/name/c2i_B_256.pt``, local ``.pt``/``.ckpt``); see :mod:`taming_core.hub`."""
        from .hub import load_pipeline

        return load_pipeline(cls, ref, **kwargs)

    def save_pretrained(self, directory: Union[str, os.PathLike], **card: Any) -> Path:
        """:meth:`save` plus a model card ``README.md`` (see :func:`taming_core.hub.save_pretrained`)."""
        from .hub import save_pretrained

        return save_pretrained(self, directory, **card)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload :meth:`save_pretrained` output to a Hub repo (see :func:`taming_core.hub.push_to_hub`)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ tokens and images
    def tokenize(self, images: Tensor) -> Tensor:
        """Float B×C×H×W images in [-1, 1] -> Long B×h×w tokens."""
        return self.tokenizer.encode(images).indices

    def detokenize(self, indices: Tensor) -> Tensor:
        """Long B×h×w tokens -> images B×C×H×W clamped to [-1, 1]."""
        return self.tokenizer.decode(indices).clamp(-1, 1)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Encoded]:
        """Encode and decode ``images``; returns (reconstructions in [-1, 1], :class:`Encoded`)."""
        xrec, enc = self.tokenizer.reconstruct(images)
        return xrec.clamp(-1, 1), enc

    def condition_tokens(self, condition: Any, n: int) -> Optional[Tensor]:
        """Run the conditioner and shift ids into the prior's vocabulary.

        Returns Long n×L prefix tokens, Long n×h×w spatial tokens (spatial conditioners),
        or None without a conditioner. With ``condition=None`` the conditioner gets the
        batch size (enough for ``sos``).
        """
        if self.conditioner is None:
            if condition is not None:
                raise ValidationError("generate(condition): this pipeline has no conditioner")
            return None
        device = next(self.parameters()).device
        raw = condition if condition is not None else n
        if isinstance(raw, Tensor):
            raw = raw.to(device)
        tokens = self.conditioner(raw)
        check_tensor(tokens, "conditioner output", dtype="integer")
        if tokens.shape[0] != n:
            raise ValidationError(f"generate(condition): gives {tokens.shape[0]} conditions for n={n}")
        tokens = tokens.long().to(device) + self.cond_offset
        return tokens if getattr(self.conditioner, "spatial", False) else tokens.reshape(n, -1)

    @torch.no_grad()
    def generate(self, n: int, grid: Optional[tuple[int, int]] = None, condition: Any = None,
                 seed: Optional[int] = None, *, sampler: Optional[Sampler] = None,
                 return_tokens: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Sample ``n`` images (float n×C×H×W in [-1, 1]).

        Args:
            n: number of samples.
            grid: token grid (h, w); default the pipeline's ``grid``. Grids larger than the
                prior's window need a ``sliding_window`` sampler.
            condition: side information for the conditioner (class ids, a depth map...).
            seed: seeds the sampler's generator for reproducible samples.
            sampler: overrides the pipeline's sampler for this call.
            return_tokens: also return the Long n×h×w token grid.
        """
        if self.prior is None:
            raise ValidationError("generate: this pipeline has no prior")
        sampler = sampler or self.sampler
        if sampler is None:
            raise ValidationError("generate: this pipeline has no sampler; pass sampler=...")
        grid = tuple(grid) if grid is not None else self.grid
        if grid is None:
            raise ValidationError("generate(grid): no grid given and the pipeline has no default grid")
        if n <= 0:
            raise ValidationError(f"generate(n): expected n > 0, got {n}")
        self.eval()
        device = next(self.parameters()).device
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        cond = self.condition_tokens(condition, n)
        tokens = sampler.sample(self.prior, grid=grid, batch_size=n, condition=cond, generator=generator)
        images = self.detokenize(tokens)
        return (images, tokens) if return_tokens else images

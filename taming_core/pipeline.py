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

``pipeline.json`` also records, under ``integrity``, the SHA-256 of the weights file and
of the model part of the config (``tokenizer``, ``prior``, ``conditioner``,
``cond_offset``: what gives the weights their meaning), and under ``provenance`` which
distribution (and version) provided each component. ``load`` verifies both hashes
(``verify=False`` skips them, e.g. for huge files) and names the package to install when
a component is not registered. ``sampler`` and ``grid`` may be edited freely.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .config import ConfigLike, build, load_config
from .errors import CheckpointError, ConfigError, RegistryError, ValidationError
from .interfaces import Conditioner, Encoded, InpaintingSampler, Prior, Sampler, Tokenizer
from .registry import KINDS, available, create, get, get_entry, spec_of
from .io import file_sha256, load_tensors, read_json, save_tensors, write_json
from .validation import check_cond_offset, check_positive, check_tensor, check_token_grid, component_label

CONFIG_FILE = "pipeline.json"
WEIGHTS_FILE = "pipeline.safetensors"
FORMAT_VERSION = 1
_COMPONENTS = ("tokenizer", "prior", "sampler", "conditioner")
#: The config keys that give the weights their meaning (hashed into ``config_sha256``).
MODEL_KEYS = ("tokenizer", "prior", "conditioner", "cond_offset")
#: Keys ``save`` adds to the config that are records, not settings.
RECORD_KEYS = ("format_version", "integrity", "provenance")
def config_sha256(cfg: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the model keys of a pipeline config (:data:`MODEL_KEYS`), in
    canonical JSON (sorted keys), as it reads back from ``pipeline.json``."""
    model = json.loads(json.dumps({k: cfg.get(k) for k in MODEL_KEYS}, default=str))
    text = json.dumps(model, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _walk_specs(spec: Any, kind: str, path: str) -> list[tuple[str, str, str]]:
    """(path, kind, name) of a component spec and of the specs nested in it."""
    out: list[tuple[str, str, str]] = []
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        out.append((path, kind, spec["name"]))
        for key, value in spec.items():
            if isinstance(value, Mapping) and "name" in value and ("kind" in value or key in KINDS):
                out += _walk_specs(value, str(value.get("kind", key)), f"{path}.{key}")
    return out


def provenance(cfg: Mapping[str, Any]) -> dict[str, dict[str, Optional[str]]]:
    """Which distribution (and version) provides each component of a pipeline config,
    keyed by the component's config path (``tokenizer.quantizer``...)."""
    out: dict[str, dict[str, Optional[str]]] = {}
    for role in _COMPONENTS:
        for path, kind, name in _walk_specs(cfg.get(role), role, role):
            if kind not in KINDS:
                continue
            try:
                entry = get_entry(kind, name)
            except RegistryError:  # built outside the registry: nothing to record
                continue
            out[path] = {"kind": kind, "name": name, "distribution": entry.distribution,
                         "version": entry.version, "origin": entry.origin}
    return out


def _check_provenance(cfg: Mapping[str, Any], where: Path) -> None:
    """Raise naming the package to install when a recorded component is not registered."""
    records = cfg.get("provenance")
    if not isinstance(records, Mapping):
        return
    for path, rec in records.items():
        if not isinstance(rec, Mapping) or rec.get("kind") not in KINDS:
            continue
        kind, name = rec["kind"], rec.get("name")
        if name in available(kind):
            continue
        dist, version = rec.get("distribution"), rec.get("version")
        if dist:
            hint = (f"it was provided by the distribution {dist!r} (version {version}); install it "
                    f"(pip install '{dist}=={version}'), or if it is installed with plugin autoload "
                    "off, load its plugin (TAMING_PLUGINS=... or taming --plugins ...)")
        else:
            hint = (f"it was registered by {rec.get('origin', 'a local module')} when saved; import "
                    "that module before loading")
        raise CheckpointError(f"{where}: {path}: {kind} {name!r} is not registered; {hint}")


def _spec_of(obj: Any, role: str) -> dict[str, Any]:
    """The config spec of a component (see :func:`taming_core.registry.spec_of`)."""
    spec = spec_of(obj)
    if spec is None:
        raise ConfigError(f"{role}: {type(obj).__name__} has no get_config() and was not created "
                          f"through the registry; create it with taming_core.create/build so the "
                          f"pipeline can be saved")
    spec.pop("kind", None)
    # Tensors (a sampler's guidance null_condition) are stored as nested lists in JSON.
    return {k: v.tolist() if isinstance(v, Tensor) else v for k, v in spec.items()}


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
        self.cond_offset = tokenizer.vocab_size if cond_offset is None else cond_offset
        if conditioner is not None:
            check_cond_offset(self.cond_offset, tokenizer.vocab_size, conditioner.vocab_size,
                              "Pipeline(cond_offset)",
                              prior.vocab_size if prior is not None else None)
        else:  # unused without a conditioner
            check_positive(self.cond_offset, "Pipeline(cond_offset)", allow_zero=True)
        self.cond_offset = int(self.cond_offset)
        self.grid = tuple(grid) if grid is not None else None
        #: Model-card fields (license, source, datasets, metrics...) for save_pretrained.
        self.card_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ConfigLike) -> "Pipeline":
        """Build a pipeline (untrained weights) from a dict or YAML/JSON file."""
        cfg = load_config(config)
        unknown = sorted(set(cfg) - set(_COMPONENTS) - {"cond_offset", "grid"} - set(RECORD_KEYS))
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
        """Write ``pipeline.json`` + ``pipeline.safetensors`` (atomically) into ``directory``;
        the config records the hashes of the weights and of the model config, and which
        distribution provides each component."""
        out = Path(directory)
        cfg = self.get_config()
        save_tensors(out / WEIGHTS_FILE, self.state_dict(), metadata={"format": "taming-pipeline"})
        cfg["provenance"] = provenance(cfg)
        cfg["integrity"] = {"config_sha256": config_sha256(cfg),
                            "weights_sha256": file_sha256(out / WEIGHTS_FILE)}
        write_json(out / CONFIG_FILE, cfg)
        return out

    @classmethod
    def load(cls, directory: Union[str, os.PathLike],
             map_location: Union[str, torch.device] = "cpu", *, verify: bool = True) -> "Pipeline":
        """Rebuild a pipeline saved by :meth:`save` and load its weights strictly.

        With ``verify`` (default) the SHA-256 of ``pipeline.safetensors`` and of the model
        part of ``pipeline.json`` must match what :meth:`save` recorded (flipped bytes in the
        weights, or an edited ``n_head``/``cond_offset`` that keeps tensor shapes, are
        refused); ``verify=False`` skips both (hashing reads the whole file once).
        """
        d = Path(directory)
        if not (d / CONFIG_FILE).is_file():
            raise CheckpointError(f"{d}: not a saved pipeline (no {CONFIG_FILE}); "
                                  f"expected a directory written by Pipeline.save")
        cfg = read_json(d / CONFIG_FILE)
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{d / CONFIG_FILE}: expected a JSON object (the pipeline config) "
                                  f"at the top level, got {type(cfg).__name__}")
        if cfg.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{d / CONFIG_FILE}: format_version {cfg.get('format_version')!r} "
                                  f"is not supported (expected {FORMAT_VERSION})")
        integrity = cfg.get("integrity")
        if integrity is not None and not isinstance(integrity, dict):
            raise CheckpointError(f"{d / CONFIG_FILE}: 'integrity' must be an object, got "
                                  f"{type(integrity).__name__}")
        if verify and integrity:
            want = integrity.get("config_sha256")
            if want is not None and want != config_sha256(cfg):
                raise CheckpointError(
                    f"{d / CONFIG_FILE}: the model config ({', '.join(MODEL_KEYS)}) differs from "
                    "the one saved with the weights (config_sha256 mismatch: edited after saving?); "
                    "restore it, or pass verify=False to load it anyway")
            want = integrity.get("weights_sha256")
            if want is not None and (d / WEIGHTS_FILE).is_file():
                got = file_sha256(d / WEIGHTS_FILE)
                if got != want:
                    raise CheckpointError(
                        f"{d / WEIGHTS_FILE}: SHA-256 {got[:16]}... does not match the "
                        f"{want[:16]}... recorded in {CONFIG_FILE} (the file changed or is corrupt); "
                        "pass verify=False to skip the check")
        _check_provenance(cfg, d / CONFIG_FILE)
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
    def _images(self, images: Tensor, name: str) -> Tensor:
        """Entry check of images: float B×C×H×W, finite (NaN pixels are the images' fault,
        not the quantizer's), cast to the tokenizer's dtype (float64/fp16/bf16 inputs)."""
        check_tensor(images, name, dims=("B", "C", "H", "W"), dtype="float", finite=True)
        for p in self.tokenizer.parameters():
            return images.to(p.dtype) if p.dtype.is_floating_point else images
        return images

    def tokenize(self, images: Tensor) -> Tensor:
        """Float B×C×H×W images in [-1, 1] -> Long B×h×w tokens."""
        return self.tokenizer.encode(self._images(images, "tokenize(images)")).indices

    def detokenize(self, indices: Tensor) -> Tensor:
        """Long B×h×w tokens -> images B×C×H×W clamped to [-1, 1]."""
        return self.tokenizer.decode(indices).clamp(-1, 1)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Encoded]:
        """Encode and decode ``images``; returns (reconstructions in [-1, 1], :class:`Encoded`)."""
        xrec, enc = self.tokenizer.reconstruct(self._images(images, "reconstruct(images)"))
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
        if condition is not None and not self.conditioner.takes_condition:
            raise ValidationError(
                f"generate(condition): the pipeline's {component_label(self.conditioner, 'conditioner')} "
                "takes no condition (it only needs the batch size); drop the condition, or use a "
                "pipeline trained with a conditioner such as class_label")
        device = next(self.parameters()).device
        raw = condition if condition is not None else n
        if isinstance(raw, Tensor):
            raw = raw.to(device)
        tokens = self.conditioner(raw)
        check_tensor(tokens, "conditioner output", dtype="integer")
        if tokens.shape[0] != n:
            raise ValidationError(f"generate(condition): gives {tokens.shape[0]} conditions for n={n}")
        tokens = tokens.long().to(device) + self.cond_offset
        return tokens if self.conditioner.spatial else tokens.reshape(n, -1)

    def default_sampler(self) -> Sampler:
        """The pipeline's sampler, or else the prior's ``default_sampler`` (restricted to
        image ids), built for this call."""
        if self.sampler is not None:
            return self.sampler
        if self.prior is None:
            raise ValidationError("generate: this pipeline has no prior")
        name = self.prior.default_sampler
        kwargs = {"vocab_limit": self.tokenizer.vocab_size} if "vocab_limit" in _accepted_args(
            "sampler", name) else {}
        return create("sampler", name, **kwargs)

    @torch.no_grad()
    def generate(self, n: int, grid: Optional[tuple[int, int]] = None, condition: Any = None,
                 seed: Optional[int] = None, *, sampler: Optional[Sampler] = None,
                 return_tokens: bool = False, init_tokens: Optional[Tensor] = None,
                 known: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Sample ``n`` images (float n×C×H×W in [-1, 1]).

        Args:
            n: number of samples.
            grid: token grid (h, w); default the pipeline's ``grid`` (or that of
                ``init_tokens``). Grids larger than the prior's window need a
                ``sliding_window`` sampler.
            condition: side information for the conditioner (class ids, a depth map...).
            seed: seeds the sampler's generator for reproducible samples.
            sampler: overrides the pipeline's sampler for this call (default: the
                pipeline's, else the prior's ``default_sampler``).
            return_tokens: also return the Long n×h×w token grid.
            init_tokens, known: inpainting/outpainting: Long n×h×w (or 1×h×w) tokens and a
                Bool h×w or n×h×w mask of those to keep exactly; the sampler must be an
                :class:`InpaintingSampler` (e.g. ``maskgit``).
        """
        if self.prior is None:
            raise ValidationError("generate: this pipeline has no prior")
        sampler = sampler or self.default_sampler()
        if (init_tokens is None) != (known is None):
            raise ValidationError("generate(init_tokens, known): give both or neither")
        if init_tokens is not None:
            check_tensor(init_tokens, "generate(init_tokens)", dims=(None, "h", "w"), dtype="long")
            grid = grid if grid is not None else tuple(init_tokens.shape[1:])
            if not isinstance(sampler, InpaintingSampler):
                raise ValidationError(f"generate(init_tokens): the {type(sampler).__name__} cannot fill in "
                                      f"tokens; use an InpaintingSampler such as maskgit")
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
        if init_tokens is not None:
            assert isinstance(sampler, InpaintingSampler)
            if tuple(init_tokens.shape[1:]) != tuple(grid):
                raise ValidationError(f"generate(init_tokens): expected the grid {grid[0]}×{grid[1]}, "
                                      f"got shape {tuple(init_tokens.shape)}")
            init = init_tokens.to(device).expand(n, *grid) if init_tokens.shape[0] == 1 else init_tokens
            if init.shape[0] != n:
                raise ValidationError(f"generate(init_tokens): expected a batch of {n} (or 1), got "
                                      f"{init.shape[0]}")
            tokens = sampler.inpaint(self.prior, init.to(device), known.to(device),  # type: ignore[union-attr]
                                     condition=cond, generator=generator)
        else:
            tokens = sampler.sample(self.prior, grid=grid, batch_size=n, condition=cond, generator=generator)
        check_token_grid(tokens, n, grid, sampler, "sampler")
        check_tensor(tokens, f"{component_label(sampler, 'sampler')} output", dtype="integer",
                     value_range=(0, self.tokenizer.vocab_size - 1))
        images = self.detokenize(tokens.long())
        return (images, tokens) if return_tokens else images

    @torch.no_grad()
    def edit(self, images: Tensor, known: Tensor, condition: Any = None, seed: Optional[int] = None,
             *, sampler: Optional[Sampler] = None,
             return_tokens: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Regenerate a region of ``images`` (float B×C×H×W in [-1, 1]): encode them, keep
        the tokens where ``known`` (Bool h×w or B×h×w over the token grid) is True and
        sample the others with an :class:`InpaintingSampler` (e.g. ``maskgit``)."""
        self.eval()
        tokens = self.tokenize(images)
        return self.generate(tokens.shape[0], tuple(tokens.shape[1:]), condition, seed, sampler=sampler,
                             return_tokens=return_tokens, init_tokens=tokens, known=known)

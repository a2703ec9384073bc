"""Build components from plain dict / YAML / JSON configs.

Config form
-----------
A *component spec* is a mapping with a ``name`` key (a registered name) and the
keyword arguments of that component. Its kind is the key it sits under, when that key
is a registry kind (``quantizer``, ``tokenizer``, ``prior``, ``discriminator``,
``sampler``, ``perceptual``, ``gan``, ``autoencoder_loss``, ``conditioner``) or the alias
``loss`` (any of the three loss kinds); anywhere else, give the kind explicitly
with a ``kind`` key. Specs nest: an argument that is itself a spec is built first::

    tokenizer:
      name: vqgan
      quantizer: {name: ema, codebook_size: 1024}
      discriminator: {name: patchgan}     # built as a discriminator
      perceptual: {kind: perceptual, name: lpips}

:func:`build` accepts either one spec (it must then say its ``kind``) or a mapping
from kinds to specs, and returns the built object or a dict of them. Mappings that
have no ``name`` (or sit under a non-kind key without ``kind``) are passed through
as plain dicts; lists are walked element by element. Every error names the path of
the offending key, e.g. ``tokenizer.quantizer.codebook_size``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError, RegistryError
from .registry import KIND_ALIASES, KINDS, check_arguments, get_entry, is_kind, remember_spec

ConfigLike = Union[Mapping[str, Any], str, os.PathLike]


def load_config(source: ConfigLike) -> dict[str, Any]:
    """Read a YAML or JSON file (or copy a mapping) into a plain dict."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the config "
                          "as UTF-8") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)


def merge_configs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``.

    Nested mappings merge key by key, except component specs (mappings with ``name``):
    a spec in ``override`` replaces the base one whole, since its arguments belong to
    another component.
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and "name" not in value:
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_spec(value: Any, key: str) -> bool:
    return isinstance(value, Mapping) and "name" in value and ("kind" in value or is_kind(key))


def _build_spec(spec: Mapping[str, Any], kind: str, path: str) -> Any:
    name = spec["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected a registered name (string), got {name!r}")
    try:
        entry = get_entry(kind, name)
    except RegistryError as exc:
        raise ConfigError(f"{path}.name: {exc}") from None
    obj, kind = entry.obj, entry.kind  # an alias kind (``loss``) resolves to the concrete one
    kwargs = {k: _build_value(v, k, f"{path}.{k}") for k, v in spec.items() if k not in ("name", "kind")}
    check_arguments(obj, kwargs, path)
    try:
        built = obj(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {kind} {name!r} rejected its arguments: {exc}") from exc
    return remember_spec(built, kind, name, kwargs)


def _build_value(value: Any, key: str, path: str) -> Any:
    if _is_spec(value, key):
        kind = value.get("kind", key)
        if not is_kind(kind):
            raise ConfigError(f"{path}.kind: unknown component kind {kind!r}; expected one of "
                              f"{', '.join(KINDS + tuple(KIND_ALIASES))}")
        return _build_spec(value, kind, path)
    if isinstance(value, Mapping):
        return {k: _build_value(v, k, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_build_value(v, key, f"{path}[{i}]") for i, v in enumerate(value))
    return value


def build(config: ConfigLike) -> Any:
    """Build components from a config (see module docstring for the form).

    ``{"kind": "quantizer", "name": "vq", ...}`` returns the quantizer;
    ``{"tokenizer": {...}, "prior": {...}}`` returns ``{"tokenizer": obj, "prior": obj}``.
    """
    cfg = load_config(config)
    if "name" in cfg:
        kind = cfg.get("kind")
        if kind is None:
            raise ConfigError("<root>: a top-level component needs a 'kind' key "
                              f"(one of {', '.join(KINDS)}), or nest it under its kind")
        if not is_kind(kind):
            raise ConfigError(f"<root>.kind: unknown component kind {kind!r}; expected one of "
                              f"{', '.join(KINDS + tuple(KIND_ALIASES))}")
        return _build_spec(cfg, kind, "<root>")
    return {k: _build_value(v, k, k) for k, v in cfg.items()}

"""The registry of named component implementations.

Modelled on timm: :func:`register` is a decorator, :func:`create` the one front door,
:func:`available` lists names with shell-style wildcards. Third-party packages add
components through entry points (:mod:`taming_core.plugins`); those are discovered
lazily on the first look-up.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib.metadata
import inspect
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from .errors import ConfigError, RegistryError

#: Component kinds known to the registry. The three loss kinds are split by what their
#: consumer needs: ``perceptual`` (:class:`~taming_core.PerceptualLoss`, a distance between
#: images), ``gan`` (:class:`~taming_core.GANObjective`, on discriminator logits) and
#: ``autoencoder_loss`` (:class:`~taming_core.AutoencoderLoss`, the stage-1 objective).
KINDS: tuple[str, ...] = (
    "quantizer", "tokenizer", "prior", "discriminator", "sampler", "perceptual", "gan",
    "autoencoder_loss", "conditioner", "checkpoint_format",
)

#: Alias kinds: a name that stands for several kinds. ``loss`` (the one kind of older
#: releases) resolves a name across the three loss kinds, so ``create("loss", "lpips")``,
#: config keys ``loss:``/``kind: loss`` and ``taming plugins --kind loss`` keep working.
KIND_ALIASES: dict[str, tuple[str, ...]] = {"loss": ("perceptual", "gan", "autoencoder_loss")}

BUILTIN_DISTRIBUTION = "taming"

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered implementation."""

    kind: str
    name: str
    obj: Callable[..., Any]
    origin: str          # "built-in", "<distribution> <version>" or "local (<module>)"
    description: str     # first line of the docstring
    distribution: Optional[str] = None  # the installed distribution providing it (None: local)
    version: Optional[str] = None       # that distribution's version


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


def _closest(word: str, options: list[str]) -> str:
    matches = difflib.get_close_matches(word, options, n=3, cutoff=0.4)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
    return "registered: " + (", ".join(sorted(options)) if options else "none")


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY and kind not in KIND_ALIASES:
        raise RegistryError(f"unknown component kind {kind!r}; "
                            f"{_closest(kind, list(KINDS) + list(KIND_ALIASES))}")


def is_kind(kind: object) -> bool:
    """True for a registry kind or an alias kind such as ``loss``."""
    return isinstance(kind, str) and (kind in KINDS or kind in KIND_ALIASES)


def _kinds_of(kind: str) -> tuple[str, ...]:
    """The concrete kinds ``kind`` stands for (itself unless it is an alias)."""
    return KIND_ALIASES.get(kind, (kind,))


def _loss_kind_of(obj: Any) -> Optional[str]:
    """The loss kind a class declares by its base (for ``register("loss", ...)``)."""
    from .interfaces import AutoencoderLoss, GANObjective, PerceptualLoss  # interfaces import torch

    for base, kind in ((PerceptualLoss, "perceptual"), (GANObjective, "gan"),
                       (AutoencoderLoss, "autoencoder_loss")):
        if isinstance(obj, type) and issubclass(obj, base):
            return kind
    return None


@functools.lru_cache(maxsize=None)
def _distribution_of_package(top: str) -> Optional[str]:
    """The distribution that installs top-level package ``top`` (None for scripts/tests).

    Cached per package: scanning installed distributions is slow, and the answer for a
    package cannot change once it has been imported.
    """
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else None


def _provenance_of(obj: Callable[..., Any]) -> tuple[str, Optional[str], Optional[str]]:
    """(origin text, distribution, version) of ``obj``, from its top-level package."""
    module = getattr(obj, "__module__", None) or "__main__"
    dist = _distribution_of_package(module.split(".")[0])
    if dist is None:
        return f"local ({module})", None, None
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - racy uninstall
        version = "?"
    try:  # the project's own spelling (packages_distributions may give a normalised one)
        dist = importlib.metadata.distribution(dist).metadata["Name"] or dist
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        pass
    if dist == BUILTIN_DISTRIBUTION:
        return "built-in", dist, version
    return f"{dist} {version}", dist, version


def _origin_of(obj: Callable[..., Any]) -> str:
    """Name the distribution that provides ``obj`` (from its top-level package)."""
    return _provenance_of(obj)[0]


def _same_object(a: Any, b: Any) -> bool:
    """True for the same object, or the same definition imported again (module reload)."""
    if a is b:
        return True
    key = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a)[1] is not None


def register(kind: str, name: str, *, override: bool = False,
             description: Optional[str] = None) -> Callable[[T], T]:
    """Decorator registering a class or factory function under ``kind``/``name``.

    Registering a different object under a taken name raises unless ``override=True``.
    """
    _check_kind(kind)
    if not isinstance(name, str) or not name:
        raise RegistryError(f"register({kind!r}, ...): the name must be a non-empty string, got {name!r}")

    def decorator(obj: T) -> T:
        if not callable(obj):
            raise RegistryError(f"register({kind!r}, {name!r}): expected a class or function, got {obj!r}")
        if kind in KIND_ALIASES:
            return register(_resolve_alias_registration(kind, name, obj), name, override=override,
                            description=description)(obj)
        existing = _REGISTRY[kind].get(name)
        origin, dist, version = _provenance_of(obj)
        if existing is not None and not _same_object(existing.obj, obj):
            if not override:
                raise RegistryError(
                    f"{kind} {name!r} is already registered by {existing.obj.__module__}."
                    f"{getattr(existing.obj, '__qualname__', existing.obj)} ({existing.origin}); "
                    f"pass override=True to replace it")
            if (existing.distribution or existing.origin) != (dist or origin):  # another provider
                warnings.warn(f"{kind} {name!r} of {existing.origin} is replaced by "
                              f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)} "
                              f"of {origin} (override=True)", RuntimeWarning, stacklevel=2)
        doc = description or (inspect.getdoc(obj) or "").strip().splitlines()
        desc = doc if isinstance(doc, str) else (doc[0] if doc else "")
        _REGISTRY[kind][name] = Entry(kind, name, obj, origin, desc, dist, version)  # type: ignore[arg-type]
        return obj

    return decorator


def _resolve_alias_registration(alias: str, name: str, obj: Any) -> str:
    """The concrete kind an object registered under an alias kind belongs to."""
    kind = _loss_kind_of(obj)
    if kind is None or kind not in KIND_ALIASES[alias]:
        raise RegistryError(
            f"register({alias!r}, {name!r}): {alias!r} stands for the kinds "
            f"{', '.join(KIND_ALIASES[alias])} and {getattr(obj, '__name__', obj)!r} subclasses none "
            f"of PerceptualLoss, GANObjective, AutoencoderLoss; register it under the kind its "
            f"consumer needs")
    return kind


def unregister(kind: str, name: str) -> None:
    """Remove an entry (mainly for tests and interactive sessions); with an alias kind,
    from whichever of its kinds holds ``name``."""
    _check_kind(kind)
    for k in _kinds_of(kind):
        _REGISTRY[k].pop(name, None)


def _snapshot() -> dict[str, dict[str, Entry]]:
    """A copy of every registration (plugin loading restores it when a plugin fails)."""
    return {kind: dict(table) for kind, table in _REGISTRY.items()}


def _restore(snapshot: dict[str, dict[str, Entry]],
             undo: Callable[[Entry], bool] = lambda entry: True) -> list[str]:
    """Undo the registrations made since ``snapshot`` for which ``undo(entry)`` is true
    (new entries are removed, replaced ones put back); returns their ``kind/name``."""
    undone: list[str] = []
    for kind, table in _REGISTRY.items():
        before = snapshot.get(kind, {})
        for name, entry in list(table.items()):
            if before.get(name) is not entry and undo(entry):
                undone.append(f"{kind}/{name}")
                if name in before:
                    table[name] = before[name]
                else:
                    del table[name]
    return undone


def _ensure_plugins() -> None:
    from . import plugins  # local import: plugins imports this module

    plugins.autoload()


def get_entry(kind: str, name: str) -> Entry:
    """Return the :class:`Entry` for ``kind``/``name`` or raise with the closest names."""
    _check_kind(kind)
    _ensure_plugins()
    found = [_REGISTRY[k][name] for k in _kinds_of(kind) if name in _REGISTRY[k]]
    if len(found) == 1:
        return found[0]
    if found:
        raise RegistryError(f"{kind} {name!r} is ambiguous: registered as "
                            f"{' and '.join(e.kind for e in found)}; ask for one of these kinds")
    known = [n for k in _kinds_of(kind) for n in _REGISTRY[k]]
    raise RegistryError(f"unknown {kind} {name!r}; {_closest(name, known)}")


def get(kind: str, name: str) -> Callable[..., Any]:
    """The registered class or factory (not instantiated)."""
    return get_entry(kind, name).obj


SPEC_ATTR = "_taming_spec"


def _describe(value: Any) -> Any:
    """Replace built components inside ``value`` by their specs (JSON-able where possible)."""
    nested = spec_of(value)
    if nested is not None:
        return nested
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value


def remember_spec(obj: Any, kind: str, name: str, kwargs: dict[str, Any]) -> Any:
    """Record on ``obj`` the spec it was built from, so it can be saved and rebuilt."""
    try:
        setattr(obj, SPEC_ATTR, {"kind": kind, "name": name, **_describe(kwargs)})
    except (AttributeError, TypeError):  # immutable results (tuples, builtins) carry no spec
        pass
    return obj


def spec_of(obj: Any) -> Optional[dict[str, Any]]:
    """The config spec of a component: its ``get_config()``, else the spec it was created
    from by :func:`create`/:func:`taming_core.build`, else None."""
    get_config = getattr(obj, "get_config", None)
    if callable(get_config) and not isinstance(obj, type):
        return dict(get_config())
    spec = getattr(obj, SPEC_ATTR, None)
    return dict(spec) if isinstance(spec, dict) else None


_SEQUENCE_HINT = re.compile(r"\b(Sequence|MutableSequence|Collection|Iterable|list|List|tuple|Tuple)\b")
_STRING_HINT = re.compile(r"\b(str|Any|AnyStr|object)\b")


def _wants_sequence(annotation: Any) -> bool:
    """True when a parameter annotation asks for a list/tuple/sequence and never a string."""
    if annotation is inspect.Parameter.empty:
        return False
    text = annotation if isinstance(annotation, str) else \
        (annotation.__name__ if isinstance(annotation, type) else repr(annotation))
    return bool(_SEQUENCE_HINT.search(text)) and not _STRING_HINT.search(text)


def check_arguments(obj: Callable[..., Any], kwargs: Mapping[str, Any], path: str) -> None:
    """Raise :class:`ConfigError` for keyword arguments ``obj`` does not accept, required
    ones that are missing, and strings given where the signature asks for a sequence
    (``attn_resolutions: "16"`` would otherwise become ``[1, 6]``). ``path`` prefixes the
    message (a config key path, or the kind for :func:`create`)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without signatures: let the call decide
        return
    params = sig.parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for key, value in kwargs.items():
        param = params.get(key)
        if isinstance(value, (str, bytes)) and param is not None and param.kind in named \
                and _wants_sequence(param.annotation):
            raise ConfigError(f"{path}.{key}: expected a list, got the string {value!r} "
                              f"(write [{value}] for a one-element list)")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in named]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown argument; {getattr(obj, '__name__', obj)} "
                          f"accepts {', '.join(accepted) or 'no arguments'}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind in named and n not in kwargs]
    if missing:
        raise ConfigError(f"{path}: missing required argument {missing[0]!r}")


def accepted_arguments(kind: str, name: str) -> Optional[list[str]]:
    """The keyword arguments ``kind``/``name`` accepts, in signature order, or None when it
    takes ``**kwargs`` or has no inspectable signature (anything may then be passed)."""
    try:
        params = inspect.signature(get(kind, name)).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Instantiate the component registered as ``kind``/``name`` with ``kwargs``.

    Unknown or missing arguments raise the same :class:`ConfigError` as
    :func:`taming_core.build` (the path is the kind). The result remembers its spec
    (see :func:`spec_of`), under its concrete kind when ``kind`` is an alias.
    """
    entry = get_entry(kind, name)
    check_arguments(entry.obj, kwargs, kind)
    return remember_spec(entry.obj(**kwargs), entry.kind, name, kwargs)


def create_from_spec(kind: str, spec: Mapping[str, Any], **overrides: Any) -> Any:
    """:func:`create` from a spec mapping ``{"name": ..., **kwargs}`` (a ``kind`` key in
    the spec is ignored); ``overrides`` win over the spec's arguments."""
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "kind")}
    return create(kind, spec["name"], **{**kwargs, **overrides})


def available(kind: Optional[str] = None, pattern: str = "*") -> list[str]:
    """Sorted registered names matching ``pattern`` (fnmatch wildcards).

    With ``kind=None`` every kind is searched and names come as ``"kind/name"``; an alias
    kind (``loss``) lists the names of all the kinds it stands for.
    """
    if kind is not None:
        _check_kind(kind)
    _ensure_plugins()
    kinds = list(_kinds_of(kind)) if kind is not None else list(KINDS)
    out: list[str] = []
    for k in kinds:
        for name in _REGISTRY[k]:
            if fnmatch.fnmatchcase(name, pattern):
                out.append(name if kind is not None else f"{k}/{name}")
    return sorted(out)


def entries(kind: Optional[str] = None, pattern: str = "*") -> list[Entry]:
    """Like :func:`available` but returns :class:`Entry` records (origin, description)."""
    if kind is not None:
        _check_kind(kind)
    _ensure_plugins()
    kinds = list(_kinds_of(kind)) if kind is not None else list(KINDS)
    return [e for k in kinds for n, e in sorted(_REGISTRY[k].items())
            if fnmatch.fnmatchcase(n, pattern)]

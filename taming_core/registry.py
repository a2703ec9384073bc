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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from .errors import RegistryError

#: Component kinds known to the registry.
KINDS: tuple[str, ...] = (
    "quantizer", "tokenizer", "prior", "discriminator", "sampler", "loss", "conditioner",
    "checkpoint_format",
)

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


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


def _closest(word: str, options: list[str]) -> str:
    matches = difflib.get_close_matches(word, options, n=3, cutoff=0.4)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
    return "registered: " + (", ".join(sorted(options)) if options else "none")


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown component kind {kind!r}; {_closest(kind, list(KINDS))}")


@functools.lru_cache(maxsize=None)
def _distribution_of_package(top: str) -> Optional[str]:
    """The distribution that installs top-level package ``top`` (None for scripts/tests).

    Cached per package: scanning installed distributions is slow, and the answer for a
    package cannot change once it has been imported.
    """
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else None


def _origin_of(obj: Callable[..., Any]) -> str:
    """Name the distribution that provides ``obj`` (from its top-level package)."""
    module = getattr(obj, "__module__", None) or "__main__"
    dist = _distribution_of_package(module.split(".")[0])
    if dist is None:
        return f"local ({module})"
    if dist == BUILTIN_DISTRIBUTION:
        return "built-in"
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - racy uninstall
        version = "?"
    return f"{dist} {version}"


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
        existing = _REGISTRY[kind].get(name)
        if existing is not None and not override and not _same_object(existing.obj, obj):
            raise RegistryError(
                f"{kind} {name!r} is already registered by {existing.obj.__module__}."
                f"{getattr(existing.obj, '__qualname__', existing.obj)} ({existing.origin}); "
                f"pass override=True to replace it")
        doc = description or (inspect.getdoc(obj) or "").strip().splitlines()
        desc = doc if isinstance(doc, str) else (doc[0] if doc else "")
        _REGISTRY[kind][name] = Entry(kind, name, obj, _origin_of(obj), desc)  # type: ignore[arg-type]
        return obj

    return decorator


def unregister(kind: str, name: str) -> None:
    """Remove an entry (mainly for tests and interactive sessions)."""
    _check_kind(kind)
    _REGISTRY[kind].pop(name, None)


def _ensure_plugins() -> None:
    from . import plugins  # local import: plugins imports this module

    plugins.autoload()


def get_entry(kind: str, name: str) -> Entry:
    """Return the :class:`Entry` for ``kind``/``name`` or raise with the closest names."""
    _check_kind(kind)
    _ensure_plugins()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise RegistryError(
            f"unknown {kind} {name!r}; {_closest(name, list(_REGISTRY[kind]))}") from None


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


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Instantiate the component registered as ``kind``/``name`` with ``kwargs``.

    The result remembers its spec (see :func:`spec_of`).
    """
    return remember_spec(get(kind, name)(**kwargs), kind, name, kwargs)


def create_from_spec(kind: str, spec: Mapping[str, Any], **overrides: Any) -> Any:
    """:func:`create` from a spec mapping ``{"name": ..., **kwargs}`` (a ``kind`` key in
    the spec is ignored); ``overrides`` win over the spec's arguments."""
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "kind")}
    return create(kind, spec["name"], **{**kwargs, **overrides})


def available(kind: Optional[str] = None, pattern: str = "*") -> list[str]:
    """Sorted registered names matching ``pattern`` (fnmatch wildcards).

    With ``kind=None`` every kind is searched and names come as ``"kind/name"``.
    """
    if kind is not None:
        _check_kind(kind)
    _ensure_plugins()
    kinds = [kind] if kind is not None else list(KINDS)
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
    kinds = [kind] if kind is not None else list(KINDS)
    return [e for k in kinds for n, e in sorted(_REGISTRY[k].items())
            if fnmatch.fnmatchcase(n, pattern)]

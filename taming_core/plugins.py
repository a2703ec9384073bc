"""Discovery of plugins through the ``taming.plugins`` entry-point group.

An entry point either names a module (importing it registers components) or a
zero-argument callable (``module:function``) that is called once after loading.
The built-in components of the ``taming`` distribution are declared the same way.

Discovery runs lazily, once per process, on the first registry look-up. Set
``TAMING_DISABLE_PLUGIN_AUTOLOAD=1`` to switch it off (loading a plugin runs its
code) and call :func:`load_plugins` with the names you trust.

With autoload off, ``TAMING_PLUGINS=name,name`` names entry points to load anyway (the
CLI's ``--plugins`` does the same).

A plugin that fails is reported once as a warning and recorded in
:func:`plugin_status`; what it registered before failing is removed again (a half-loaded
plugin never stays half-registered); everything else keeps working.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import entrypoints

from . import registry
from .errors import PluginError

GROUP = "taming.plugins"
DISABLE_ENV = "TAMING_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated entry-point names loaded even when autoload is off.
PLUGINS_ENV = "TAMING_PLUGINS"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginStatus:
    """Outcome of loading one entry point."""

    name: str
    distribution: str
    version: str
    target: str          # "module" or "module:callable"
    loaded: bool
    error: Optional[str] = None


_status: dict[str, PluginStatus] = {}
_lock = threading.RLock()
_autoloaded = False


def _target(ep: entrypoints.EntryPoint) -> str:
    return ep.module_name + (f":{ep.object_name}" if ep.object_name else "")


def _dist(ep: entrypoints.EntryPoint) -> tuple[str, str]:
    """(name, version) of the distribution declaring ``ep``, as its METADATA spells them."""
    d = ep.distro
    name, version = getattr(d, "name", None) or "?", getattr(d, "version", None) or "?"
    try:  # entrypoints reports the folder name (underscored); prefer the real project name
        name = importlib.metadata.distribution(name).metadata["Name"] or name
    except importlib.metadata.PackageNotFoundError:
        pass
    return name, version


def _load_one(ep: entrypoints.EntryPoint) -> PluginStatus:
    dist, version = _dist(ep)
    before = registry._snapshot()
    top = ep.module_name.split(".")[0]
    try:
        obj = ep.load()
        if ep.object_name is not None:
            if not callable(obj):
                raise PluginError(f"{_target(ep)} is not callable")
            obj()
        status = PluginStatus(ep.name, dist, version, _target(ep), True)
        log.debug("loaded plugin %s from %s %s", ep.name, dist, version)
    except Exception as exc:  # noqa: BLE001 - isolate every plugin failure
        reason = f"{type(exc).__name__}: {exc}"
        # undo what this plugin registered (its distribution's or its package's entries);
        # packages it merely imported on the way keep their registrations
        undone = registry._restore(before, lambda e: e.distribution == dist or (
            getattr(e.obj, "__module__", "") or "").split(".")[0] == top)
        if undone:
            reason += f" (its registrations were removed: {', '.join(undone)})"
        status = PluginStatus(ep.name, dist, version, _target(ep), False, reason)
        warnings.warn(f"taming plugin {ep.name!r} ({_target(ep)}) from {dist} {version} "
                      f"failed to load: {reason}", RuntimeWarning, stacklevel=3)
    _status[ep.name] = status
    return status


def _entry_points() -> list[entrypoints.EntryPoint]:
    # get_group_all keeps every distribution's entry point, even with equal names.
    return entrypoints.get_group_all(GROUP)


def autoload() -> None:
    """Load every discovered plugin once per process, unless disabled by the env var."""
    global _autoloaded
    if _autoloaded:
        return
    with _lock:
        if _autoloaded:
            return
        _autoloaded = True  # set first: plugins may look names up while importing
        if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            log.debug("plugin autoload disabled by %s", DISABLE_ENV)
            chosen = requested_plugins(os.environ.get(PLUGINS_ENV, ""))
            if chosen:
                load_plugins(chosen)
            return
        for ep in _entry_points():
            if ep.name not in _status:
                _load_one(ep)


def load_plugins(names: Optional[Iterable[str]] = None) -> list[PluginStatus]:
    """Load the named entry points (all when ``names`` is None), ignoring the env switch.

    Raises :class:`PluginError` for a name that no installed distribution declares.
    """
    with _lock:
        eps = _entry_points()
        by_name = {ep.name: ep for ep in eps}
        wanted = list(by_name) if names is None else list(names)
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise PluginError(f"no {GROUP!r} entry point named {', '.join(map(repr, missing))}; "
                              f"installed: {', '.join(sorted(by_name)) or 'none'}")
        return [_status[n] if n in _status and _status[n].loaded else _load_one(by_name[n])
                for n in wanted]


def requested_plugins(text: str) -> list[str]:
    """Entry-point names from a comma-separated list (``TAMING_PLUGINS``, ``--plugins``)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def plugin_status() -> list[PluginStatus]:
    """Every entry point tried so far, in load order."""
    return list(_status.values())


def discovered() -> list[tuple[str, str, str]]:
    """(name, distribution, target) of every entry point installed, loaded or not."""
    return [(ep.name, _dist(ep)[0], _target(ep)) for ep in _entry_points()]


def _reset_for_tests() -> None:
    """Forget what was loaded so discovery runs again (tests only)."""
    global _autoloaded
    with _lock:
        _autoloaded = False
        _status.clear()

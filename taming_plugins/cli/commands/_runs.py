"""``--resume`` of the training commands: the run config stored with a run's checkpoint.

A resumed run takes its configuration (data, batch, architectures...) from its latest
checkpoint, so nothing has to be repeated; flags and ``--config`` keys that a resumed
run may change (``RESUMABLE``: steps, intervals, device...) are applied, and any other
given key that contradicts the stored run is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Optional

#: (section, key) a resumed run of either stage may change.
RESUMABLE = frozenset({
    ("train", "steps"), ("train", "out"), ("train", "device"), ("train", "progress"),
    ("train", "log_every"), ("train", "val_every"), ("train", "image_every"), ("train", "ckpt_every"),
    ("train", "keep_last"), ("train", "distributed"), ("train", "compile"), ("train", "num_samples"),
    ("data", "num_workers"), ("data", "cache_dir"),
})


def stored_config(out: Optional[str], which: str, pick: Callable[[Mapping[str, Any]], Any]) -> tuple[dict, Path]:
    """(the run config ``pick`` takes from the checkpoint's config.json, the checkpoint)."""
    from taming_core.errors import CheckpointError
    from taming_plugins.training.artifacts import find_checkpoint
    from taming_plugins.training.checkpoint import read_checkpoint_config

    if out is None and which == "latest":
        raise ValueError("--resume needs --out (the run directory to continue)")
    ckpt = find_checkpoint(out if which == "latest" else which)  # type: ignore[arg-type]
    if ckpt is None:
        raise CheckpointError(f"--resume: no checkpoint in {out}; start the run without --resume")
    stored = pick(read_checkpoint_config(ckpt))
    if not isinstance(stored, dict):
        raise CheckpointError(f"--resume: {ckpt} stores no run config of this command")
    return stored, ckpt


def contradicts(given: Any, stored: Any) -> bool:
    """True when ``given`` differs from ``stored``; a mapping is compared only on the keys
    it gives (a stored spec is the component's full ``get_config()``)."""
    if isinstance(given, Mapping) and isinstance(stored, Mapping):
        return any(contradicts(v, stored.get(k)) for k, v in given.items())
    if isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)):
        return list(given) != list(stored)
    return given != stored


def resumed_config(stored: Mapping[str, Any], given: Mapping[str, Any], ckpt: Path,
                   flag_of: Callable[[str, str], str], resumable: Collection = RESUMABLE) -> dict[str, Any]:
    """``stored`` with the ``given`` keys a resumed run may change; others must agree."""
    config = {k: dict(v) if isinstance(v, Mapping) else v for k, v in stored.items()}
    for section, values in given.items():
        if not isinstance(values, Mapping) or section not in ("data", "optim", "train", "loss"):
            if section in stored and contradicts(values, stored[section]):
                raise ValueError(f"{flag_of(section, '')} contradicts the run being resumed ({ckpt}); "
                                 "drop it, or train a new run in another --out")
            continue
        for key, value in values.items():
            if (section, key) in resumable:
                config.setdefault(section, {})[key] = value
            elif contradicts(value, (stored.get(section) or {}).get(key)):
                raise ValueError(f"{flag_of(section, key)} {value!r} contradicts the run being resumed "
                                 f"({section}.{key} = {(stored.get(section) or {}).get(key)!r} in {ckpt}); "
                                 "drop it, or train a new run in another --out")
    return config


def flag_namer(overrides: Mapping[str, tuple]) -> Callable[[str, str], str]:
    """``(section, key) -> "--flag"`` for the command's OVERRIDES, else ``section.key``."""
    def name(section: str, key: str) -> str:
        for dest, where in overrides.items():
            if tuple(where) == (section, key) or (where[0] is None and where[1] == section and not key):
                return "--" + dest.replace("_", "-")
        return f"{section}.{key}" if key else section
    return name

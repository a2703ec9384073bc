"""Atomic, pickle-free training checkpoints with keep-last-N and best tracking.

Layout of ``<directory>``::

    index.json                  # {"checkpoints": [...], "best": name, "best_value": v, ...}
    step_00001000/
        model.safetensors       # every module's state dict, keys "<module name>.<param>"
        train_state.safetensors # optimizer / EMA / RNG / sampler tensors (flattened)
        state.json              # step, metrics, extra, JSON skeletons of the above
        config.json             # the run config (what built the modules)

A checkpoint directory is written under a temporary name and renamed into place, and
every file inside is written atomically (:mod:`taming_core.io`), so a crash leaves the
previous checkpoints untouched. Nothing is pickled: optimizer state dicts are split by
:func:`~taming_plugins.training.state.flatten_state` into safetensors + JSON.

The manager is generic: any trainer passes its modules, optimizers and "stateful"
objects (anything with ``state_dict()``/``load_state_dict()``, e.g.
:class:`~taming_plugins.training.ema.EMA` or
:class:`~taming_plugins.training.loop.DataStream`). With ``is_main_process=False``
(non-zero ranks under DDP) :meth:`CheckpointManager.save` does nothing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import torch
from torch import nn

from taming_core.errors import CheckpointError
from taming_core.io import load_tensors, read_json, save_tensors, write_json
from taming_core.validation import check_choice, check_positive

from .state import capture_rng_state, flatten_state, restore_rng_state, unflatten_state

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
INDEX_FILE = "index.json"
#: Sub-directory of a run directory that holds its checkpoints (both trainers).
RUN_CHECKPOINTS = "checkpoints"
#: Checkpoint directories are named ``step_<zero-padded step>``.
STEP_PREFIX = "step_"
STEP_DIGITS = 8
#: Format tag stored in state.json so foreign directories are rejected.
FORMAT = "taming-checkpoint-v1"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class Checkpoint:
    """What :meth:`CheckpointManager.load` restored besides the objects it was given."""

    path: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


#: Permissions of a checkpoint directory before the umask (what mkdir would use).
_DIR_MODE = 0o777


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:0{STEP_DIGITS}d}"


def module_state_tensors(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """All state-dict tensors of ``modules`` with keys prefixed by the module name."""
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value
    return out


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> Optional[str]:
    """One phrase naming the first missing, unexpected and mis-shaped keys (None if they fit)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshaped = [k for k in expected if k in given and tuple(expected[k].shape) != tuple(given[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
            parts.append(f"{what} {keys[0]}{more}")
    if misshaped:
        k = misshaped[0]
        more = f" (+{len(misshaped) - 1} more)" if len(misshaped) > 1 else ""
        parts.append(f"mis-shaped {k}: checkpoint {tuple(given[k].shape)}, model "
                     f"{tuple(expected[k].shape)}{more}")
    return "; ".join(parts) if parts else None


def load_module_tensors(modules: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor],
                        source: Union[str, Path]) -> None:
    """Strictly load prefixed tensors (see :func:`module_state_tensors`) into ``modules``;
    a mismatch names the first missing, unexpected and mis-shaped keys."""
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sub and module.state_dict():
            raise CheckpointError(f"{source}: no weights for module {name!r} (found prefixes "
                                  f"{sorted({k.split('.')[0] for k in tensors})})")
        problem = state_dict_mismatch(module.state_dict(), sub)
        if problem is not None:
            raise CheckpointError(f"{source}: weights of {name!r} do not match the model ({problem}); "
                                  f"was it trained with a different config?")
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{source}: weights of {name!r} do not match the model "
                                  f"({first}); was it trained with a different config?") from None


class CheckpointManager:
    """Save and restore complete training states in ``directory``.

    Args:
        directory: where the step directories and ``index.json`` live.
        keep_last: how many most recent checkpoints to keep (older ones are deleted,
            except the best).
        best_metric: metric name (a key of ``metrics`` passed to :meth:`save`) that
            selects the best checkpoint; None disables best tracking.
        best_mode: ``"min"`` or ``"max"``.
        is_main_process: only the main process writes (DDP rank 0).
    """

    def __init__(self, directory: Union[str, os.PathLike], *, keep_last: int = 3,
                 best_metric: Optional[str] = None, best_mode: str = "min",
                 is_main_process: bool = True) -> None:
        check_positive(keep_last, "CheckpointManager(keep_last)")
        check_choice(best_mode, "CheckpointManager(best_mode)", ("min", "max"))
        self.directory = Path(directory)
        self.keep_last, self.best_metric, self.best_mode = keep_last, best_metric, best_mode
        self.is_main_process = is_main_process

    # ------------------------------------------------------------------ index
    def _index(self) -> dict[str, Any]:
        path = self.directory / INDEX_FILE
        if path.is_file():
            index = read_json(path)
            index["checkpoints"] = [n for n in index.get("checkpoints", [])
                                    if (self.directory / n / STATE_FILE).is_file()]
            return index
        found = sorted(p.name for p in self.directory.glob(f"{STEP_PREFIX}*")
                       if (p / STATE_FILE).is_file()) if self.directory.is_dir() else []
        return {"checkpoints": found, "best": None, "best_value": None}

    def checkpoints(self) -> list[Path]:
        """Kept checkpoint directories, oldest first."""
        return [self.directory / n for n in self._index()["checkpoints"]]

    def latest(self) -> Optional[Path]:
        found = self.checkpoints()
        return found[-1] if found else None

    def best(self) -> Optional[Path]:
        name = self._index().get("best")
        return self.directory / name if name and (self.directory / name / STATE_FILE).is_file() else None

    def _is_better(self, value: float, best: Optional[float]) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best if self.best_mode == "min" else value > best

    # ------------------------------------------------------------------ crash leftovers
    def recover(self) -> list[str]:
        """Clean up after a crash; returns what was done (one phrase per item).

        * unfinished checkpoint directories (``.step_*.tmp``, ``.step_*.old``) and index
          files (``.index.json.*.tmp``) are deleted;
        * a complete ``step_*`` directory that was moved into place but not indexed is
          added to the index (it is recovered, not redone); older ones beyond
          ``keep_last`` are rotated out as usual.
        """
        if not self.is_main_process or not self.directory.is_dir():
            return []
        done: list[str] = []
        for path in sorted(self.directory.glob(f".{STEP_PREFIX}*")):
            if path.name.endswith((".tmp", ".old")):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
                done.append(f"removed {path.name}")
        for path in sorted(self.directory.glob(f".{INDEX_FILE}.*.tmp")):
            path.unlink()
            done.append(f"removed {path.name}")
        index_path = self.directory / INDEX_FILE
        if index_path.is_file():
            indexed = set(self._index()["checkpoints"])
            found = sorted(p.name for p in self.directory.glob(f"{STEP_PREFIX}*")
                           if (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file())
            newest = max(indexed) if indexed else ""
            for name in found:
                if name not in indexed and name > newest:
                    self._update_index(name, read_json(self.directory / name / STATE_FILE).get("metrics", {}))
                    done.append(f"recovered {name}")
        for item in done:
            log.warning("%s: %s (left by an interrupted run)", self.directory, item)
        return done

    # ------------------------------------------------------------------ save
    def save(self, step: int, *, modules: Mapping[str, nn.Module],
             optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
             stateful: Optional[Mapping[str, Stateful]] = None,
             config: Optional[Mapping[str, Any]] = None, extra: Optional[Mapping[str, Any]] = None,
             metrics: Optional[Mapping[str, float]] = None, save_rng: bool = True) -> Optional[Path]:
        """Write a checkpoint for ``step``; returns its directory (None off the main process)."""
        if not self.is_main_process:
            return None
        check_positive(step, "CheckpointManager.save(step)", allow_zero=True)
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        train_state: dict[str, Any] = {
            "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
            "stateful": {k: s.state_dict() for k, s in (stateful or {}).items()},
        }
        if save_rng:
            train_state["rng"] = capture_rng_state()
        skeleton, tensors = flatten_state(train_state, "train")
        state = {"format": FORMAT, "step": int(step), "metrics": metrics,
                 "extra": dict(extra or {}), "train_state": skeleton,
                 "modules": sorted(modules), "optimizers": sorted(optimizers or {}),
                 "stateful": sorted(stateful or {})}
        self.directory.mkdir(parents=True, exist_ok=True)
        name = step_name(step)
        final = self.directory / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory))
        os.chmod(tmp, _DIR_MODE & ~_umask())  # mkdtemp makes 0700 directories
        try:
            save_tensors(tmp / MODEL_FILE, module_state_tensors(modules), metadata={"format": FORMAT})
            save_tensors(tmp / TRAIN_STATE_FILE, tensors, metadata={"format": FORMAT})
            write_json(tmp / CONFIG_FILE, dict(config or {}))
            write_json(tmp / STATE_FILE, state)
            self._move_into_place(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._update_index(name, metrics)
        log.info("saved checkpoint %s", final)
        return final

    def _move_into_place(self, tmp: Path, final: Path) -> None:
        if final.exists():  # re-saving a step (e.g. after a resume): swap, then drop the old one
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=self.directory))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)

    def _update_index(self, name: str, metrics: Mapping[str, float]) -> None:
        index = self._index()
        names = sorted(set(index["checkpoints"]) | {name})
        best, best_value = index.get("best"), index.get("best_value")
        if self.best_metric is not None and self.best_metric in metrics:
            value = metrics[self.best_metric]
            if name == best or self._is_better(value, best_value):
                best, best_value = name, value
        keep = set(names[-self.keep_last:]) | ({best} if best else set())
        removed = [n for n in names if n not in keep]
        kept = [n for n in names if n in keep]
        write_json(self.directory / INDEX_FILE,
                   {"checkpoints": kept, "best": best, "best_value": best_value,
                    "best_metric": self.best_metric, "best_mode": self.best_mode})
        for n in removed:  # only after the index no longer lists them
            shutil.rmtree(self.directory / n, ignore_errors=True)

    # ------------------------------------------------------------------ load
    def resolve(self, which: Union[str, os.PathLike]) -> Path:
        """``"latest"``, ``"best"``, a checkpoint directory, or a run directory."""
        if str(which) in ("latest", "best"):
            path = self.latest() if str(which) == "latest" else self.best()
            if path is None:
                raise CheckpointError(f"{self.directory}: no {which} checkpoint found")
            return path
        path = Path(which)
        if (path / STATE_FILE).is_file():
            return path
        latest = None
        for base in (path / RUN_CHECKPOINTS, path):  # a run directory, or a directory of step_*
            latest = CheckpointManager(base).latest() if base.is_dir() else None
            if latest is not None:
                break
        if latest is None:
            raise CheckpointError(f"{path}: not a checkpoint directory (expected {STATE_FILE} and "
                                  f"{MODEL_FILE}, or a directory of {STEP_PREFIX}* checkpoints)")
        return latest

    def load(self, which: Union[str, os.PathLike] = "latest", *, modules: Mapping[str, nn.Module],
             optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
             stateful: Optional[Mapping[str, Stateful]] = None,
             restore_rng: bool = True, optional: Collection[str] = ()) -> Checkpoint:
        """Restore ``modules``/``optimizers``/``stateful`` (and RNG states) in place.

        ``optional`` names stateful entries that checkpoints of earlier versions lack
        (they keep their current state then)."""
        path = self.resolve(which)
        state = read_json(path / STATE_FILE)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {state.get('format')!r} "
                                  f"(expected {FORMAT!r})")
        load_module_tensors(modules, load_tensors(path / MODEL_FILE), path / MODEL_FILE)
        train_state = unflatten_state(state["train_state"], load_tensors(path / TRAIN_STATE_FILE))
        for kind, objects in (("optimizers", optimizers or {}), ("stateful", stateful or {})):
            saved = train_state.get(kind, {})
            for key, obj in objects.items():
                if key not in saved and key in optional:
                    continue
                if key not in saved:
                    raise CheckpointError(f"{path}: no {kind[:-1] if kind == 'optimizers' else kind} "
                                          f"state {key!r} (saved: {sorted(saved)})")
                try:
                    obj.load_state_dict(saved[key])
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise CheckpointError(f"{path}: cannot restore {key!r}: {exc}") from None
        if restore_rng and "rng" in train_state:
            restore_rng_state(train_state["rng"])
        config = read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else {}
        return Checkpoint(path=path, step=int(state["step"]), metrics=state.get("metrics", {}),
                          extra=state.get("extra", {}), config=config)


def read_checkpoint_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The run config stored with a checkpoint (or the latest one of a run directory)."""
    resolved = CheckpointManager(path).resolve(path)
    return read_json(resolved / CONFIG_FILE)

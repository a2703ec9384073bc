"""Flags and helpers shared by the sub-commands, so every command spells them alike."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Mapping
from typing import Any, Optional, Union

from taming_plugins.training.runtime import resolve_device, seed_everything

__all__ = ["add_device_flag", "add_run_flags", "add_verify_flag", "add_seed_flag", "apply_run_overrides", "resolve_device",
           "check_plugin_options", "resume_option", "seed_everything"]

#: Where a flag's value goes in a run config: ``(section, key)``, or ``(None, key)`` for a
#: top-level key.
FlagTarget = tuple[Optional[str], str]


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")


def add_seed_flag(parser: argparse.ArgumentParser, default: int = 0) -> None:
    parser.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def add_verify_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-verify``: skip the SHA-256 checks of a saved pipeline (for huge weight files)."""
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="do not check the pipeline's recorded SHA-256 sums on load (huge files)")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """``--resume [CKPT]``, ``--overwrite`` and ``--no-progress`` of the training commands."""
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                        help="continue the run in --out from its latest checkpoint (or from CKPT)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in --out (checkpoints, metrics, images) and "
                        "start afresh")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_plugin_options(kind: str, name: str, options: Mapping[str, Any],
                         parser: Optional[argparse.ArgumentParser]) -> None:
    """Refuse flags that set options component ``kind``/``name`` does not take, e.g.
    ``--window`` for a sampler without a window or ``--temperature`` for a plugin sampler
    without one: a usage error (exit 2, one line) through ``parser``, or ValueError
    without one. Unknown names are left to the registry's own error."""
    import taming_core
    from taming_core.registry import accepted_arguments

    try:
        accepted = accepted_arguments(kind, name)
    except taming_core.RegistryError:
        return
    unknown = [k for k in options if accepted is not None and k not in accepted]
    if not unknown:
        return
    flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
    message = (f"{flags}: the {kind} {name!r} does not take "
               f"{'this option' if len(unknown) == 1 else 'these options'} "
               f"(it accepts {', '.join(accepted or []) or 'no options'})")
    if parser is None:
        raise ValueError(message)
    parser.error(message)


def apply_run_overrides(config: Mapping[str, Any], args: argparse.Namespace,
                        flags: Mapping[str, FlagTarget]) -> dict[str, Any]:
    """A copy of the run ``config`` with every flag that was given (not None) written to
    its ``(section, key)``; ``--no-progress`` sets ``train.progress: false``."""
    cfg = copy.deepcopy(dict(config))
    for dest, (section, key) in flags.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if section is None:
            cfg[key] = value
        else:
            cfg.setdefault(section, {})[key] = value
    if args.no_progress:
        cfg.setdefault("train", {})["progress"] = False
    return cfg


def resume_option(args: argparse.Namespace) -> Union[bool, str]:
    """``fit(resume=...)`` from ``--resume``: False, True (latest) or a checkpoint path."""
    return False if args.resume is None else (True if args.resume == "latest" else args.resume)

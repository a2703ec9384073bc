"""Flags and helpers shared by the sub-commands, so every command spells them alike."""

from __future__ import annotations

import argparse
import random
from typing import Any, Mapping, Optional

import numpy as np
import torch


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")


def add_seed_flag(parser: argparse.ArgumentParser, default: int = 0) -> None:
    parser.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is validated by torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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

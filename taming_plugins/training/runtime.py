"""Process set-up shared by the trainers, the demo and the CLI: device and seeding.

They live here, below the CLI (``taming_plugins.cli.common`` re-exports them for the
sub-commands), so a trainer never imports the command-line layer.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from taming_core.errors import ConfigError

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is validated by torch.

    Raises :class:`~taming_core.errors.ConfigError` (a ``ValueError``) for a name torch
    does not know or a CUDA device that is not there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

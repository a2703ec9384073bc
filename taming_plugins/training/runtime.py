"""Process set-up shared by the trainers, the demo and the CLI: device and seeding.

They live here, below the CLI (``taming_plugins.cli.common`` re-exports them for the
sub-commands), so a trainer never imports the command-line layer.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from taming_core.errors import ConfigError

__all__ = ["cpu_has_native_bf16", "resolve_bf16", "resolve_device", "seed_everything"]

#: CPU feature flags (Linux ``/proc/cpuinfo``) of native bfloat16 arithmetic.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX; read from Linux's
    ``/proc/cpuinfo``; False elsewhere). Without them torch emulates bf16 on the CPU, which
    can be slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    return False


def resolve_bf16(setting: object, device: torch.device) -> tuple[bool, str]:
    """``optim.bf16`` -> (use bfloat16 autocast, why). ``"auto"`` is on where bf16 is
    native: a CUDA device that supports it, or a CPU with bf16 instructions
    (:func:`cpu_has_native_bf16`; measured 1.6–1.7× faster for the demo tokenizer's step)."""
    if setting != "auto":
        return bool(setting), "as configured"
    if device.type == "cuda":
        on = torch.cuda.is_bf16_supported()
        return on, "auto: the GPU " + ("supports bf16" if on else "has no bf16 support")
    if device.type == "cpu":
        on = cpu_has_native_bf16()
        return on, "auto: the CPU " + ("has native bf16 instructions" if on else "has no native bf16 instructions")
    return False, f"auto: off on {device.type}"

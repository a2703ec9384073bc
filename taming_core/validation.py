"""Input checks shared by every plugin.

Each helper raises :class:`~taming_core.errors.ValidationError` with a message that
names the argument, what was expected and what was given, e.g.::

    encode(images): expected a float tensor of shape B×C×H×W, got torch.int64 of shape (2, 32, 32)

Use them at public entry points only (not inside hot loops): they cost a few
microseconds each, and the value-range/finiteness checks synchronise with the device.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import torch

from .errors import ValidationError

Dim = Union[int, str, None]

_VALUE_CHECKS = contextvars.ContextVar("taming_value_checks", default=True)


@contextlib.contextmanager
def deferred_value_checks() -> Iterator[None]:
    """Inside this block :func:`check_tensor` skips its device-synchronising checks
    (``value_range`` and ``finite``); shapes, dtypes and devices are still checked.

    Trainers run the steps between two logging steps inside it: they check the values
    of their inputs at the entry point and on logging steps, and a divergence guard
    watches for NaN/Inf, so a per-step sync on every component's input is not needed.
    """
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    """False inside :func:`deferred_value_checks`."""
    return _VALUE_CHECKS.get()


def _fmt_shape(dims: Sequence[Dim]) -> str:
    return "×".join("?" if d is None else str(d) for d in dims)


def check_tensor(
    x: object,
    name: str,
    *,
    dims: Optional[Sequence[Dim]] = None,
    dtype: Optional[str] = None,
    device: Optional[torch.device] = None,
    value_range: Optional[tuple[float, float]] = None,
    finite: bool = False,
    nonempty: bool = True,
) -> dict[str, int]:
    """Validate ``x`` and return the sizes bound to the named dims.

    Args:
        x: the value to check.
        name: how the value is called in messages, e.g. ``"encode(images)"``.
        dims: expected shape; an ``int`` must match exactly, a ``str`` names a dim
            (repeated names must agree, the sizes are returned), ``None`` matches anything.
        dtype: ``"float"`` (any floating dtype), ``"long"`` (int64), ``"integer"`` (any
            integer dtype) or ``"bool"``.
        device: the device the tensor must live on.
        value_range: inclusive ``(low, high)`` bounds for every element.
        finite: reject NaN and Inf.
        nonempty: reject tensors with zero elements.
    """
    expected = f" of shape {_fmt_shape(dims)}" if dims is not None else ""
    kind = {"float": "a float tensor", "long": "an int64 (Long) tensor",
            "integer": "an integer tensor", "bool": "a bool tensor", None: "a tensor"}[dtype]
    if not isinstance(x, torch.Tensor):
        raise ValidationError(f"{name}: expected {kind}{expected}, got {type(x).__name__}")
    got = f"{x.dtype} of shape {tuple(x.shape)}"
    ok_dtype = (
        dtype is None
        or (dtype == "float" and x.dtype.is_floating_point)
        or (dtype == "long" and x.dtype == torch.long)
        or (dtype == "integer" and not x.dtype.is_floating_point and not x.dtype.is_complex
            and x.dtype != torch.bool)
        or (dtype == "bool" and x.dtype == torch.bool)
    )
    if not ok_dtype:
        raise ValidationError(f"{name}: expected {kind}{expected}, got {got}")
    sizes: dict[str, int] = {}
    if dims is not None:
        if x.dim() != len(dims):
            raise ValidationError(f"{name}: expected {kind}{expected}, got {got}")
        for axis, (want, have) in enumerate(zip(dims, x.shape)):
            if isinstance(want, int) and want != have:
                raise ValidationError(
                    f"{name}: expected {kind}{expected}, got {got} (dim {axis} must be {want})")
            if isinstance(want, str):
                if want in sizes and sizes[want] != have:
                    raise ValidationError(
                        f"{name}: expected {kind}{expected}, got {got} "
                        f"({want} is both {sizes[want]} and {have})")
                sizes[want] = int(have)
    if nonempty and x.numel() == 0:
        raise ValidationError(f"{name}: expected a non-empty tensor, got {got}")
    if device is not None and torch.device(device).type != x.device.type:
        raise ValidationError(f"{name}: expected a tensor on {device}, got one on {x.device}")
    if not _VALUE_CHECKS.get():
        return sizes
    if finite and x.dtype.is_floating_point and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValidationError(f"{name}: contains NaN or Inf values ({got})")
    if value_range is not None and x.numel():
        low, high = value_range
        lo, hi = float(x.min()), float(x.max())
        if lo < low or hi > high:
            raise ValidationError(
                f"{name}: values must lie in [{low:g}, {high:g}], got min {lo:.4g}, max {hi:.4g}")
    return sizes


def check_positive(value: object, name: str, *, integer: bool = True, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a positive (or non-negative) int/float."""
    types = (int,) if integer else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, types)
    if not bad:
        bad = value < 0 if allow_zero else value <= 0  # type: ignore[operator]
    if bad:
        what = "integer" if integer else "number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ValidationError(f"{name}: expected an {what} {bound}, got {value!r}")


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValidationError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_divisible(h: int, w: int, factor: int, name: str) -> None:
    """Raise unless both spatial sizes are multiples of ``factor``."""
    if h % factor or w % factor:
        raise ValidationError(
            f"{name}: height and width must be divisible by the downsample factor {factor}, "
            f"got {h}×{w}")

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
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import torch

from .errors import ValidationError
from .interfaces import QuantizerOutput

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
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if math.isnan(lo) or math.isnan(hi):  # min/max propagate NaN; comparisons would pass it
            raise ValidationError(f"{name}: contains NaN values ({got})")
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


def check_number(value: object, name: str, low: float, high: float, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Raise unless ``value`` is a finite real number in the interval; returns it as float.
    ``low_open``/``high_open`` exclude the bounds (e.g. ``[0, 1)`` for an EMA decay)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if not bad:
        v = float(value)  # type: ignore[arg-type]
        bad = (v <= low if low_open else v < low) or (v >= high if high_open else v > high)
    if bad:
        raise ValidationError(f"{name}: expected a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_int_sequence(value: object, name: str, *, minimum: Optional[int] = None,
                       nonempty: bool = False) -> list[int]:
    """Raise unless ``value`` is a list/tuple of ints (each ``>= minimum`` when given);
    returns it as a list. A string is refused, not read as its characters (``"16"`` is
    not ``[1, 6]``)."""
    bound = f" >= {minimum}" if minimum is not None else ""
    what = f"{'a non-empty' if nonempty else 'a'} list of integers{bound}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValidationError(f"{name}: expected {what}, got {value!r}")
    items = list(value)
    if (nonempty and not items) or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral)
            or (minimum is not None and v < minimum)
            for v in items):
        raise ValidationError(f"{name}: expected {what}, got {value!r}")
    return [int(v) for v in items]


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValidationError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_divisible(h: int, w: int, factor: int, name: str) -> None:
    """Raise unless both spatial sizes are multiples of ``factor`` (and at least ``factor``)."""
    if h < factor or w < factor:
        raise ValidationError(
            f"{name}: images of {h}×{w} pixels are smaller than the downsample factor {factor}; "
            f"expected at least {factor}×{factor} (a multiple of {factor} on each side)")
    if h % factor or w % factor:
        raise ValidationError(
            f"{name}: height and width must be divisible by the downsample factor {factor}, "
            f"got {h}×{w}")


def check_cond_offset(cond_offset: object, image_vocab_size: int, cond_vocab_size: int, name: str,
                      prior_vocab_size: Optional[int] = None) -> int:
    """Raise unless condition ids ``[cond_offset, cond_offset + cond_vocab_size)`` are placed
    so they cannot be mistaken for image ids ``[0, image_vocab_size)``.

    Two layouts are valid: *disjoint* (``cond_offset >= image_vocab_size``, the default)
    and *shared* (``cond_offset == 0``: the original Net2NetTransformer's conditional
    models, where positions alone tell the two apart). An offset in between makes some
    condition ids equal image ids and others not. With ``prior_vocab_size`` every
    condition id must also lie inside the prior's vocabulary.
    """
    check_positive(cond_offset, name, allow_zero=True)
    off = int(cond_offset)  # type: ignore[call-overload]
    if 0 < off < image_vocab_size:
        raise ValidationError(
            f"{name}: condition ids {off}..{off + cond_vocab_size - 1} collide with image ids "
            f"0..{image_vocab_size - 1}; expected cond_offset >= {image_vocab_size} (disjoint ids, "
            f"the default) or 0 (the original's shared ids), got {off}")
    if prior_vocab_size is not None and off + cond_vocab_size > prior_vocab_size:
        raise ValidationError(
            f"{name}: condition ids {off}..{off + cond_vocab_size - 1} exceed the prior's "
            f"vocabulary of {prior_vocab_size} ids; expected cond_offset <= "
            f"{prior_vocab_size - cond_vocab_size}, got {off}")
    return off


def component_label(obj: object, kind: str) -> str:
    """``"quantizer 'vq' (VectorQuantizer)"``: the kind, registered name and class of a
    component, for messages that blame it."""
    from .registry import spec_of  # local import: registry imports this module's users

    spec = spec_of(obj) or {}
    name = spec.get("name")
    cls = type(obj).__name__
    return f"{kind} {name!r} ({cls})" if isinstance(name, str) else f"{kind} {cls}"


def _describe(value: object) -> str:
    """``dtype of shape (...)`` for a tensor, else the type's name (for error messages)."""
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return type(value).__name__


def _is_id_tensor(value: object, shape: tuple[int, ...]) -> bool:
    """An integer (not bool) tensor of exactly ``shape``: what token ids must be."""
    return isinstance(value, torch.Tensor) and not value.dtype.is_floating_point \
        and not value.dtype.is_complex and value.dtype != torch.bool and tuple(value.shape) == shape


def check_quantizer_output(out: object, z: "torch.Tensor", quantizer: object,
                           num_levels: int = 1) -> None:
    """Cheap boundary check of what a quantizer returned for latent ``z`` (B×C×H×W):
    a ``QuantizerOutput`` whose ``z_q`` has ``z``'s shape and float dtype and whose
    ``indices`` are integer B×H×W (B×H×W×L with L levels). Shapes and dtypes only: no
    device synchronisation, so it may run every training step."""
    who = component_label(quantizer, "quantizer")
    if not isinstance(out, QuantizerOutput):
        raise ValidationError(f"{who} returned {type(out).__name__}; expected a QuantizerOutput")
    if not isinstance(out.z_q, torch.Tensor) or out.z_q.shape != z.shape \
            or not out.z_q.dtype.is_floating_point:
        raise ValidationError(f"{who} returned z_q {_describe(out.z_q)}; expected a float tensor of "
                              f"the input's shape {tuple(z.shape)}")
    b, _, h, w = z.shape
    want = (b, h, w) + ((num_levels,) if num_levels > 1 else ())
    if not _is_id_tensor(out.indices, want):
        raise ValidationError(f"{who} returned indices {_describe(out.indices)}; expected an integer "
                              f"(Long) tensor of shape {'×'.join(map(str, want))}")


def check_token_grid(tokens: object, batch_size: int, grid: Sequence[int], component: object,
                     kind: str = "sampler") -> None:
    """Cheap boundary check of a token grid a component returned: an integer tensor of
    shape ``batch_size×H×W`` (shape and dtype only, no device synchronisation)."""
    want = (batch_size, *(int(g) for g in grid))
    if not _is_id_tensor(tokens, want):
        raise ValidationError(f"{component_label(component, kind)} returned {_describe(tokens)}; "
                              f"expected Long token ids of shape {'×'.join(map(str, want))}")


def token_range_error(tokens: "torch.Tensor", vocab_size: int, name: str) -> ValidationError:
    """The one-line error for token ids outside ``[0, vocab_size)`` (it reads the ids' range,
    so build it on the error path only, e.g. where an embedding raised IndexError)."""
    lo, hi = int(tokens.min()), int(tokens.max())
    return ValidationError(f"{name}: token ids must lie in [0, {vocab_size - 1}] (the prior's "
                           f"vocabulary), got min {lo}, max {hi}")


def check_token_ids(tokens: "torch.Tensor", vocab_size: int, name: str) -> None:
    """Raise :func:`token_range_error` unless every id lies in ``[0, vocab_size)``
    (synchronises with the device: entry points only; skipped inside
    :func:`deferred_value_checks`)."""
    if not _VALUE_CHECKS.get():
        return
    if tokens.numel() and (bool((tokens < 0).any()) or bool((tokens >= vocab_size).any())):
        raise token_range_error(tokens, vocab_size, name)


def embed_tokens(embedding: "torch.nn.Embedding", tokens: "torch.Tensor", name: str) -> "torch.Tensor":
    """``embedding(tokens)``, with ids outside the table reported as one
    :func:`token_range_error` line instead of an IndexError. Free on the normal path (the
    ids are read only after the embedding raised, which CPU tensors do; on CUDA an
    out-of-range id is a device assert, so check ids with :func:`check_token_ids` at entry
    points there)."""
    try:
        return embedding(tokens)
    except IndexError:
        raise token_range_error(tokens, embedding.num_embeddings, name) from None

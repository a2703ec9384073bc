"""``decode_linear``: ``nn.Linear`` for the few-row inputs of autoregressive decoding.

A decoding step multiplies one or a handful of rows by every weight matrix of the
model, so its speed is set by how fast the weights stream from memory. On CPU,
``F.linear`` with so few rows goes through a BLAS path that reaches well under the
memory bandwidth (measured with MKL on a 2-core AVX-512 machine: 10 ms for the
100 MB of an 8-layer, 512-wide GPT at one row, against 3.2 ms to merely sum those
weights). Viewing the weight as ``blocks`` stacks of rows (a free reshape of the
row-major matrix) and multiplying each stack by the input columns with one batched
matmul takes a different BLAS path that runs at the memory bandwidth: 4.3 ms there
for the same weights (``benchmarks/sampling.py`` has the end-to-end figures).

Small weights are left to ``F.linear``: they stay in cache between steps, so there is
no bandwidth to win and the batched call only adds overhead (a 4-layer, 128-wide GPT
sampled at 0.6–0.75× the speed of ``F.linear`` with its 64–256 KB weights blocked).

Results equal ``F.linear`` up to float rounding (the same products, summed by another
kernel). Other devices, dtypes, more rows, small weights, CPU autocast and
``nn.Linear`` subclasses or hooked layers go through the layer itself.

Model code stays plain: :func:`fast_decoding` routes every plain ``nn.Linear`` of a
model through this path for the duration of a ``with`` block. The samplers enter it
while they sample (``taming_plugins.samplers._common.sampling_mode``), so any prior's
decoding steps take it, and training or a direct forward never does.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Environment switch that turns the blocked path off (e.g. if another BLAS is slower
#: with it): ``TAMING_DISABLE_DECODE_LINEAR=1``.
DISABLE_ENV = "TAMING_DISABLE_DECODE_LINEAR"
#: Inputs with at most this many rows (product of the leading dims) take the blocked
#: path; measured faster than ``F.linear`` up to 16 rows on the machine named above.
#: 0 disables the path.
DECODE_MAX_ROWS = 0 if os.environ.get(DISABLE_ENV, "") not in ("", "0") else 16
#: Weights smaller than this (bytes) go through ``F.linear`` (see the module docs); the
#: 512×512 fp32 matrices of the benchmark model (1 MiB) are the smallest measured to gain.
DECODE_MIN_WEIGHT_BYTES = 1 << 20
#: Preferred numbers of row stacks, first that divides the output width wins.
ROW_BLOCKS = (8, 4, 2, 5, 3, 7)


@functools.lru_cache(maxsize=None)
def _row_blocks(out_features: int) -> int:
    """How many stacks the weight's rows are split into (1 = no split possible)."""
    for blocks in ROW_BLOCKS:
        if out_features % blocks == 0:
            return blocks
    return 1


def decode_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` for x of shape ...×in_features, fast for a few rows on CPU.

    Called once per weight matrix per decoding step, so the checks are kept cheap."""
    if (type(layer) is not nn.Linear or layer._forward_hooks or layer._forward_pre_hooks
            or not _takes_blocked_path(x, layer.weight)):
        return layer(x)
    return _blocked_linear(x, layer.weight, layer.bias)


def _takes_blocked_path(x: Tensor, weight: Tensor) -> bool:
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    return not (not 0 < rows <= DECODE_MAX_ROWS or not x.is_cpu or x.dtype is not torch.float32
                or weight.dtype is not torch.float32 or not weight.is_contiguous()
                or weight.numel() * weight.element_size() < DECODE_MIN_WEIGHT_BYTES
                or torch.is_autocast_enabled("cpu"))


def _fast_forward(layer: nn.Linear, x: Tensor) -> Tensor:
    """The forward :func:`fast_decoding` gives a plain ``nn.Linear``."""
    if _takes_blocked_path(x, layer.weight):
        return _blocked_linear(x, layer.weight, layer.bias)
    return F.linear(x, layer.weight, layer.bias)


@contextlib.contextmanager
def fast_decoding(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every plain ``nn.Linear`` of ``model`` (not subclasses, not
    layers with hooks or an own ``forward``) computes like :func:`decode_linear`: the
    row-blocked path for few-row CPU float32 inputs, ``F.linear`` otherwise. Restores
    the layers on exit. The model's code is untouched; results equal ``F.linear`` up to
    float rounding."""
    patched: list[nn.Linear] = []
    if DECODE_MAX_ROWS > 0:
        for module in model.modules():
            if (type(module) is nn.Linear and "forward" not in module.__dict__
                    and not module._forward_hooks and not module._forward_pre_hooks):
                module.forward = functools.partial(_fast_forward, module)  # type: ignore[method-assign]
                patched.append(module)
    try:
        yield model
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


def _blocked_linear(x: Tensor, weight: Tensor, bias: "Tensor | None") -> Tensor:
    in_features = x.shape[-1]
    rows = x.numel() // in_features
    out_features = weight.shape[0]
    blocks = _row_blocks(out_features)
    if blocks == 1:
        return F.linear(x, weight, bias)
    stacks = weight.view(blocks, out_features // blocks, in_features)
    # The input columns are shared by every stack: a stride-0 expand (a contiguous
    # copy per stack is several times slower).
    cols = x.reshape(rows, in_features).t().expand(blocks, in_features, rows)
    if bias is None:
        y = torch.bmm(stacks, cols)
    else:
        y = torch.baddbmm(bias.view(blocks, out_features // blocks, 1), stacks, cols)
    if rows == 1:
        return y.view(*x.shape[:-1], out_features)
    # Row-major result: a column-major one sends the next few-row Linear (e.g. an MLP's
    # output layer) onto a slow BLAS path (5 ms instead of 0.6 ms for 2 rows, 2048->768).
    return y.view(out_features, rows).t().contiguous().view(*x.shape[:-1], out_features)

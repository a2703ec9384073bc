"""Triton kernel for the nearest-codebook lookup: fused ``z·eᵀ`` + running argmin.

Each program owns ``BLOCK_N`` rows of ``z`` and walks the codebook in ``BLOCK_K``
tiles.  For every tile it accumulates ``z·eᵀ`` over ``BLOCK_D`` slices of the
feature dim (block pointers with zero padding, which also keep address registers
low enough for spill-free code) with ``tl.dot`` (tensor cores, fp32 accumulation), turns
it into ``‖e‖² - 2 z·e`` with the precomputed code norms, and folds the tile's
row minimum into a running (value, index) pair kept in registers.  The N×K
distance matrix is never written to memory; the output is N indices (+ N values).

Precision: bf16 inputs multiply exactly on tensor cores with fp32
accumulation; fp16 inputs are upcast to fp32 first (see ``UPCAST_DTYPES``).  fp32 inputs use ``input_precision="tf32x3"`` (three TF32 products,
error ≈ fp32 rounding) so they still run on tensor cores; plain TF32 would flip
the argmin of near ties far more often than fp32 and IEEE fp32 would not use
tensor cores at all.

Ties: inside a tile the lowest column wins (``tie_break_left``) and a later tile
replaces the running minimum only when strictly smaller, so the result matches
``torch.argmin`` (lowest index) whenever the computed distances tie.

This module imports ``triton`` at import time; ``nearest.py`` imports it lazily
so the package works without Triton or a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: Smallest tile edge ``tl.dot`` accepts; D is zero-padded up to at least this.
MIN_DOT_DIM = 16
#: Largest feature slice per ``tl.dot`` (16-bit inputs / fp32 inputs, whose tf32x3
#: split triples the operand registers); larger D loops over slices.
MAX_BLOCK_D = 64
MAX_BLOCK_D_FP32 = 32
#: Autotune spaces (BLOCK_N, BLOCK_K, num_warps, num_stages) for real GPUs.  Every entry
#: compiles without register spills on sm_80 and sm_90 (checked by the AOT tests).
AUTOTUNE_SPACE_16BIT = (
    (128, 128, 8, 3),
    (128, 64, 4, 3),
    (64, 128, 4, 3),
)
AUTOTUNE_SPACE_FP32 = (
    (64, 64, 4, 2),
    (128, 64, 8, 2),
)
#: Tile sizes used under ``TRITON_INTERPRET=1`` (small, so tests cover several tiles).
INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1, "num_stages": 1}
#: fp16 inputs are upcast (exactly) to fp32: the native fp16 variant spills registers on
#: sm_90 with every tile shape tried, while bf16 and fp32 compile spill-free.
UPCAST_DTYPES = (torch.float16,)
#: Input dtypes the kernel accepts.
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreter_enabled() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def nearest_code_kernel(
    z_ptr, e_ptr, e_sq_ptr, idx_ptr, dist_ptr,
    N, K, D, stride_z, stride_e,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    IS_FP32: tl.constexpr,
):
    """One program: ``BLOCK_N`` rows of ``z`` against the whole codebook."""
    pid = tl.program_id(0)
    row0 = pid * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        z_blk = tl.make_block_ptr(z_ptr, shape=(N, D), strides=(stride_z, 1), offsets=(row0, 0),
                                  block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
        e_blk = tl.make_block_ptr(e_ptr, shape=(D, K), strides=(1, stride_e), offsets=(0, k0),
                                  block_shape=(BLOCK_D, BLOCK_K), order=(0, 1))
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for _ in range(0, D, BLOCK_D):
            z_tile = tl.load(z_blk, boundary_check=(0, 1), padding_option="zero")
            e_tile = tl.load(e_blk, boundary_check=(0, 1), padding_option="zero")
            if IS_FP32:
                acc = tl.dot(z_tile, e_tile, acc, input_precision="tf32x3")
            else:
                acc = tl.dot(z_tile, e_tile, acc)
            z_blk = tl.advance(z_blk, (0, BLOCK_D))
            e_blk = tl.advance(e_blk, (BLOCK_D, 0))
        e_sq = tl.load(e_sq_ptr + cols, mask=col_ok, other=float("inf"))
        dist = e_sq[None, :] - 2.0 * acc
        tile_min, tile_arg = tl.min(dist, axis=1, return_indices=True,
                                    return_indices_tie_break_left=True)
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_arg + k0, best_idx)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, best, mask=row_ok)


def _autotuned(space: tuple[tuple[int, int, int, int], ...]) -> triton.runtime.Autotuner:
    configs = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bn, bk, w, s in space]
    return triton.autotune(configs=configs, key=["K", "D"])(nearest_code_kernel)


_autotuned_16bit = _autotuned(AUTOTUNE_SPACE_16BIT)
_autotuned_fp32 = _autotuned(AUTOTUNE_SPACE_FP32)


def block_d_for(dim: int, is_fp32: bool) -> int:
    """Feature slice width: ``dim`` rounded up to a power of two in [16, max]."""
    cap = MAX_BLOCK_D_FP32 if is_fp32 else MAX_BLOCK_D
    return min(cap, max(MIN_DOT_DIM, triton.next_power_of_2(dim)))


def nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (Long N) and ``‖e‖² - 2 z·e`` minima (fp32 N) computed by the fused kernel.

    ``z`` and ``codebook`` must share device and dtype (one of ``SUPPORTED_DTYPES``);
    the caller validates shapes and values.
    """
    if z.dtype in UPCAST_DTYPES:
        z, codebook = z.float(), codebook.float()
    z = z.contiguous()
    codebook = codebook.contiguous()
    n, dim = z.shape
    k = codebook.shape[0]
    e_sq = codebook.float().pow(2).sum(1)
    idx = torch.empty(n, dtype=torch.long, device=z.device)
    dist = torch.empty(n, dtype=torch.float32, device=z.device)
    args = (z, codebook, e_sq, idx, dist, n, k, dim, z.stride(0), codebook.stride(0))
    is_fp32 = z.dtype == torch.float32
    consts = {"BLOCK_D": block_d_for(dim, is_fp32), "IS_FP32": is_fp32}
    if interpreter_enabled():
        cfg = INTERPRETER_CONFIG
        grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
        nearest_code_kernel[grid](*args, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], **consts)
    else:
        def grid(meta: dict) -> tuple[int]:
            return (triton.cdiv(n, meta["BLOCK_N"]),)
        (_autotuned_fp32 if is_fp32 else _autotuned_16bit)[grid](*args, **consts)
    return idx, dist

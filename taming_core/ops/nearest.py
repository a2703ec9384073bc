"""Nearest-codebook lookup: ``argmin_k ||z_n - e_k||^2`` without the N×K matrix.

Two backends share one public entry point, :func:`nearest_code`:

* ``"torch"`` (any device): row blocks × code blocks of one matmul each, with the
  code norms folded into the matmul (``[-2z, 1]·[e, ‖e‖²]ᵀ = ‖e‖² - 2 z·e``, so no
  broadcast bias copy). A first pass keeps only each block's row minima (cheap
  vectorised ``amin`` on a cache-resident block); a second pass recomputes each row's
  winning block to find the index, so the slow index search sees 1/num_blocks of the
  distances. Extra memory is one 4 MiB block plus O(N) bookkeeping, whatever N×K is.
* ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``): a fused kernel that never
  writes the distance matrix (see ``_triton_nearest.py``).

Exactness: both backends pick the lowest index among equal computed distances, like
``torch.argmin``.  They compute ``‖e‖² - 2 z·e`` in fp32, so when two codes are closer
than fp32 rounding of that expression (about ``1e-7·(‖z‖² + ‖e‖²)``) the winner may
differ from a float64 brute force; the chosen code is then still a nearest one up to
that rounding.  Exact duplicates of a code always resolve to the lowest index.
"""

from __future__ import annotations

import logging
from typing import Union

import torch
from torch import Tensor

from ..errors import ValidationError
from ..validation import check_choice, check_tensor

log = logging.getLogger(__name__)

#: Rows of ``z`` per block of the torch backend.
TORCH_BLOCK_ROWS = 2048
#: Codes per block of the torch backend: a 2048×512 fp32 block is 4 MiB, small enough to
#: stay in cache between the matmul that writes it and the minimum that reads it.
TORCH_BLOCK_CODES = 512
#: Codebooks up to this size are searched in one block per row block (single pass).
TORCH_SINGLE_BLOCK_CODES = 1024
#: Cap on the per-row table of block minima (elements); bounds memory for huge codebooks.
TORCH_MAX_BLOCK_MINIMA = 4 * 1024 * 1024
BACKENDS = ("auto", "torch", "triton")


def _augmented_codebook(codebook: Tensor) -> Tensor:
    """``[e, ‖e‖²]ᵀ`` as a contiguous fp32 (D+1)×K matrix."""
    ef = codebook.float()
    return torch.cat([ef.t(), ef.pow(2).sum(1).unsqueeze(0)], 0).contiguous()


def _nearest_torch(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Two-pass blocked search; returns (Long N indices, fp32 N ``‖e‖²-2z·e``).

    Pass 1 computes, per row block, every code block's distances (one matmul into a
    cache-sized buffer) and keeps only each block's row minima (a fast vectorised
    ``amin``). The winning block of each row is the first block holding its minimum.
    Pass 2 groups all rows by winning block and recomputes just that block for them,
    in row chunks of the pass-1 size, to find the index. The index search (slow on CPU)
    thus touches 1/num_blocks of the distances, and the extra matmul work is one block
    width per row, done in a few large matmuls.
    """
    n, dim = z.shape
    k = codebook.shape[0]
    # Small codebooks fit one block: the two-pass scheme would only repeat the matmul.
    cols = k if k <= TORCH_SINGLE_BLOCK_CODES else TORCH_BLOCK_CODES
    n_blocks = -(-k // cols)
    rows = max(1, min(n, TORCH_BLOCK_ROWS, TORCH_MAX_BLOCK_MINIMA // n_blocks))
    e_aug = _augmented_codebook(codebook)
    best_idx = torch.empty(n, dtype=torch.long, device=z.device)
    best_val = torch.empty(n, dtype=torch.float32, device=z.device)
    block = torch.empty(rows * cols, dtype=torch.float32, device=z.device)
    z_aug = torch.ones(rows, dim + 1, dtype=torch.float32, device=z.device)
    minima = torch.empty(n_blocks, rows, dtype=torch.float32, device=z.device)  # rows contiguous
    winner = torch.empty(n, dtype=torch.long, device=z.device)
    for r0 in range(0, n, rows):
        rr = min(rows, n - r0)
        zb = z_aug[:rr]
        torch.mul(z[r0:r0 + rr], -2.0, out=zb[:, :dim])  # upcasts bf16/fp16 blockwise
        if n_blocks == 1:  # one block: a single matmul + min, no second pass needed
            d = block[:rr * cols].view(rr, cols)
            torch.mm(zb, e_aug, out=d)
            torch.min(d, 1, out=(best_val[r0:r0 + rr], best_idx[r0:r0 + rr]))
            continue
        mins = minima[:, :rr]
        for j in range(n_blocks):  # pass 1: block minima only
            c0 = j * cols
            cc = min(cols, k - c0)
            d = block[:rr * cc].view(rr, cc)
            torch.mm(zb, e_aug[:, c0:c0 + cc], out=d)
            torch.amin(d, 1, out=mins[j])
        torch.argmin(mins, 0, out=winner[r0:r0 + rr])  # first block holding the minimum
    if n_blocks == 1:
        return best_idx, best_val
    order = torch.argsort(winner, stable=True)
    counts = torch.bincount(winner, minlength=n_blocks).tolist()
    start = 0
    for j, count in enumerate(counts):  # pass 2: index inside the winning block
        c0 = j * cols
        cc = min(cols, k - c0)
        for s0 in range(start, start + count, rows):
            sel = order[s0:min(s0 + rows, start + count)]
            m = sel.numel()
            zb = z_aug[:m]
            torch.mul(z.index_select(0, sel), -2.0, out=zb[:, :dim])
            d = block[:m * cc].view(m, cc)
            torch.mm(zb, e_aug[:, c0:c0 + cc], out=d)
            val, idx = torch.min(d, 1)
            best_idx[sel] = idx + c0
            best_val[sel] = val
        start += count
    return best_idx, best_val


def _triton_usable(z: Tensor) -> bool:
    """Whether the Triton backend can run on ``z``'s device (raises nothing)."""
    try:
        from . import _triton_nearest
    except ImportError:
        return False
    return z.is_cuda or _triton_nearest.interpreter_enabled()


def _run_triton(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    try:
        from . import _triton_nearest
    except ImportError as exc:
        raise ValidationError(
            f"nearest_code(backend='triton'): Triton is not importable ({exc}); "
            "install the 'triton' extra or use backend='torch'") from None
    if not (z.is_cuda or _triton_nearest.interpreter_enabled()):
        raise ValidationError(
            f"nearest_code(backend='triton'): expected CUDA tensors (or TRITON_INTERPRET=1), "
            f"got tensors on {z.device}; use backend='torch' or 'auto'")
    if z.dtype not in _triton_nearest.SUPPORTED_DTYPES:
        raise ValidationError(
            f"nearest_code(backend='triton'): expected float32, bfloat16 or float16, got {z.dtype}")
    return _triton_nearest.nearest_code_triton(z, codebook)


def nearest_code(z: Tensor, codebook: Tensor, *, backend: str = "auto",
                 return_distance: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Index of the nearest code (squared L2) for every row of ``z``.

    Args:
        z: float N×D vectors (fp32, bf16 or fp16; computed in fp32).
        codebook: float K×D codes on the same device as ``z``.
        backend: ``"auto"`` (Triton for CUDA tensors when importable, else torch),
            ``"torch"`` or ``"triton"``.
        return_distance: also return the fp32 squared distances N.

    Returns:
        Long N indices (ties go to the lowest index), and the distances if asked.
    """
    check_choice(backend, "nearest_code(backend)", BACKENDS)
    sizes = check_tensor(z, "nearest_code(z)", dims=("N", "D"), dtype="float", finite=True)
    check_tensor(codebook, "nearest_code(codebook)", dims=("K", sizes["D"]), dtype="float",
                 device=z.device, finite=True)
    if backend == "auto":
        backend = "triton" if z.is_cuda and _triton_usable(z) else "torch"
    if backend == "triton":
        if codebook.dtype != z.dtype:
            codebook = codebook.to(z.dtype)
        idx, dist = _run_triton(z, codebook)
    else:
        idx, dist = _nearest_torch(z, codebook)
    if not return_distance:
        return idx
    z_sq = z.float().pow(2).sum(1)
    return idx, (dist + z_sq).clamp_min_(0)

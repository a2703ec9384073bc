"""Nearest-codebook lookup: ``argmin_k ||z_n - e_k||^2`` without the N×K matrix.

Two backends share one public entry point, :func:`nearest_code`:

* ``"torch"`` (any device): row blocks × code blocks of one matmul each, with the
  code norms folded into the matmul (``[-2z, 1]·[e, ‖e‖²]ᵀ = ‖e‖² - 2 z·e``, so no
  broadcast bias copy), and a running minimum.  The cheap vectorised ``amin`` finds
  each block's minimum; the slower index search (``argmin``) runs only on the rows
  whose minimum improved, so most blocks cost matmul + ``amin``.  Extra memory is one
  block (``TORCH_BLOCK_ELEMENTS`` floats) plus O(N) bookkeeping, whatever N×K is.
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

#: Elements of the torch backend's distance block (32 MiB of fp32).  Smaller, cache-sized
#: blocks lost on the shared 2-core test machine: with many short multi-threaded ops,
#: every op waits for the slower thread, so fewer, larger ops measured ~3x faster there.
TORCH_BLOCK_ELEMENTS = 8 * 1024 * 1024
#: Codes per block of the torch backend; rows per block = TORCH_BLOCK_ELEMENTS // this.
TORCH_BLOCK_CODES = 4096
#: Above this fraction of improved rows, one full-block argmin beats a row gather.
FULL_ARGMIN_FRACTION = 0.125
BACKENDS = ("auto", "torch", "triton")


def _augmented_codebook(codebook: Tensor) -> Tensor:
    """``[e, ‖e‖²]ᵀ`` as a contiguous fp32 (D+1)×K matrix."""
    ef = codebook.float()
    return torch.cat([ef.t(), ef.pow(2).sum(1).unsqueeze(0)], 0).contiguous()


def _nearest_torch(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Blocked matmul + running minimum; returns (Long N indices, fp32 N ``‖e‖²-2z·e``)."""
    n, dim = z.shape
    k = codebook.shape[0]
    cols = min(k, TORCH_BLOCK_CODES)
    rows = max(1, min(n, TORCH_BLOCK_ELEMENTS // cols))
    e_aug = _augmented_codebook(codebook)
    best_idx = torch.empty(n, dtype=torch.long, device=z.device)
    best_val = torch.empty(n, dtype=torch.float32, device=z.device)
    block = torch.empty(rows * cols, dtype=torch.float32, device=z.device)
    z_aug = torch.ones(rows, dim + 1, dtype=torch.float32, device=z.device)
    for r0 in range(0, n, rows):
        rr = min(rows, n - r0)
        zb = z_aug[:rr]
        torch.mul(z[r0:r0 + rr], -2.0, out=zb[:, :dim])  # upcasts bf16/fp16 blockwise
        val, idx = best_val[r0:r0 + rr], best_idx[r0:r0 + rr]
        for c0 in range(0, k, cols):
            cc = min(cols, k - c0)
            d = block[:rr * cc].view(rr, cc)
            torch.mm(zb, e_aug[:, c0:c0 + cc], out=d)
            if c0 == 0:
                torch.amin(d, 1, out=val)
                torch.argmin(d, 1, out=idx)
                continue
            _merge_block(d, c0, val, idx)
    return best_idx, best_val


def _merge_block(d: Tensor, offset: int, val: Tensor, idx: Tensor) -> None:
    """Fold block ``d`` (columns ``offset``...) into the running ``val``/``idx`` in place."""
    block_min = d.amin(1)
    better = block_min < val  # strict: an equal later code never beats a lower index
    improved = better.nonzero().squeeze(1)
    count = improved.numel()
    if count == 0:
        return
    if count > FULL_ARGMIN_FRACTION * d.shape[0]:
        block_idx = d.argmin(1).add_(offset)
        idx.copy_(torch.where(better, block_idx, idx))
        torch.minimum(val, block_min, out=val)
    else:
        idx[improved] = d.index_select(0, improved).argmin(1).add_(offset)
        val[improved] = block_min[improved]


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

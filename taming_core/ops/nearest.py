"""Nearest-codebook lookup: ``argmin_k ||z_n - e_k||^2`` without the N×K matrix."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from ..validation import check_tensor
from ..errors import ValidationError

#: Upper bound on the temporary distance block of the torch backend, in elements.
TORCH_BLOCK_ELEMENTS = 4 * 1024 * 1024


def _nearest_torch(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Blocked matmul + running min; extra memory stays ~TORCH_BLOCK_ELEMENTS floats."""
    n, k = z.shape[0], codebook.shape[0]
    zf, ef = z.float(), codebook.float()
    e_sq = (ef * ef).sum(1)
    rows = max(1, min(n, TORCH_BLOCK_ELEMENTS // max(k, 1)))
    cols = min(k, TORCH_BLOCK_ELEMENTS // rows)
    best_d = torch.empty(n, dtype=torch.float32, device=z.device)
    best_i = torch.empty(n, dtype=torch.long, device=z.device)
    for r0 in range(0, n, rows):
        zb = zf[r0:r0 + rows]
        z_sq = (zb * zb).sum(1, keepdim=True)
        run_d = run_i = None
        for c0 in range(0, k, cols):
            d = torch.addmm(e_sq[c0:c0 + cols].unsqueeze(0), zb, ef[c0:c0 + cols].t(), alpha=-2.0)
            bd, bi = d.min(1)
            if run_d is None:
                run_d, run_i = bd, bi
            else:
                better = bd < run_d
                run_d = torch.where(better, bd, run_d)
                run_i = torch.where(better, bi + c0, run_i)
        best_d[r0:r0 + rows] = (run_d + z_sq.squeeze(1)).clamp_min_(0)
        best_i[r0:r0 + rows] = run_i
    return best_i, best_d


def nearest_code(z: Tensor, codebook: Tensor, *, backend: str = "auto",
                 return_distance: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Index of the nearest code for every row of ``z``.

    Args:
        z: float N×D vectors.
        codebook: float K×D codes.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"torch"`` or ``"triton"``.
        return_distance: also return the float32 squared distances N.

    Returns:
        Long N indices (ties go to the lowest index), and the distances if asked.
    """
    sizes = check_tensor(z, "nearest_code(z)", dims=("N", "D"), dtype="float", finite=True)
    check_tensor(codebook, "nearest_code(codebook)", dims=("K", sizes["D"]), dtype="float", finite=True)
    if backend not in ("auto", "torch", "triton"):
        raise ValidationError(f"nearest_code(backend): expected 'auto', 'torch' or 'triton', got {backend!r}")
    idx, dist = _nearest_torch(z, codebook)
    return (idx, dist) if return_distance else idx

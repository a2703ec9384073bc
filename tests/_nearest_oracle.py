"""Float64 brute-force oracle for nearest-code tests (shared by the torch and Triton tests)."""

from __future__ import annotations

import torch

#: Relative slack for "the chosen code is a nearest one": fp32 rounding of ‖e‖² - 2 z·e.
REL_TOL = 1e-5


def check_against_oracle(z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor) -> None:
    """Assert ``idx`` picks nearest codes; exact index match wherever the gap is clear.

    The fp32 matmul formulation may swap two codes whose float64 distances differ by
    less than its rounding error, so: (1) the chosen code's float64 distance must equal
    the float64 minimum within ``REL_TOL·(‖z‖² + max‖e‖²)``; (2) rows whose runner-up
    (a different code vector) is farther than that tolerance must match the float64
    argmin exactly, which is the lowest index among exact duplicates.
    """
    z64, e64 = z.double(), codebook.double()
    assert idx.dtype == torch.long and idx.shape == (z.shape[0],)
    assert int(idx.min()) >= 0 and int(idx.max()) < codebook.shape[0]
    d = torch.cdist(z64, e64).pow(2)
    ref_idx = d.argmin(1)
    ref_min = d.gather(1, ref_idx[:, None]).squeeze(1)
    got = d.gather(1, idx[:, None]).squeeze(1)
    tol = REL_TOL * (z64.pow(2).sum(1) + e64.pow(2).sum(1).max()) + 1e-12
    assert bool((got - ref_min <= tol).all()), "a chosen code is farther than the nearest one"
    # Runner-up distance over codes that differ from the winning code vector.
    winner = e64[ref_idx]
    same = torch.cdist(winner, e64) == 0
    runner_up = d.masked_fill(same, float("inf")).amin(1)
    clear = runner_up - ref_min > tol
    mismatch = clear & (idx != ref_idx)
    assert not bool(mismatch.any()), (
        f"rows {mismatch.nonzero().squeeze(1).tolist()[:10]}: got {idx[mismatch].tolist()[:10]}, "
        f"expected {ref_idx[mismatch].tolist()[:10]}")


def random_problem(n: int, k: int, dim: int, dups: int, seed: int,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random z (some rows equal to codes) and a codebook with ``dups`` duplicated codes."""
    gen = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, dim, generator=gen)
    for _ in range(min(dups, k - 1) if k > 1 else 0):
        src, dst = torch.randint(0, k, (2,), generator=gen).tolist()
        lo, hi = min(src, dst), max(src, dst)
        codebook[hi] = codebook[lo]
    z = torch.randn(n, dim, generator=gen)
    take = torch.randint(0, k, (n // 3,), generator=gen)
    z[: n // 3] = codebook[take]  # exact hits, which exercise duplicate ties
    return z.to(dtype), codebook.to(dtype)

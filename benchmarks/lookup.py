"""Nearest-codebook lookup: ``nearest_code`` backends vs ``cdist+argmin`` vs the original formula.

Run ``python -m benchmarks.lookup --quick`` (target case only) or without ``--quick``
for the grid N ∈ {4k, 16k, 64k} × K ∈ {1k, 16k} × D ∈ {8, 64, 256}.  Times are medians
of methods run interleaved per case; CPU peak memory is the RSS high-water mark of a
fresh process per (case, method); CUDA figures use the allocator and add TFLOP/s.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Callable

import torch

from benchmarks._common import MIB, peak_memory, run_in_fresh_process, time_interleaved, write_results
from taming_core.ops import nearest_code

GRID_N = (4096, 16384, 65536)
GRID_K = (1024, 16384)
GRID_D = (8, 64, 256)
QUICK_CASES = ((16384, 16384, 64),)
#: Skip the full-matrix methods when N×K floats exceed this (they need several copies).
MAX_FULL_MATRIX_ELEMENTS = 2 ** 30
CPU_THREADS = 2
FLOPS_PER_MAC = 2


def _full_matrix(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The original taming quantizer: materialise z² + e² - 2 z·eᵀ, then argmin."""
    d = (z ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * torch.matmul(z, e.t())
    return torch.argmin(d, dim=1)


def methods(device: torch.device, n: int, k: int) -> dict[str, Callable]:
    """Name -> f(z, e) for the methods that make sense on ``device`` at this size."""
    out: dict[str, Callable] = {"nearest_code[torch]": lambda z, e: nearest_code(z, e, backend="torch")}
    if device.type == "cuda":
        out["nearest_code[triton]"] = lambda z, e: nearest_code(z, e, backend="triton")
    if n * k <= MAX_FULL_MATRIX_ELEMENTS:
        out["cdist+argmin"] = lambda z, e: torch.cdist(z, e).argmin(1)
        out["full-matrix (original)"] = _full_matrix
    return out


def _inputs(n: int, k: int, dim: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n + k + dim)
    z = torch.randn(n, dim, generator=gen).to(device, dtype)
    e = torch.randn(k, dim, generator=gen).to(device, dtype)
    return z, e


def _cpu_peak(name: str, n: int, k: int, dim: int, dtype: torch.dtype) -> int:
    """Fresh-process peak extra RSS of one method call (top level: picklable)."""
    torch.set_num_threads(CPU_THREADS)
    z, e = _inputs(n, k, dim, "cpu", dtype)
    fn = methods(torch.device("cpu"), n, k)[name]
    return peak_memory(lambda: fn(z, e))


def run_case(n: int, k: int, dim: int, device: torch.device, dtype: torch.dtype,
             repeats: int) -> list[dict]:
    z, e = _inputs(n, k, dim, str(device), dtype)
    fns = methods(device, n, k)
    times = time_interleaved({name: (lambda f=f: f(z, e)) for name, f in fns.items()},
                             repeats=repeats, device=device)
    rows = []
    for name in fns:
        if device.type == "cuda":
            mem = peak_memory(lambda f=fns[name]: f(z, e), device)
        else:
            mem = run_in_fresh_process(_cpu_peak, name, n, k, dim, dtype)
        sec = times[name]["median"]
        rows.append({"N": n, "K": k, "D": dim, "dtype": str(dtype).replace("torch.", ""),
                     "method": name, "median_s": sec, "peak_extra_MiB": mem / MIB,
                     "TFLOP/s": FLOPS_PER_MAC * n * k * dim / sec / 1e12 if device.type == "cuda" else None})
    base = next((r["median_s"] for r in rows if r["method"] == "cdist+argmin"), None)
    for r in rows:
        r["speedup_vs_cdist"] = base / r["median_s"] if base else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only N=K=16384, D=64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--name", default=None,
                        help="results file name (default: lookup, or lookup_grid for the full grid)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(CPU_THREADS)
    cases = QUICK_CASES if args.quick else tuple(itertools.product(GRID_N, GRID_K, GRID_D))
    rows = []
    for n, k, dim in cases:
        rows += run_case(n, k, dim, device, getattr(torch, args.dtype), args.repeats)
    cols = ["N", "K", "D", "dtype", "method", "median_s", "peak_extra_MiB", "speedup_vs_cdist"]
    if device.type == "cuda":
        cols.append("TFLOP/s")
    notes = [f"torch threads: {CPU_THREADS}; methods run interleaved per case (round-robin, "
             "rotating order) because other jobs share the CPU: compare ratios within a case.",
             "CPU peak memory: RSS high-water mark above the pre-call RSS, one fresh process "
             "per (case, method).",
             "full-matrix (original) = z² + e² - 2 z·eᵀ materialised, then argmin."]
    name = args.name or ("lookup" if args.quick else "lookup_grid")
    title = "Nearest-codebook lookup" + ("" if args.quick else " — full grid")
    write_results(name, rows, columns=cols, title=title, notes=notes, device=device,
                  meta={"quick": args.quick, "repeats": args.repeats})


if __name__ == "__main__":
    main()

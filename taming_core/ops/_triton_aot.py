"""Ahead-of-time compilation of the nearest-code kernel for GPUs that are not present.

Used by the tests (and handy when tuning): it compiles the Triton kernel for a
given CUDA architecture, dtype and autotune configuration on a CPU-only machine,
then runs the ``ptxas`` bundled in the Triton wheel with ``-v`` to read the
register count and spill bytes.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget

from ._triton_nearest import (AUTOTUNE_SPACE_16BIT, AUTOTUNE_SPACE_FP32, block_d_for,
                              nearest_code_kernel)

#: CUDA warp size (all NVIDIA targets).
WARP_SIZE = 32
#: Triton pointer type names of the supported input dtypes.
DTYPE_NAMES = ("fp32", "bf16")  # fp16 runs through the fp32 kernel (UPCAST_DTYPES)
#: Architecture name ptxas needs for the PTX Triton emits (wgmma needs the "a" variant).
_PTXAS_ARCH = {90: "sm_90a", 80: "sm_80"}


@dataclass(frozen=True)
class CompiledKernel:
    """What the tests check about one compiled variant."""

    ptx: str
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    ptxas_log: str


def _signature(dtype: str) -> dict[str, str]:
    return {
        "z_ptr": f"*{dtype}", "e_ptr": f"*{dtype}", "e_sq_ptr": "*fp32",
        "idx_ptr": "*i64", "dist_ptr": "*fp32",
        "N": "i32", "K": "i32", "D": "i32", "stride_z": "i32", "stride_e": "i32",
        "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr", "IS_FP32": "constexpr",
    }


def ptxas_path() -> str:
    """The ``ptxas`` binary shipped inside the Triton wheel."""
    import triton.backends.nvidia as nvidia

    path = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ptxas not found in the Triton wheel (looked at {path})")
    return path


def _ptxas_stats(ptx: str, capability: int) -> tuple[int, int, int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(ptx)
        proc = subprocess.run(
            [ptxas_path(), "-v", "--gpu-name", _PTXAS_ARCH[capability], src,
             "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True, text=True, check=True)
    log = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    if regs is None or stores is None or loads is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return int(regs.group(1)), int(stores.group(1)), int(loads.group(1)), log


def compile_variant(capability: int, dtype: str, config: tuple[int, int, int, int],
                    dim: int = 256) -> CompiledKernel:
    """Compile for ``sm_<capability>`` with ``config`` = (BLOCK_N, BLOCK_K, warps, stages)."""
    block_n, block_k, warps, stages = config
    src = triton.compiler.ASTSource(
        fn=nearest_code_kernel, signature=_signature(dtype),
        constexprs={"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_D": block_d_for(dim, dtype == "fp32"),
                    "IS_FP32": dtype == "fp32"})
    compiled = triton.compile(src, target=GPUTarget("cuda", capability, WARP_SIZE),
                              options={"num_warps": warps, "num_stages": stages})
    ptx = compiled.asm["ptx"]
    regs, stores, loads, log = _ptxas_stats(ptx, capability)
    return CompiledKernel(ptx, regs, stores, loads, log)


def all_variants() -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """Every (capability, dtype, autotune config) the kernel is meant to run with."""
    return [(cap, dt, cfg) for cap in (90, 80) for dt in DTYPE_NAMES
            for cfg in (AUTOTUNE_SPACE_FP32 if dt == "fp32" else AUTOTUNE_SPACE_16BIT)]

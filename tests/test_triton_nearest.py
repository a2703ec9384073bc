"""Triton nearest-code kernel: CPU interpreter runs and ahead-of-time GPU compilation.

No GPU is needed: the kernel runs under ``TRITON_INTERPRET=1`` in a subprocess (the
variable must be set before Triton is imported), and it is compiled for sm_90 and
sm_80 with the ``ptxas`` shipped in the Triton wheel to check tensor-core use and
register spills.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

from taming_core.ops import _triton_aot  # noqa: E402

TESTS = Path(__file__).parent
#: Budget for the interpreter subprocess (it is slow: small shapes only).
INTERPRETER_TIMEOUT_S = 300

_INTERPRETER_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from _nearest_oracle import check_against_oracle, random_problem
    from taming_core.ops import nearest_code
    cases = [  # (n, k, dim, dups): tiles are 16 rows x 16 codes x >=16 features
        (37, 45, 7, 4), (16, 16, 16, 0), (1, 1, 1, 0), (20, 1, 3, 0), (5, 33, 1, 3),
        (18, 40, 70, 2), (33, 17, 32, 5),
    ]
    for n, k, dim, dups in cases:
        z, e = random_problem(n, k, dim, dups, seed=n * 1000 + k)
        idx, dist = nearest_code(z, e, backend="triton", return_distance=True)
        check_against_oracle(z, e, idx)
        expect = (z.double() - e.double()[idx]).pow(2).sum(1)
        torch.testing.assert_close(dist.double(), expect, rtol=1e-4, atol=1e-4)
    # bf16 is left to the AOT tests: Triton 3.8's CPU interpreter mis-handles bf16 loads.
    for dtype in (torch.float16,):
        z, e = random_problem(21, 35, 12, 3, seed=5, dtype=dtype)
        check_against_oracle(z.float(), e.float(), nearest_code(z, e, backend="triton"))
    e = torch.randn(40, 5)
    e[[17, 33]] = e[3].clone()
    z = e[3:4].repeat(3, 1)
    assert nearest_code(z, e, backend="triton").tolist() == [3, 3, 3]
    print("OK", len(cases))
""")


def test_kernel_under_interpreter_matches_bruteforce():
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = _INTERPRETER_SCRIPT.format(tests=str(TESTS))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=INTERPRETER_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().startswith("OK")


def _check_variant(capability: int, dtype: str, config: tuple[int, int, int, int]) -> None:
    compiled = _triton_aot.compile_variant(capability, dtype, config)
    tensor_core_op = "wgmma" if capability == 90 else "mma"
    assert tensor_core_op in compiled.ptx, f"no {tensor_core_op} in PTX for sm_{capability} {dtype}"
    assert compiled.spill_store_bytes == 0, (
        f"sm_{capability} {dtype} {config}: {compiled.spill_store_bytes} bytes spilled "
        f"({compiled.registers} registers)\n{compiled.ptxas_log}")


#: One representative per dtype class and architecture for the default run (~20 s).
_DEFAULT_VARIANTS = [
    (90, "bf16", _triton_aot.AUTOTUNE_SPACE_16BIT[0]),
    (90, "fp32", _triton_aot.AUTOTUNE_SPACE_FP32[0]),
    (80, "bf16", _triton_aot.AUTOTUNE_SPACE_16BIT[1]),
]


@pytest.mark.parametrize("capability,dtype,config", _DEFAULT_VARIANTS)
def test_aot_compile_uses_tensor_cores_without_spills(capability, dtype, config):
    _check_variant(capability, dtype, config)


@pytest.mark.slow
@pytest.mark.parametrize("capability,dtype,config", _triton_aot.all_variants())
def test_aot_compile_every_autotune_config(capability, dtype, config):
    _check_variant(capability, dtype, config)

"""nearest_code: torch backend against a float64 brute force, dispatch and input errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from _nearest_oracle import check_against_oracle, random_problem
from taming_core.errors import ValidationError
from taming_core.ops import nearest, nearest_code

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@SETTINGS
@given(n=st.integers(1, 70), k=st.integers(1, 90), dim=st.integers(1, 20),
       dups=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_matches_float64_bruteforce_small_blocks(n, k, dim, dups, seed, monkeypatch_module):
    """Tiny blocks force several row blocks, code blocks and winning blocks per row block."""
    z, e = random_problem(n, k, dim, dups, seed)
    idx, dist = nearest_code(z, e, backend="torch", return_distance=True)
    check_against_oracle(z, e, idx)
    expect = (z.double() - e.double()[idx]).pow(2).sum(1)
    torch.testing.assert_close(dist.double(), expect, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Shrink the torch backend's blocks for the whole module (hypothesis-friendly)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(nearest, "TORCH_BLOCK_ROWS", 7)
    mp.setattr(nearest, "TORCH_BLOCK_CODES", 8)
    mp.setattr(nearest, "TORCH_SINGLE_BLOCK_CODES", 8)  # K <= 8: one pass, larger K: two passes
    yield mp
    mp.undo()


@pytest.mark.parametrize("n,k,dim", [(300, 5000, 8), (700, 900, 33), (1, 1, 1)])
def test_default_blocks_match_bruteforce(n, k, dim):
    z, e = random_problem(n, k, dim, dups=10, seed=n + k)
    check_against_oracle(z, e, nearest_code(z, e, backend="torch"))


def test_duplicated_codes_pick_lowest_index(monkeypatch):
    monkeypatch.setattr(nearest, "TORCH_BLOCK_CODES", 4)
    monkeypatch.setattr(nearest, "TORCH_SINGLE_BLOCK_CODES", 4)
    e = torch.randn(16, 3)
    base = e[2].clone()
    e[[5, 9, 13]] = base  # copies in other blocks, later than the original
    z = torch.cat([base.repeat(4, 1), e[9:10]])
    assert nearest_code(z, e, backend="torch").tolist() == [2, 2, 2, 2, 2]


def test_matches_torch_argmin_on_well_separated_data():
    gen = torch.Generator().manual_seed(3)
    e = torch.randn(5000, 16, generator=gen)
    z = e[torch.randint(0, 5000, (300,), generator=gen)] + 1e-3 * torch.randn(300, 16, generator=gen)
    assert torch.equal(nearest_code(z, e), torch.cdist(z, e).argmin(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    z, e = random_problem(200, 300, 24, dups=3, seed=7, dtype=dtype)
    check_against_oracle(z.float(), e.float(), nearest_code(z, e, backend="torch"))


def test_auto_uses_torch_on_cpu(monkeypatch):
    calls = []
    real = nearest._nearest_torch
    monkeypatch.setattr(nearest, "_nearest_torch", lambda z, e: calls.append(1) or real(z, e))
    nearest_code(torch.randn(4, 3), torch.randn(5, 3))
    assert calls == [1]


def test_triton_backend_rejects_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValidationError, match="CUDA|Triton"):
        nearest_code(torch.randn(4, 3), torch.randn(5, 3), backend="triton")


@pytest.mark.parametrize("z,e,match", [
    (torch.randn(4, 3), torch.randn(5, 4), "nearest_code\\(codebook\\).*dim 1 must be 3"),
    (torch.randn(0, 3), torch.randn(5, 3), "non-empty"),
    (torch.randn(4, 3), torch.randn(0, 3), "non-empty"),
    (torch.randint(0, 5, (4, 3)), torch.randn(5, 3), "float tensor"),
    (torch.randn(4, 3), torch.randint(0, 5, (5, 3)), "float tensor"),
    (torch.tensor([[float("nan"), 0.0]]), torch.randn(5, 2), "NaN or Inf"),
    (torch.randn(4, 2), torch.tensor([[float("inf"), 0.0]]), "NaN or Inf"),
    (torch.randn(4), torch.randn(5, 4), "shape N×D"),
])
def test_bad_inputs_raise_clear_errors(z, e, match):
    with pytest.raises(ValidationError, match=match):
        nearest_code(z, e)


def test_unknown_backend():
    with pytest.raises(ValidationError, match="backend.*'cuda'"):
        nearest_code(torch.randn(4, 3), torch.randn(5, 3), backend="cuda")

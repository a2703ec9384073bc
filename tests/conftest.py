"""Shared test set-up: deterministic seeds, few threads, the tests folder importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures" / "taming_reference"
sys.path.insert(0, str(TESTS))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES

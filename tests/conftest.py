"""Shared test set-up: deterministic seeds, few threads, the tests folder importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures" / "taming_reference"
sys.path.insert(0, str(TESTS))

# Tests use small tensors: one thread avoids threading overhead and oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


# The plugin packages' own tests run as their authors would run them, with the package
# installed (tests/test_contracts_plugins.py), not as part of this suite's collection.
collect_ignore = ["plugin_pkgs"]

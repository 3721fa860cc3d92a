"""Shared test set-up: JAX on the CPU, tiny configs, session-scoped fixtures (JAX compiles once per shape)."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def shared_reference() -> pathlib.Path:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"shared reference files not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE

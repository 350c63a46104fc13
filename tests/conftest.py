"""Shared fixtures: where the reference data lives, and a quiet, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with tinyshakespeare.txt, the-verdict.txt and gpt2/ (override: SCRATCHLLM_SHARED_DATA)."""
    path = Path(os.environ.get("SCRATCHLLM_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "tinyshakespeare.txt").is_file():
        pytest.fail(f"reference data not found in {path}; set SCRATCHLLM_SHARED_DATA to the shared/data folder")
    return path

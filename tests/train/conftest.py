"""A tiny byte-level prepared corpus, so that a whole training run takes a second or two."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scratchllm.data.shards import prepare


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, verdict_path) -> Path:
    """the-verdict at the byte level (256 bytes + specials), last 10% validation."""
    root = tmp_path_factory.mktemp("data")
    shutil.copy(verdict_path, root / "the-verdict.txt")
    return prepare(root / "the-verdict.txt", root / "verdict-bytes", vocab_size=257, workers=1)

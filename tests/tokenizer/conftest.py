"""Fixtures for the tokenizer tests: a small trained tokenizer and GPT-2's real vocabulary."""

from __future__ import annotations

import pytest

from scratchllm.tokenizer import BPETokenizer


@pytest.fixture(scope="session")
def verdict_tok(verdict_path) -> BPETokenizer:
    """Trained on the-verdict (20 kB) with the GPT-4 pattern; compared on other text."""
    return BPETokenizer.train(verdict_path, vocab_size=600, progress=False)


@pytest.fixture(scope="session")
def gpt2_tok(gpt2_files) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="session")
def gpt2_tiktoken(gpt2_files):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from scratchllm.tokenizer import GPT2_PATTERN

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(gpt2_files[1]), encoder_json_file=str(gpt2_files[0])
    )
    return tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )

"""Fixtures for the tokenizer tests: a small trained tokenizer and GPT-2's real vocabulary."""

from __future__ import annotations

import pytest

from scratchllm.tokenizer import BPETokenizer


@pytest.fixture(scope="session")
def verdict_tok(shared_data) -> BPETokenizer:
    """Trained on the-verdict (20 kB) with the GPT-4 pattern; compared on other text."""
    return BPETokenizer.train(shared_data / "the-verdict.txt", vocab_size=600, progress=False)


@pytest.fixture(scope="session")
def gpt2_tok(shared_data) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe")


@pytest.fixture(scope="session")
def gpt2_tiktoken(shared_data):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from scratchllm.tokenizer import GPT2_PATTERN

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(shared_data / "gpt2" / "vocab.bpe"),
        encoder_json_file=str(shared_data / "gpt2" / "encoder.json"),
    )
    return tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )

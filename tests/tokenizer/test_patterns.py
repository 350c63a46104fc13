"""The fast ASCII splitter and the safe cut points must never change the chunks."""

from __future__ import annotations

import re

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.tokenizer.patterns import (
    _ASCII_TWINS,
    GPT2_PATTERN,
    GPT4_PATTERN,
    SAFE_CUT,
    Splitter,
    ascii_stretches,
    resolve_pattern,
)
from scratchllm.tokenizer.train import iter_texts

# Text built from the characters where the patterns' branches differ: letters, digits, every
# ASCII space, apostrophe contractions, punctuation, controls, and a few non-ASCII letters,
# spaces and marks.
TRICKY = st.text(
    alphabet=st.sampled_from(
        list("aZ09 \t\n\r\x0b\x0c\x1c'sStTlLvVeE.!,-_\x00") + ["é", "你", "\u00a0", "\u2028", "\u0301", "😀", "٣"]
    ),
    max_size=80,
)
ASCII = st.text(alphabet=st.characters(max_codepoint=127), max_size=80)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(ASCII, TRICKY.filter(str.isascii)))
def test_ascii_twins_split_like_the_full_patterns(text):
    for pattern, twin in _ASCII_TWINS.items():
        assert re.findall(twin, text) == regex.findall(pattern, text)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(TRICKY, st.text(max_size=60)))
def test_splitter_matches_full_pattern_on_any_text(text):
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        assert Splitter(pattern)(text) == regex.findall(pattern, text)


@settings(max_examples=200, deadline=None)
@given(text=TRICKY)
def test_ascii_stretches_cover_text_and_keep_non_ascii_out_of_ascii_stretches(text):
    stretches = ascii_stretches(text)
    bounds = [0, *(e for _, e, _ in stretches)]
    assert [s for s, _, _ in stretches] == bounds[:-1]
    assert bounds[-1] == len(text)
    assert all(text[s:e].isascii() for s, e, is_ascii in stretches if is_ascii)


@settings(max_examples=200, deadline=None)
@given(text=TRICKY)
def test_safe_cuts_do_not_change_chunks(text):
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        whole = regex.findall(pattern, text)
        cuts = [0, *(m.start() for m in SAFE_CUT.finditer(text)), len(text)]
        pieces = [c for a, b in zip(cuts, cuts[1:], strict=False) for c in regex.findall(pattern, text[a:b])]
        assert pieces == whole


def test_streamed_file_pieces_join_to_the_file(tmp_path):
    text = "Line one.\nLine two!\n\n  indented\r\nx\ny\n" * 50 + "no newline at the end"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8", newline="")
    pieces = list(iter_texts(path, read_chars=7))
    assert "".join(pieces) == text
    assert len(pieces) > 10


def test_python_whitespace_covers_unicode_whitespace():
    # The safe cuts test "not str.isspace()"; that is only safe if it is at least as strict.
    every_char = "".join(map(chr, range(0x110000)))
    missing = [c for c in regex.findall(r"\s", every_char) if not c.isspace()]
    assert missing == []


def test_resolve_pattern_names_and_errors():
    assert resolve_pattern("gpt4") == ("gpt4", GPT4_PATTERN)
    assert resolve_pattern(GPT2_PATTERN) == ("gpt2", GPT2_PATTERN)
    assert resolve_pattern(r"\w+|\W") == (None, r"\w+|\W")
    for bad in ("(unclosed", "a*"):
        try:
            resolve_pattern(bad)
        except ValueError as err:
            assert "\n" not in str(err)
        else:
            raise AssertionError(f"{bad!r} accepted")

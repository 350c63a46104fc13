"""Pre-tokenization: the regex that cuts text into chunks before BPE ever sees it.

BPE merges never cross a chunk boundary, so a word never fuses with the space or punctuation
around it in arbitrary ways. GPT-2 and GPT-4 (cl100k) use the two patterns below; a custom
regex (Python ``regex`` syntax, which also supports ``\\p{L}`` and possessive quantifiers) is
allowed too.

Speed: the ``regex`` module splits at about 14 MB/s, no faster than tiktoken encodes whole
text. For the two built-in patterns we also keep an exact ASCII-only twin written for the
standard library's ``re`` (about 30 MB/s): on ASCII text ``\\p{L}`` is ``[A-Za-z]``, ``\\p{N}``
is ``[0-9]`` and ``\\s`` is ``[\\t\\n\\v\\f\\r ]`` (the Unicode White_Space characters below 128),
so both give the same chunks (checked in tests/tokenizer/test_patterns.py). Non-ASCII stretches
of a text go to the full pattern; see ``Splitter``.
"""

from __future__ import annotations

import re

import regex

from scratchllm.errors import ScratchLLMError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# The same patterns spelled for ASCII text with the standard library's faster ``re``. GPT-2's is
# also spelled so that each branch starts with one character or class (``x+`` as ``xx*``, `` ?x``
# as ``x| x``): ``re`` skips such a branch after one test, which makes it ~10% faster. Branches
# that cannot match at the same place may change order, so the most common comes first.
_S = r"\t\n\x0b\x0c\r "  # Unicode White_Space below 128
_P = rf"[^{_S}A-Za-z0-9]"  # neither space, letter nor digit
_ASCII_TWINS: dict[str, str] = {
    GPT2_PATTERN: (
        rf"""[A-Za-z][A-Za-z]*| [A-Za-z][A-Za-z]*|'(?:[sdmt]|ll|ve|re)|[0-9][0-9]*| [0-9][0-9]*|{_P}{_P}*"""
        rf"""| {_P}{_P}*|[{_S}][{_S}]*(?![^{_S}])|[{_S}]"""  # last: a lone space char before a non-space
    ),
    GPT4_PATTERN: (
        rf"""'(?:[sdmtSDMT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\nA-Za-z0-9]?+[A-Za-z]+|[0-9]{{1,3}}"""
        rf"""| ?[^{_S}A-Za-z0-9]++[\r\n]*|[{_S}]*[\r\n]|[{_S}]+(?![^{_S}])|[{_S}]+"""
    ),
}

# A line break between two non-space characters: no chunk of either built-in pattern spans it,
# and the chunks on each side do not depend on the other side. Text is cut only there when it
# is streamed or split into ASCII and non-ASCII stretches. (Python's \S is slightly stricter
# than Unicode's, which only makes the cut points rarer, never wrong.)
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def resolve_pattern(pattern: str) -> tuple[str | None, str]:
    """Map ``"gpt2"``/``"gpt4"`` or a regex to ``(name or None, regex)``; reject a bad regex.

    >>> resolve_pattern("gpt2")[0]
    'gpt2'
    """
    if pattern in PATTERNS:
        return pattern, PATTERNS[pattern]
    for name, known in PATTERNS.items():
        if pattern == known:
            return name, known
    try:
        compiled = regex.compile(pattern)
    except regex.error as err:
        raise ScratchLLMError(f"invalid split pattern {pattern!r}: {err}; use 'gpt2', 'gpt4' or a valid regex") from err
    if compiled.search("") is not None:
        raise ScratchLLMError(f"split pattern {pattern!r} matches the empty string; make every branch consume a char")
    return None, pattern


class Splitter:
    """Cut text into pre-token chunks with ``pattern``, using the fast ASCII twin where it can.

    >>> Splitter(GPT2_PATTERN)("Hello world!!")
    ['Hello', ' world', '!!']
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._full = regex.compile(pattern)
        twin = _ASCII_TWINS.get(pattern)
        self._ascii = re.compile(twin) if twin is not None else None

    def __call__(self, text: str) -> list[str]:
        if self._ascii is None:
            return self._full.findall(text)
        if text.isascii():
            return self._ascii.findall(text)
        chunks: list[str] = []
        for start, end, is_ascii in ascii_stretches(text):
            chunks += (self._ascii if is_ascii else self._full).findall(text, start, end)
        return chunks


def ascii_stretches(text: str) -> list[tuple[int, int, bool]]:
    """Cover ``text`` with ``(start, end, is_ascii)`` stretches whose ends are safe cut points.

    Each non-ASCII run is widened to the nearest safe cut on both sides, so the fast ASCII
    pattern only ever sees pure ASCII and no chunk straddles two stretches.

    >>> ascii_stretches("a\\nb é\\nc\\nd")
    [(0, 2, True), (2, 6, False), (6, 9, True)]
    """
    stretches: list[tuple[int, int, bool]] = []
    done = 0  # text[:done] is covered
    for run in _NON_ASCII.finditer(text):
        if run.end() <= done:
            continue
        start = _safe_cut_before(text, run.start(), done)
        end = _safe_cut_after(text, run.end())
        if start > done:
            stretches.append((done, start, True))
        if stretches and not stretches[-1][2] and stretches[-1][1] == start:
            start = stretches.pop()[0]  # two non-ASCII stretches touch: join them
        stretches.append((start, end, False))
        done = end
    if done < len(text):
        stretches.append((done, len(text), True))
    return stretches


def last_safe_cut(text: str) -> int:
    """The last position where ``text`` may be cut without changing its chunks (0 if none).

    Text handled in pieces (a file read a block at a time, a corpus shared among processes) is
    cut only at such points, so the pieces split into exactly the chunks of the whole text.

    >>> last_safe_cut("one\\ntwo\\nthree")
    8
    """
    start = max(0, len(text) - 65536)
    while True:
        cuts = [m.start() for m in SAFE_CUT.finditer(text, start)]
        if cuts or start == 0:
            # The last cut needs a known next character, so never cut at the very end.
            return cuts[-1] if cuts and cuts[-1] < len(text) else 0
        start = max(0, start - 65536 * 16)


def _is_safe_cut(text: str, i: int) -> bool:
    return text[i - 1] == "\n" and not text[i - 2].isspace() and not text[i].isspace()


def _safe_cut_before(text: str, i: int, floor: int) -> int:
    """The last safe cut at or before ``i`` (``floor`` if none is above it)."""
    while True:
        j = text.rfind("\n", floor, i)
        if j < floor + 1:
            return floor
        if _is_safe_cut(text, j + 1):
            return j + 1
        i = j


def _safe_cut_after(text: str, i: int) -> int:
    """The first safe cut at or after ``i`` (the end of the text if none)."""
    while True:
        j = text.find("\n", max(i - 1, 0))
        if j < 0 or j + 1 >= len(text):
            return len(text)
        if j >= 1 and _is_safe_cut(text, j + 1):
            return j + 1
        i = j + 2

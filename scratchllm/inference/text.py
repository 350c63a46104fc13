"""Text as it is generated: token ids in, printable text out, one token at a time.

A byte-level token can end in the middle of a UTF-8 character ("é" is two bytes, which may be two
tokens), so the bytes are decoded incrementally: a split character comes out whole with the token
that completes it, and the pieces joined equal ``tokenizer.decode`` of the whole sequence (bytes
that never form a character become U+FFFD, as there).

>>> from scratchllm.tokenizer import BPETokenizer
>>> tok = BPETokenizer.train("abc", vocab_size=258, progress=False)  # bytes only, no merges
>>> ids = tok.encode("né!")
>>> len(ids)  # "é" is two byte tokens
4
>>> text = TextStream(tok)
>>> [text.push(i) for i in ids]
['n', '', 'é', '!']
>>> text.finish()
''
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol


class Detokenizer(Protocol):
    def decode_bytes(self, ids: list[int]) -> bytes: ...


class TextStream:
    """Decode one sequence's tokens as they come: ``push`` each id, then ``finish``."""

    def __init__(self, tokenizer: Detokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text this token completes ('' while a character is still split)."""
        return self._utf8.decode(self.tokenizer.decode_bytes([int(token_id)]))

    def finish(self) -> str:
        """What is left at the end: U+FFFD for a character that was never completed, else ''."""
        return self._utf8.decode(b"", final=True)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its first stop string, and whether there was one.

    >>> cut_at_stop("yes### no", ["###"])
    ('yes', True)
    """
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class StopStrings:
    """Cut a stream of text pieces at the first stop string: ``push`` each piece, ``flush`` at the end.

    A stop string can begin in one piece and end in a later one ("EN" + "D"), so text that could
    be its start is held back until the next piece decides.

    >>> stops = StopStrings(["END", "\\n\\n"])
    >>> stops.push("Hello E"), stops.push("N"), stops.push("D and more")
    (('Hello ', False), ('', False), ('', True))
    >>> stops = StopStrings(["END"])
    >>> stops.push("tEN"), stops.push("t"), stops.flush()
    (('t', False), ('ENt', False), '')
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""  # the end of the text so far that a stop string could begin with

    def push(self, piece: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was found); after True, ignore what follows."""
        text, stopped = cut_at_stop(self.held + piece, self.stops)
        if stopped:
            self.held = ""
            return text, True
        keep = 0
        for k in range(min(len(text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stops):
                keep = k
                break
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held text, once no token can follow."""
        held, self.held = self.held, ""
        return held

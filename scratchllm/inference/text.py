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

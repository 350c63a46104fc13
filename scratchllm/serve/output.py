"""One choice's text as its tokens arrive: UTF-8 pieces, stop strings that span tokens, and which
tokens' log-probabilities go with which piece.

A stop string can begin in one token and end in a later one ("EN" + "D"), so text that could be
the start of a stop string is held back until the next token says whether it is; what a client
receives never contains a stop string or anything after it, streamed or not.

The cutting itself is ``scratchllm.inference.StopStrings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scratchllm.inference import StopStrings, TextStream
from scratchllm.serve.batcher import TokenEvent


@dataclass
class Delta:
    """What one token adds to a choice: ``text`` to send, the ``tokens`` whose text starts in it
    as (offset of that start in the choice's text, token): their log-probabilities go with it; and
    ``finish`` ("stop", "length") when the choice ended."""

    text: str = ""
    tokens: list[tuple[int, TokenEvent]] = field(default_factory=list)
    finish: str | None = None


class ChoiceOutput:
    """The text of one choice, token by token. A token that is one of the stop ids (end of text)
    ends the choice without text of its own, as in OpenAI's API.

    The deltas joined are ``tokenizer.decode`` of the new tokens, cut before the first stop string.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self._utf8 = TextStream(tokenizer)
        self._stops = StopStrings(stop_strings)
        self.text = ""  # sent so far
        self.n_tokens = 0  # tokens the model produced for it (its usage)
        self.finish: str | None = None
        self._decoded = 0  # characters decoded so far, sent or held
        self._pending: list[tuple[int, TokenEvent]] = []  # (where its text starts, token), not sent yet

    def push(self, event: TokenEvent) -> Delta:
        """Take the choice's next token."""
        if self.finish is not None:  # tokens decoded after a stop string, before the cancel landed
            return Delta()
        self.n_tokens += 1
        if event.finished == "stop":  # a stop id: its own text is not part of the answer
            piece = self._utf8.finish()
        else:
            piece = self._utf8.push(event.token)
            self._pending.append((self._decoded, event))
            if event.finished:
                piece += self._utf8.finish()
        self._decoded += len(piece)
        sent, stopped = self._stops.push(piece)
        if not stopped and event.finished:
            sent += self._stops.flush()
        self.text += sent
        if stopped or event.finished:
            self.finish = "stop" if stopped else event.finished
        # a token goes out with the piece its text starts in; at a stop string, those that began before it
        if self.finish is not None and not stopped:
            tokens, self._pending = self._pending, []
        else:
            tokens = [(start, t) for start, t in self._pending if start < len(self.text)]
            self._pending = [] if stopped else [(s, t) for s, t in self._pending if s >= len(self.text)]
        return Delta(sent, tokens, self.finish)

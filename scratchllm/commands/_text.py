"""Text a user gives a command (``--prompt``, ``--text``, standard input): checked to be UTF-8."""

from __future__ import annotations

import argparse
import sys

from scratchllm.errors import ScratchLLMError


def user_text(text: str, source: str) -> str:
    """``text`` as given on the command line, refused in one line when it is not valid UTF-8.

    Python turns the bytes of an argument that are not UTF-8 into lone surrogates; encoding them
    later would end in a traceback deep inside the tokenizer.

    >>> user_text("caf\\udce9", "--prompt")
    Traceback (most recent call last):
    ...
    scratchllm.errors.ScratchLLMError: --prompt is not valid UTF-8 (byte 0xe9 at character 3): give UTF-8 text
    """
    for i, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            raise ScratchLLMError(f"{source} is not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at character {i}): "
                                  "give UTF-8 text")
    return text


def add_special_flags(parser: argparse.ArgumentParser) -> None:
    """``--allow-special`` / ``--special-as-text``: what a special-token string in the user's text becomes
    (by default it is refused, so that typed text cannot inject control tokens unnoticed)."""
    special = parser.add_mutually_exclusive_group()
    special.add_argument("--allow-special", action="store_true", help="encode special-token strings as their ids")
    special.add_argument("--special-as-text", action="store_true", help="encode special-token strings as plain text")


def special_mode(args: argparse.Namespace) -> str:
    """The ``special=`` argument of ``BPETokenizer.encode_user_text`` the flags ask for."""
    return "allow" if args.allow_special else "text" if args.special_as_text else "refuse"


def read_stdin() -> str:
    """All of standard input decoded as UTF-8, refused in one line when it is not."""
    stdin = sys.stdin
    data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScratchLLMError(f"standard input is not valid UTF-8 (byte 0x{data[err.start]:02x} at byte {err.start}): "
                              "give UTF-8 text") from None

"""Text a user gives a command (``--prompt``, ``--text``, standard input): checked to be UTF-8."""

from __future__ import annotations

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


def read_stdin() -> str:
    """All of standard input decoded as UTF-8, refused in one line when it is not."""
    stdin = sys.stdin
    data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScratchLLMError(f"standard input is not valid UTF-8 (byte 0x{data[err.start]:02x} at byte {err.start}): "
                              "give UTF-8 text") from None

"""The one exception type for mistakes a user can fix.

Library code raises ``ScratchLLMError`` with a message that says what was wrong and how to
fix it, in one line; the CLI prints that line and exits non-zero instead of a traceback.
"""

import difflib
import math
from collections.abc import Iterable


class ScratchLLMError(ValueError):
    """A bad input, file or setting, described in one actionable line."""


def did_you_mean(wrong: str, choices: Iterable[str], cutoff: float = 0.6, prefix: str = "") -> str:
    """The hint a misspelt name gets: ``"; did you mean 'x'?"``, or ``""`` when nothing is close.

    >>> did_you_mean("tokenzer", ["tokenizer", "train"])
    "; did you mean 'tokenizer'?"
    """
    close = difflib.get_close_matches(str(wrong), list(choices), n=1, cutoff=cutoff)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def check_range(name: str, value: float, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, note: str = "") -> None:
    """Raise a one-line ``ScratchLLMError`` naming ``name``, ``value`` and the allowed range unless
    ``value`` is a finite number in it (``low_open``/``high_open`` exclude that end); ``note``
    explains a special value, e.g. ``"0 = off"``.

    >>> check_range("train.grad_clip", -1.0, 0, note="0 = off")
    Traceback (most recent call last):
    ...
    scratchllm.errors.ScratchLLMError: train.grad_clip must be >= 0 (0 = off), got -1.0
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if ok:
        return
    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'<' if high_open else '<='} {high:g}"
    else:
        allowed = "a finite number"
    raise ScratchLLMError(f"{name} must be {allowed}{f' ({note})' if note else ''}, got {value!r}")

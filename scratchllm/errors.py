"""The one exception type for mistakes a user can fix.

Library code raises ``ScratchLLMError`` with a message that says what was wrong and how to
fix it, in one line; the CLI prints that line and exits non-zero instead of a traceback.
"""

import difflib
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

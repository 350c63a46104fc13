"""The one exception type for mistakes a user can fix.

Library code raises ``ScratchLLMError`` with a message that says what was wrong and how to
fix it, in one line; the CLI prints that line and exits non-zero instead of a traceback.
"""


class ScratchLLMError(ValueError):
    """A bad input, file or setting, described in one actionable line."""

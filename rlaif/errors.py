"""User-facing errors. The CLI prints them as one line and exits non-zero."""


class RlaifError(ValueError):
    """Bad input or configuration; the message says what is wrong and how to fix it."""

"""User-facing errors: each message is one line naming the problem and the fix."""


class OnnxqError(Exception):
    """An error caused by the user's input, reported without a traceback."""

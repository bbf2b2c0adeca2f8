"""The one user-facing error type: the CLI prints its message on one line and exits with code 2."""


class PtmbenchError(Exception):
    """Bad input or an unusable resource; the message names the culprit and the fix."""

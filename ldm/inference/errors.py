"""The one error type a script turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """A problem with what the user asked for (a flag, a file, the machine), stated in one line
    that says what to do about it."""

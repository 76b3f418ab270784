"""The one error type of the inference layer: the scripts turn it into one line on stderr and exit
code 2; the Python API raises it as it is (a ValueError, so ``except ValueError`` catches it)."""


class UsageError(ValueError):
    """A problem with what the user asked for (an option, a file, the machine), stated in one line
    that says what to do about it."""

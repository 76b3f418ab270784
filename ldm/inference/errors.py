"""The errors of the inference layer. The scripts turn a UsageError into one line on stderr and
exit code 2, and an interrupted run into ``interrupted: N image(s) saved in DIR`` and exit code
130; the Python API raises them as they are (UsageError is a ValueError)."""


class UsageError(ValueError):
    """A problem with what the user asked for (an option, a file, the machine), stated in one line
    that says what to do about it."""


class RunInterrupted(Exception):
    """Ctrl-C during a script's run, after ``saved`` images were written to ``outdir``."""

    def __init__(self, saved: int, outdir: object):
        super().__init__(f"{saved} image(s) saved in {outdir}")
        self.saved = saved
        self.outdir = outdir

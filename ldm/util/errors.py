"""The errors of checkpoint handling, and the one-line form of an exception's message that
user-facing errors quote."""
from __future__ import annotations

from typing import Optional


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose tensors do not fit the model built from the config (missing,
    unused or mis-shaped tensors); the message names them per model component."""


class UntrustedConfigError(ValueError):
    """A config the user did not name (found beside a checkpoint) asks for something only a
    trusted config may: building a class outside ldm's models, or a file too large to read."""


def first_line(err: BaseException, after: Optional[str] = None) -> str:
    """The first line of ``err``'s message (of the part after ``after``, when the message holds
    it), or the exception's type name when the message is empty."""
    text = str(err)
    if after is not None and after in text:
        text = text.split(after, 1)[1]
    text = text.strip()
    return text.splitlines()[0] if text else type(err).__name__

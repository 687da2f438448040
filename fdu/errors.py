"""The errors fdu raises for a user to act on. The command line prints each as one line (what is wrong
and what to do) and exits with code 2; anything else is a bug and shows its traceback."""
from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """A loss, a gradient or a parameter became inf or NaN; nothing non-finite was written."""


class NonFiniteLossError(NonFiniteError):
    """The loss became inf or NaN; the parameters were not updated with it."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file cannot be read back (truncated, empty, not a checkpoint, non-finite values)."""

    def __init__(self, path, reason: str, previous=None):
        self.path, self.reason, self.previous = path, reason, previous
        offer = (f"; the previous good checkpoint is {previous} (--resume uses it)" if previous else
                 "; no earlier good checkpoint exists")
        super().__init__(f"the checkpoint {path} is corrupted ({reason}){offer}. Delete the file to go on "
                         "without it")


class ResumeMismatchError(ValueError):
    """The options of a resumed run differ from those of its checkpoint where they must not."""

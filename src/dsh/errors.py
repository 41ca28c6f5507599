"""The errors a user can cause, as types of their own, so that a bug inside dsh is never reported as their fault.

Every error here carries a one-line message that names the file, flag or setting at fault. The command line turns
exactly these (and nothing else) into ``dsh: error: ...`` and exit status 2; any other exception is a bug and keeps
its traceback. The HTTP service maps them to 4xx answers.

``DataError``, ``InputError`` and ``ConfigError`` also derive from ``ValueError``: each is a value (a file's
contents, an argument, a setting) that is wrong, which is what ``ValueError`` means in Python, so ``except
ValueError`` catches them as it catches numpy's and the standard library's complaints about values.
"""

from __future__ import annotations

__all__ = ["UserError", "DataError", "InputError", "ConfigError", "ModelFileError", "TrainingError", "one_line"]


class UserError(Exception):
    """A problem with what the user gave dsh (a file, a folder, a flag, an image, a setting)."""


class DataError(UserError, ValueError):
    """A file or folder that is missing, unreadable, corrupt, or does not fit what it is used with."""


class InputError(UserError, ValueError):
    """A value passed in that is out of range or of the wrong kind (an array shape, a hex code, ``k``, a radius)."""


class ConfigError(UserError, ValueError):
    """A training setting that is unknown, of the wrong type or out of range."""


class ModelFileError(DataError):
    """A checkpoint or exported model that is not a dsh model, cannot be loaded safely, or does not match."""


class TrainingError(UserError):
    """Training could not go on with the settings given (e.g. the loss became NaN)."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message squeezed onto one line (its type's name if it has none), at most ``limit`` chars."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The command line, ``dsh COMMAND``: each command parses its flags, calls one library function and prints."""

from __future__ import annotations

from .commands import main

__all__ = ["main"]

"""torch where it can be used, else ``None``, for the code that works with or without it.

A torch that is installed but broken (a mismatched build, a missing shared library) raises ``ImportError`` on
import, not ``ModuleNotFoundError``; either way the torch-free path goes on, and a broken one is said once on
stderr, with why, so that a user who expected torch learns the reason."""

from __future__ import annotations

import functools
import sys

from ..errors import one_line

__all__ = ["optional_torch", "torch_failure"]


@functools.cache
def optional_torch():
    """The ``torch`` module, or ``None`` where it is absent or cannot be imported (said once on stderr)."""
    try:
        import torch
    except ImportError as e:
        if not (isinstance(e, ModuleNotFoundError) and e.name == "torch"):
            print(f"dsh: warning: torch is installed but cannot be imported ({type(e).__name__}: "
                  f"{one_line(e, limit=300)}); going on without it", file=sys.stderr)
        return None
    return torch


def torch_failure(error: ImportError) -> str | None:
    """Why ``error`` came from inside torch (or torchvision) being imported, as one line, or ``None`` where it did
    not: a command that needs torch then fails with this reason instead of a traceback."""
    tb = error.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".")[0] in ("torch", "torchvision"):
            return f"{type(error).__name__}: {one_line(error, limit=300)}"
        tb = tb.tb_next
    return None

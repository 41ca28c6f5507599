"""Atomic file writing. (``DataError`` and ``one_line`` live in :mod:`dsh.errors`; they are re-exported here.)"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, IO

from .errors import DataError, UserError, one_line  # noqa: F401  (re-exported)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on failure remove it.

    A crash mid-write therefore never leaves a half-written file where a good one used to be.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DataError(f"{path}: cannot write here ({e.strerror or one_line(e)})") from None
    # mkstemp makes the file private (0600); give it the permissions a plain open() would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:  # disk full, a folder in the way, permissions
            raise DataError(f"{path}: cannot write ({e.strerror or one_line(e)})") from e
        raise

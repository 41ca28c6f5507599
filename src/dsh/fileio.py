"""Atomic file writing. (``DataError`` and ``one_line`` live in :mod:`dsh.errors`; they are re-exported here.)"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
import tempfile
from pathlib import Path
from typing import Iterator, IO

from .errors import DataError, one_line  # noqa: F401  (re-exported)


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


# dsh's binary files (index, catalog) end with a CRC-32 (zlib) of every byte before it and an end marker
TRAILER = struct.Struct("<I4s")
END_MARKER = b"DSHE"


def check_trailer(f: IO[bytes], path: Path, size: int, expected: int, what: str, verify: bool = True) -> None:
    """The checks every dsh binary file gets after its header: its size is the ``expected`` one, it ends with
    :data:`TRAILER`, and (with ``verify``) the CRC-32 of everything before the trailer matches. One-line
    :class:`DataError` naming ``path`` and ``what`` the file is (``"index"``, ``"catalog"``) otherwise."""
    if size != expected:
        state = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: {size} bytes, the {what} header says {expected}")
    f.seek(size - TRAILER.size)
    crc, end = TRAILER.unpack(f.read(TRAILER.size))
    if end != END_MARKER:
        raise DataError(f"{path}: corrupt {what} file (no end marker)")
    if not verify:
        return
    f.seek(0)
    got, left = 0, size - TRAILER.size
    while left:
        buf = f.read(min(left, 1 << 22))  # bounded reads: the file may be larger than memory
        if not buf:
            raise DataError(f"{path}: {what} file shrank while being read")
        got = zlib.crc32(buf, got)
        left -= len(buf)
    if got != crc:
        raise DataError(f"{path}: checksum mismatch: the {what} file is corrupt or was altered")

"""Atomic file writing: a temporary beside the target renamed over it; a write that fails, for a full disk or a
file-size limit among other reasons, leaves the previous file as it was, no temporary, and one line naming the file.
Also the checksummed header and trailer of dsh's binary files, and a lock on a folder for writers of files that
belong together."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from ..errors import DataError, one_line

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

# the write failed for want of space: the disk (or the user's quota) is full, or the file passed a size limit
NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def _temp_prefix(path: Path) -> str:
    # the writer's pid is in the name, so a later write can tell a temporary left by a killed process (remove it)
    # from one another live writer is still filling (leave it)
    return f".{path.name}.dsh-{os.getpid()}-"


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that :func:`atomic_write` left beside ``path`` when its process was killed (their
    writer's pid no longer runs); returns what was removed. Other files are never touched."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{path.name}.dsh-*-*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        pid_text = tmp.name[len(f".{path.name}.dsh-"):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # a process of another user runs under that pid: not ours to judge
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on failure remove it.

    A crash mid-write therefore never leaves a half-written file where a good one used to be. A process killed
    outright (``kill -9``) cannot remove its temporary: the next write to the same ``path`` does
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in NO_SPACE:
            raise write_error(path, e) from None
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
        _fsync_folder(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = os_error_in(e)
        if cause is not None:  # disk full, a folder in the way, permissions
            raise write_error(path, cause) from e
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: files written in turn (an index, then its log) reach the disk in that
    order after a power cut, not only after a crash of the process."""
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def os_error_in(e: BaseException) -> OSError | None:
    """The ``OSError`` that ``e`` is or that led to it. Some writers turn the ``OSError`` of a failed ``write``
    into their own error (``torch.save`` raises a ``RuntimeError`` whose context it is)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


# numpy's ndarray.tofile (np.save to a file) reports a write cut short by a full disk without the errno
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def write_error(path: Path, e: OSError) -> DataError:
    """The one line for an ``OSError`` while writing ``path``."""
    why = e.strerror or one_line(e)
    if e.errno in NO_SPACE or (e.errno is None and _SHORT_WRITE.search(str(e))):
        return DataError(f"{path}: cannot write: out of space ({why}); the previous file, if any, is unchanged")
    return DataError(f"{path}: cannot write ({why})")


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make the renames done in ``folder`` durable (a crash of the machine cannot undo them out of order), where
    the system allows it; otherwise nothing."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself (no lock file is made): writers of files that belong
    together (an index and its catalog) take it so that two saves in one folder do not interleave. Where the
    folder cannot be locked (no ``fcntl``, a file system without locks) nothing is locked."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


# dsh's binary files (index, catalog) end with a CRC-32 (zlib) of every byte before it and an end marker
TRAILER = struct.Struct("<I4s")
END_MARKER = b"DSHE"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically; NaN and infinities as ``null``, so any JSON reader loads it."""
    with atomic_write(path, "w") as f:
        json.dump(_finite(obj), f, indent=2)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` written atomically, as UTF-8 whatever the locale."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_header(f: IO[bytes], path: Path, size: int, header: struct.Struct, magic: bytes, version: int,
                what: str) -> tuple:
    """The fixed header every dsh binary file starts with (``magic``, then its format version), unpacked; a
    one-line :class:`DataError` naming ``path`` and ``what`` the file is where it is not such a file, is cut
    short, or has another version."""
    head = f.read(header.size)
    if head[: len(magic)] != magic:
        if len(head) < len(magic) and magic.startswith(head):
            raise DataError(f"{path}: truncated {what} file ({size} bytes)")
        raise DataError(f"{path}: not a dsh {what} file (no {magic.decode()} magic)")
    if len(head) < header.size:
        raise DataError(f"{path}: truncated {what} file ({size} bytes, header alone is {header.size})")
    fields = header.unpack(head)
    if fields[1] != version:
        raise DataError(f"{path}: {what} format version {fields[1]}, this dsh reads version {version}")
    return fields


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

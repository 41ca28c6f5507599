"""A run folder claimed by one training at a time: an OS lock on ``RUN/.lock`` held for the run's lifetime.

Two ``dsh train --out R`` at once would otherwise both write ``R`` and leave it holding files of both. The lock is
``fcntl.flock`` (exclusive, non-blocking) on ``RUN/.lock``: the kernel releases it when its process ends, however
it ends, so a run killed with ``kill -9`` never leaves its folder locked, and ``--resume`` of that folder simply
takes the lock again. The second claimant gets a one-line :class:`~dsh.errors.DataError` naming the folder and the
process holding it. In a distributed run only rank 0 claims the folder (it alone writes there).

The lock file holds the holder's pid (for the message) and is removed when the lock is released. Where ``fcntl``
does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import DataError, one_line

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

__all__ = ["LOCK_NAME", "RunLock", "check_unlocked", "lock_held"]

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        if text.isdigit():
            return f" (pid {int(text)})"
    return ""


def _busy(run_dir: Path, lock_path: Path) -> DataError:
    return DataError(f"{run_dir}: another dsh train{_holder(lock_path)} is writing this run folder; wait for it to "
                     f"finish or choose another --out")


class RunLock:
    """``acquire()`` claims ``run_dir`` (creating it) or raises; ``release()`` lets it go. ``created_dir`` says
    whether ``acquire`` made the folder (so a failed run knows it may remove it again)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.created_dir = False
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.created_dir = False
            raise DataError(f"{self.run_dir}: cannot create the run folder ({e.strerror or one_line(e)})") from None
        if fcntl is None:  # pragma: no cover
            self._fd = -1
            return
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DataError(f"{self.path}: cannot create the run folder's lock file "
                                f"({e.strerror or one_line(e)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _busy(self.run_dir, self.path) from None
            except OSError as e:  # a file system without locks
                os.close(fd)
                raise DataError(f"{self.path}: cannot lock the run folder ({e.strerror or one_line(e)})") from None
            # the holder before us may have removed the file between our open and our lock: then we hold a lock
            # on a file nobody else will open; try again with the file now at that path
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)
        raise _busy(self.run_dir, self.path)  # pragma: no cover - the lock file kept changing under us

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None or fd == -1:
            return
        # removed while still locked, so no one can take the lock on a file that is about to disappear
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(fd)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_unlocked(run_dir: str | os.PathLike) -> None:
    """Raise the one-line busy error if a live process holds ``run_dir``'s lock; creates nothing (for a launcher
    that checks before starting the processes that will claim the folder)."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    if lock_held(path):
        raise _busy(run_dir, path)


def lock_held(path: str | os.PathLike) -> bool:
    """Whether a live process holds an exclusive ``flock`` on the file ``path`` (``False`` where there is no such
    file, or no ``fcntl``); creates nothing."""
    if fcntl is None or not os.path.isfile(path):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False

"""One thread setting for both of dsh's thread pools: torch's (the network) and numba's (metrics, the index).

They have to be set together and in this order. numba's threading layer is started by its first parallel call
or by ``numba.set_num_threads``, and starting it can reset the OpenMP thread count that torch shares with it to
every core: a run told ``--threads 1`` trained on 2 threads after its first validation (which computes the mAP with
numba), and on a machine shared by several processes their steps slowed 10-30x. :func:`set_threads` therefore
starts numba's threads at the count asked for and sets torch's count again afterwards.

No torch needed here: each library is set only where it is installed.
"""

from __future__ import annotations

from ..errors import InputError
from .optional_torch import optional_torch

__all__ = ["set_threads", "thread_counts"]


def set_threads(threads: int | None) -> int | None:
    """Let torch and numba both use ``threads`` threads in this process (numba at most ``NUMBA_NUM_THREADS``, the
    size of its pool); ``None`` (or 0) leaves both as they are. Returns the count set, or ``None``."""
    if not threads:
        return None
    threads = int(threads)
    if threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    torch = optional_torch()  # the core install has no torch: numba alone
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:
        numba = None
    if numba is not None:
        # the first call launches numba's threading layer, which may reset torch's (OpenMP's) count: set it again
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        if torch is not None:
            torch.set_num_threads(threads)
    return threads


def thread_counts() -> dict[str, int | None]:
    """``{"torch": n, "numba": n}`` for this process (``None`` where the library is not installed)."""
    out: dict[str, int | None] = {"torch": None, "numba": None}
    torch = optional_torch()
    if torch is not None:
        out["torch"] = torch.get_num_threads()
    try:
        import numba

        out["numba"] = numba.get_num_threads()
    except ImportError:
        pass
    return out

"""Hamming distances between packed codes (no torch).

``pairwise_hamming(q, db)`` is the one place that turns two packed code arrays into a distance matrix; the index
and the metrics both build on it. ``pairwise_hamming_reference`` is the same in plain numpy, slow and obvious,
kept as the reference the fast path is tested against.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["pairwise_hamming", "pairwise_hamming_reference"]

# popcount of every byte value
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _check(q: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(q, dtype=np.uint8)
    db = np.ascontiguousarray(db, dtype=np.uint8)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise InputError(f"code arrays must be 2-D with equal widths, got {q.shape} and {db.shape}")
    return q, db


def pairwise_hamming(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """``uint8[nq, w]`` x ``uint8[n, w]`` -> ``int32[nq, n]`` Hamming distances (numba, multi-threaded)."""
    q, db = _check(q, db)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    if out.size == 0:
        return out
    from . import kernels as K  # numba is imported on first use, so `import dsh.codes.hamming` stays light

    X, Q = K.as_words(db), K.as_words(q)
    x, n, W = X.reshape(-1), X.shape[0], X.shape[1]
    K.run_parallel(lambda a, b: K.pairwise_rows(x, n, W, Q, a, b, out), q.shape[0], per_task=16)
    return out


def pairwise_hamming_reference(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Same as :func:`pairwise_hamming`, in plain numpy: a byte-wise popcount table."""
    q, db = _check(q, db)
    out = np.zeros((q.shape[0], db.shape[0]), dtype=np.int32)
    for b in range(q.shape[1]):
        out += _POPCOUNT8[q[:, b, None] ^ db[None, :, b]]
    return out

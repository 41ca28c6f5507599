"""Hamming distances between packed codes (no torch).

``pairwise_hamming(q, db)`` is the one place that turns two packed code arrays into a distance matrix; the index
and the metrics both build on it.
"""

from __future__ import annotations

import numpy as np

# popcount of every byte value
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pairwise_hamming(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """``uint8[nq, w]`` x ``uint8[n, w]`` -> ``int32[nq, n]`` Hamming distances (reference numpy version)."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    db = np.ascontiguousarray(db, dtype=np.uint8)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"code arrays must be 2-D with equal widths, got {q.shape} and {db.shape}")
    out = np.zeros((q.shape[0], db.shape[0]), dtype=np.int32)
    for b in range(q.shape[1]):
        out += _POPCOUNT8[q[:, b, None] ^ db[None, :, b]]
    return out

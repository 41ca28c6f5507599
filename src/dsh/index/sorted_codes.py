"""The distinct codes of an index in sorted order: queries equal to a code are looked up, and scans skip blocks.

Learned codes cluster (a CIFAR-10 48-bit database of 50,000 images holds about 10,000 distinct codes around ten
class codes). Sorted by their words, neighbouring codes share their leading bits, so the codes of a block of
:data:`BLOCK` sorted places agree on many bits (24 of 48 on average for those CIFAR-10 codes): the distance from a
query to every code of a block is at least the number of those agreed bits where the query differs, one popcount
for the whole block. A k-NN scan that visits the blocks nearest bound first and stops at the first whose bound
reaches the k-th distance (:func:`dsh.codes.group_kernels.knn_scan_sorted`) reads, at k = 10, about one block in
fifteen for the CIFAR-10 test queries, one in five for those that no single code answers whole; results are exactly
the plain scan's.

The structure costs ``4 + 9 * W`` bytes per distinct code (``W`` words a code), so an index keeps it only where
codes repeat enough for that to stay within :data:`BYTES_PER_ITEM` per item (:func:`worth_keeping`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codes import group_kernels as G
from ..codes import kernels as K
from .distinct import position_dtype

__all__ = ["SortedCodes", "BLOCK", "BYTES_PER_ITEM", "worth_keeping"]

BLOCK = 16  # sorted codes per bound: smaller blocks agree on more bits, larger ones cost fewer bounds
BYTES_PER_ITEM = 4.0  # the most memory per item the sorted copy may add


def worth_keeping(u: int, n: int, words_per_code: int) -> bool:
    """Whether an index of ``n`` items with ``u`` distinct codes (``u < n``: codes repeat) keeps its codes'
    sorted copy: at most :data:`BYTES_PER_ITEM` per item."""
    return 0 < u < n and (4 + 9 * words_per_code) * u <= BYTES_PER_ITEM * n


@dataclass(frozen=True)
class SortedCodes:
    order: np.ndarray  # int32/int64[u]: the distinct code (row of the index's distinct codes) at each sorted place
    words: np.ndarray  # uint64[u, W]: the codes in sorted order, lexicographically by word (word 0 first)
    fixed: np.ndarray  # uint64[nblocks, W]: per block, the bits on which all its codes agree
    value: np.ndarray  # uint64[nblocks, W]: per block, those bits' values (0 elsewhere)

    @property
    def nbytes(self) -> int:
        return int(self.order.nbytes + self.words.nbytes + self.fixed.nbytes + self.value.nbytes)

    @property
    def agreed_bits(self) -> float:
        """Bits a block's codes agree on, averaged over blocks (the zero padding of the last word counted in)."""
        return float(np.unpackbits(self.fixed.view(np.uint8), axis=1).sum(axis=1).mean()) if len(self.fixed) else 0.0

    @classmethod
    def build(cls, words: np.ndarray) -> "SortedCodes":
        """Sort ``words`` (``uint64[u, W]``, the distinct codes) and bound each block."""
        u, W = words.shape
        order = np.lexsort(words.T[::-1]) if W > 1 else np.argsort(words[:, 0], kind="stable")
        S = np.ascontiguousarray(words[order])
        nblocks = -(-u // BLOCK)
        # pad the last block with copies of the last code, which change neither its AND nor its OR
        padded = np.concatenate([S, np.repeat(S[-1:], nblocks * BLOCK - u, axis=0)]) if u else S
        blocks = padded.reshape(nblocks, BLOCK, W)
        both = np.bitwise_and.reduce(blocks, axis=1)
        either = np.bitwise_or.reduce(blocks, axis=1)
        fixed = ~(both ^ either)
        return cls(order.astype(position_dtype(u)), S, np.ascontiguousarray(fixed),
                   np.ascontiguousarray(both & fixed))

    def exact(self, Q: np.ndarray, goff: np.ndarray, k: int) -> np.ndarray:
        """Per query (``uint64[nq, W]``), the distinct code equal to it when that code alone stands for at least
        ``k`` items (group offsets ``goff``), else -1: ``int64[nq]``."""
        S, W = self.words.reshape(-1), self.words.shape[1]
        parts = K.run_parallel(lambda a, b: G.exact_groups(S, self.order, W, Q[a:b], goff, int(k)), len(Q),
                               per_task=256)
        return np.concatenate(parts)

    def knn(self, Q: np.ndarray, k: int, nbits: int, goff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query (``uint64[nq, W]``) every distinct code within its weighted k-th distance, as
        :func:`dsh.codes.group_kernels.knn_scan_groups` returns them: ``(counts int64[nq], D int32[total],
        U int64[total])``."""
        S, u, W = self.words.reshape(-1), self.words.shape[0], self.words.shape[1]
        f, v = self.fixed.reshape(-1), self.value.reshape(-1)
        parts = K.run_parallel(lambda a, b: G.knn_scan_sorted(S, self.order, f, v, BLOCK, u, W, Q, a, b, int(k),
                                                              int(nbits), goff), len(Q), per_task=16)
        return K.join_parts(parts)

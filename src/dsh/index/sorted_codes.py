"""The distinct codes of an index in sorted order: queries equal to a code are looked up, and scans skip tiles
and blocks.

Learned codes cluster (a CIFAR-10 48-bit database of 50,000 images holds about 10,000 distinct codes around ten
class codes). Sorted by their words, neighbouring codes share their leading bits. The sorted codes are cut into
tiles of :data:`~dsh.codes.group_kernels.TILE` (256) places, each of 16 blocks of 16: the codes of a tile agree on
some bits, and the number of those where a query differs bounds its distance to all of them, one popcount a tile;
reading a tile is one vector pass that gives the exact minimum distance of each of its blocks. A k-NN scan reads
tiles nearest bound first and blocks nearest minimum first across the tiles read, code by code, until neither can
hold a code below the k-th distance (:func:`dsh.codes.group_kernels.knn_scan_sorted`); the k nearest items are
exactly the plain scan's. The codes are stored tiled (one slot of all a tile's blocks side by side), so that the
minima pass runs in vector lanes over blocks. On the CIFAR-10 codes above a k = 10 query costs about 3 us of one
thread here, a third of a scan that bounds blocks of 16 by their agreed bits. At that size the scan in index order
(one vector pass a chunk of 256 codes, and at the k-th distance only the first codes k needs) costs a little less,
and below :data:`SORTED_SCAN_MIN` distinct codes an index scans that way; the sorted copy still serves the look-ups.

The structure costs about ``4 + 8 * W`` bytes per distinct code (``W`` words a code), so an index keeps it only
where codes repeat enough for that to stay within :data:`BYTES_PER_ITEM` per item (:func:`worth_keeping`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codes import group_kernels as G
from ..codes import kernels as K
from .distinct import Groups, position_dtype

__all__ = ["SortedCodes", "BYTES_PER_ITEM", "SORTED_SCAN_MIN", "worth_keeping"]

BYTES_PER_ITEM = 4.0  # the most memory per item the sorted copy may add
# Below this many distinct codes a k-NN scan reads them in index order (one vector pass a chunk, and at the k-th
# distance only the first codes k needs) rather than the sorted copy, whose tiles then skip too little to pay.
# Measured on the CIFAR-10 48-bit codes (and copies with bits flipped), 227 distinct queries, k = 1 / 10 / 100: in
# index order 0.84 / 0.73 / 0.81 of the sorted scan's time at 9,951 distinct codes, 1.18 / 0.97 / 0.95 at 49,444,
# 1.58 / 1.24 / 0.99 at 198,207
SORTED_SCAN_MIN = 1 << 15


def worth_keeping(u: int, n: int, words_per_code: int) -> bool:
    """Whether an index of ``n`` items with ``u`` distinct codes (``u < n``: codes repeat) keeps its codes'
    sorted copy: at most :data:`BYTES_PER_ITEM` per item."""
    return 0 < u < n and (4 + 8 * words_per_code + words_per_code / 16) * u <= BYTES_PER_ITEM * n


@dataclass(frozen=True)
class SortedCodes:
    order: np.ndarray  # int32/int64[u]: the distinct code (row of the index's distinct codes) at each sorted place
    tiles: np.ndarray  # uint64[ntiles * W * TILE]: the codes in sorted order, tiled (group_kernels._tile_word)
    fixed: np.ndarray  # uint64[ntiles, W]: per tile, the bits on which all its codes agree
    value: np.ndarray  # uint64[ntiles, W]: per tile, those bits' values (0 elsewhere)

    @property
    def nbytes(self) -> int:
        return int(self.order.nbytes + self.tiles.nbytes + self.fixed.nbytes + self.value.nbytes)

    @property
    def words(self) -> np.ndarray:
        """The codes in sorted order, ``uint64[u, W]`` (a copy, out of the tiles)."""
        u, W = len(self.order), self.fixed.shape[1]
        T = self.tiles.reshape(-1, W, G.BLOCK, G.SUPER)  # tile, word, slot, block
        return np.ascontiguousarray(T.transpose(0, 3, 2, 1).reshape(-1, W)[:u])

    @property
    def agreed_bits(self) -> float:
        """Bits a tile's codes agree on, averaged over tiles (the zero padding of the last word counted in)."""
        return float(np.unpackbits(self.fixed.view(np.uint8), axis=1).sum(axis=1).mean()) if len(self.fixed) else 0.0

    @classmethod
    def build(cls, words: np.ndarray) -> "SortedCodes":
        """Sort ``words`` (``uint64[u, W]``, the distinct codes), tile them and bound each tile."""
        u, W = words.shape
        order = np.lexsort(words.T[::-1]) if W > 1 else np.argsort(words[:, 0], kind="stable")
        S = words[order]
        ntiles = -(-u // G.TILE)
        # pad the last tile with copies of the last code, which change neither its AND nor its OR nor a block's
        # minimum (scans stop at place u)
        padded = np.concatenate([S, np.repeat(S[-1:], ntiles * G.TILE - u, axis=0)]) if u else S
        tiles = padded.reshape(ntiles, G.SUPER, G.BLOCK, W)  # tile, block, slot, word
        per_tile = padded.reshape(ntiles, G.TILE, W)
        both = np.bitwise_and.reduce(per_tile, axis=1)
        either = np.bitwise_or.reduce(per_tile, axis=1)
        fixed = ~(both ^ either)
        tiled = np.ascontiguousarray(tiles.transpose(0, 3, 2, 1)).reshape(-1)  # tile, word, slot, block
        return cls(order.astype(position_dtype(u)), tiled, np.ascontiguousarray(fixed),
                   np.ascontiguousarray(both & fixed))

    def exact(self, Q: np.ndarray, goff: np.ndarray, k: int) -> np.ndarray:
        """Per query (``uint64[nq, W]``), the distinct code equal to it when that code alone stands for at least
        ``k`` items (group offsets ``goff``), else -1: ``int64[nq]``."""
        W = self.fixed.shape[1]
        parts = K.run_parallel(lambda a, b: G.exact_groups(self.tiles, self.order, W, Q[a:b], goff, int(k)),
                               len(Q), per_task=256)
        return np.concatenate(parts)

    def knn(self, Q: np.ndarray, k: int, nbits: int, goff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query (``uint64[nq, W]``) every distinct code within its weighted k-th distance, as
        :func:`dsh.codes.group_kernels.knn_scan_groups` returns them: ``(counts int64[nq], D int32[total],
        U int64[total])``."""
        parts = K.run_parallel(lambda a, b: self._scan(Q, a, b, k, nbits, goff), len(Q), per_task=16)
        return K.join_parts(parts)

    def _scan(self, Q: np.ndarray, a: int, b: int, k: int, nbits: int, goff: np.ndarray) -> tuple:
        """:func:`dsh.codes.group_kernels.knn_scan_sorted` over queries ``a <= i < b``, on this thread."""
        u, W = len(self.order), self.fixed.shape[1]
        return G.knn_scan_sorted(self.tiles, self.order, self.fixed.reshape(-1), self.value.reshape(-1), u, W, Q, a,
                                 b, int(k), int(nbits), goff, G.SUPER)

    def knn_into(self, Q: np.ndarray, k: int, nbits: int, groups: Groups, D: np.ndarray, P: np.ndarray,
                 rows: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        """The k nearest items of each query (``uint64[nq, W]``), ordered by (distance, position), into
        ``D int32[., k]`` and ``P int64[., k]`` (-1 past the results), as :meth:`Groups.expand_into` writes them
        (query ``i`` into row ``rows[i]``, positions or their ``ids``): each thread expands the runs it found
        through ``groups``, one hand-off for both steps."""
        rows = np.arange(len(Q)) if rows is None else rows
        K.run_parallel(lambda a, b: groups.expand_into(self._scan(Q, a, b, k, nbits, groups.goff), k, D, P,
                                                       rows[a:b], ids), len(Q), per_task=64)

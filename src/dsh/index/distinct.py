"""The distinct-code layer of :class:`dsh.index.flat.HammingIndex`: each distinct code kept once, with its items.

Learned codes repeat (a CIFAR-10 48-bit database holds about one distinct code per two images, a 12-bit one one per
twenty), so searches scan, hash and compare distinct codes and expand a result into items only as far as it needs
(:mod:`dsh.codes.group_kernels`). Items are *positions*, rows in ascending id order.

- ``ucodes uint8[u, nbytes]``: the distinct codes, ordered by their first item's position;
- ``goff int[u + 1]``, ``gpos int[n]``: distinct code ``g``'s items are ``gpos[goff[g]:goff[g + 1]]``, ascending.

When no code repeats, ``goff`` and ``gpos`` are empty (the identity layer): ``ucodes`` are then the items' codes
themselves, in position order, and cost nothing more than a plain array of codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codes import group_kernels as G
from ..codes import kernels as K

__all__ = ["Groups", "position_dtype"]

_NONE = np.zeros(0, np.int64)  # an absent row map or id map, as the kernels take it


def position_dtype(n: int) -> type:
    """int32 while positions fit, else int64 (half the memory per item below two billion items)."""
    return np.int32 if n < 2**31 - 1 else np.int64


@dataclass(frozen=True)
class Groups:
    ucodes: np.ndarray  # uint8[u, nbytes]
    goff: np.ndarray  # int32/int64[u + 1], or empty for the identity layer
    gpos: np.ndarray  # int32/int64[n], or empty
    n: int

    @property
    def u(self) -> int:
        return int(self.ucodes.shape[0])

    @property
    def identity(self) -> bool:
        return self.goff.shape[0] == 0

    @property
    def nbytes(self) -> int:
        return int(self.ucodes.nbytes + self.goff.nbytes + self.gpos.nbytes)

    def expand_into(self, runs: tuple, k: int, D: np.ndarray, P: np.ndarray, rows: np.ndarray | None = None,
                    ids: np.ndarray | None = None, parallel: bool = False) -> None:
        """Runs of distinct codes (``counts int64[m]`` (-1: none), ``D``, ``U``, as the k-NN kernels of
        :mod:`dsh.codes.group_kernels` return them) -> each query's k nearest items, ordered by (distance,
        position), into ``D int32[., k]`` and ``P int64[., k]`` (-1 past the results): run ``i`` into row
        ``rows[i]`` (``int64[m]``; row ``i`` where None), as positions or, given ``ids`` (``int64[n]``, ascending
        with position), as their ids; on this thread, or with ``parallel`` split over the kernels' threads."""
        counts, Dg, Ug = runs[0], runs[1], runs[2]
        lims = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(np.maximum(counts, 0), out=lims[1:])
        goff, gpos, k = self.goff, self.gpos, int(k)
        rows = _NONE if rows is None else rows
        ids = _NONE if ids is None else ids
        if parallel:
            K.run_parallel(lambda a, b: G.expand_knn(lims, Dg, Ug, goff, gpos, k, D, P, rows, ids, a, b), len(counts))
        else:
            G.expand_knn(lims, Dg, Ug, goff, gpos, k, D, P, rows, ids, 0, len(counts))

    @classmethod
    def identity_of(cls, codes: np.ndarray) -> "Groups":
        """The identity layer over ``codes`` (``uint8[n, nbytes]``, which must all differ)."""
        empty = np.zeros(0, position_dtype(len(codes)))
        return cls(codes, empty, empty, int(codes.shape[0]))

    @classmethod
    def build(cls, codes: np.ndarray) -> "Groups":
        """Group ``codes`` (``uint8[n, nbytes]``, rows in position order) by value."""
        n, w = codes.shape
        if n < 2:
            return cls.identity_of(codes)
        if w <= 8:
            padded = codes if w == 8 else np.pad(codes, ((0, 0), (0, 8 - w)))
            key = np.ascontiguousarray(padded).view(np.uint64).ravel()
        else:
            key = np.ascontiguousarray(codes).view(np.dtype((np.void, w))).ravel()
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        del key
        u = first.shape[0]
        if u == n:
            return cls.identity_of(codes)
        order = np.argsort(first)  # distinct codes by their first item
        rank = np.empty(u, np.int64)
        rank[order] = np.arange(u)
        dt = position_dtype(n)
        group = rank[inverse.ravel()].astype(np.uint32 if u < 2**32 else np.uint64)
        del inverse, rank
        goff, gpos = K.dense_table(group, u, np.zeros(1, dt))  # positions ascending within each group
        return cls(np.ascontiguousarray(codes[first[order]]), goff, gpos, int(n))

    @classmethod
    def from_arrays(cls, ucodes: np.ndarray, goff: np.ndarray, gpos: np.ndarray, n: int) -> "Groups":
        """A layer read from a file, as is (checked by :meth:`check`)."""
        return cls(ucodes, goff, gpos, int(n))

    def check(self) -> str | None:
        """Why these arrays are not a layer over ``n`` items, or None. Reads every offset and position."""
        u, n = self.u, self.n
        if self.identity:
            return None if u == n else f"{u} codes for {n} items without groups"
        goff, gpos = self.goff, self.gpos
        if goff.shape != (u + 1,) or gpos.shape != (n,) or goff[0] != 0 or goff[-1] != n:
            return "group offsets do not cover the items"
        sizes = np.diff(goff.astype(np.int64))
        if u and sizes.min() < 1:
            return "a group is empty"
        if n and (gpos.min() < 0 or gpos.max() >= n or np.bincount(gpos, minlength=n).max() != 1):
            return "group positions are not each item once"
        inner = np.diff(gpos.astype(np.int64))
        boundary = np.zeros(max(n - 1, 0), bool)
        boundary[goff[1:-1].astype(np.int64) - 1] = True
        if np.any((inner <= 0) & ~boundary):
            return "group positions are not ascending"
        first = gpos[goff[:-1]]
        if np.any(np.diff(first.astype(np.int64)) <= 0):
            return "groups are not ordered by their first item"
        return None

    def item_codes(self) -> np.ndarray:
        """``uint8[n, nbytes]``: every item's code in position order (the codes themselves for the identity
        layer, else a new array)."""
        if self.identity:
            return self.ucodes
        out = np.empty((self.n, self.ucodes.shape[1]), np.uint8)
        out[self.gpos] = np.repeat(self.ucodes, np.diff(self.goff), axis=0)
        return out

    def group_of(self, positions: np.ndarray) -> np.ndarray:
        """Distinct code (row of ``ucodes``) of each position."""
        if self.identity:
            return positions
        inv = np.empty(self.n, np.int64)
        inv[self.gpos] = np.repeat(np.arange(self.u), np.diff(self.goff))
        return inv[positions]

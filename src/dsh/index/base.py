"""What every index backend offers (:class:`Index`), and the argument checks they all share.

A backend is anything with this interface: :class:`dsh.index.flat.HammingIndex` (a file, searched in memory),
:class:`dsh.index.milvus.MilvusIndex` (a Milvus collection), :class:`dsh.index.faiss_file.FaissBinaryIndex` (a faiss
binary index file, read-only). They answer alike, ties included: results are exact and ordered by (distance, id),
so the same codes give the same arrays whatever holds them. :func:`dsh.index.store.open_index` opens any of them;
:class:`dsh.runtime.searcher.Searcher` and the front ends take any of them.

The checks (:func:`check_k`, :func:`check_radius`, :func:`check_new_ids`) are written once here so that every
backend refuses a bad value with the same one-line :class:`dsh.errors.InputError`. :class:`SearchThenLookup` gives a
backend whose records are in this process ``search_records`` and ``range_search_records`` as its search followed
by its lookup; a remote backend answers both in one request of its own.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["Index", "SearchThenLookup", "check_k", "check_radius", "check_new_ids", "check_whole"]


@runtime_checkable
class Index(Protocol):
    """An exact Hamming index over ``nbits``-bit packed codes ``uint8[n, ceil(nbits / 8)]`` with int64 ids >= 0.

    - ``nbits``, ``ntotal``: the code length and how many codes are held now.
    - ``search(q, k)``: ``q`` ``uint8[nq, nbytes]`` -> ``D int32[nq, k]``, ``I int64[nq, k]``, each row ordered by
      (distance, id); where fewer than ``k`` codes are held the tail is ``D = -1``, ``I = -1``.
    - ``range_search(q, radius)``: every code within Hamming distance ``radius`` (inclusive) ->
      ``lims int64[nq + 1]``, ``D int32[lims[-1]]``, ``I int64[lims[-1]]``; query ``i``'s results are
      ``D[lims[i]:lims[i+1]]``, ordered by (distance, id).
    - ``add(codes, ids=None, *, labels, paths, keys, class_names)``: new codes and their catalog records;
      ``remove(ids) -> int``: how many of ``ids`` were held and removed. A read-only backend raises
      :class:`~dsh.errors.InputError` from both.
    - ``lookup(ids) -> list[dict]``: each id's record, ``{"id": id}`` plus the catalog's fields (``label``,
      ``class``, ``path``, ``key``, those the index has); ``KeyError`` for an id not held.
    - ``search_records(q, k)`` and ``range_search_records(q, radius)``: the results and the record of each,
      seen in one state of the index (what a front end shows): ``lims int64[nq + 1]``, ``D int32[m]``,
      ``I int64[m]`` laid out as range_search's (for k-NN, query ``i``'s at most ``k`` results, fewer where the
      index holds fewer) and ``records``, ``m`` dicts, ``records[t] == lookup([I[t]])[0]``. A remote index
      answers each in one request, not a search and then a lookup.
    - ``catalog``: every record as a :class:`~dsh.index.catalog.Catalog` whose row ``i`` belongs to the ``i``-th
      smallest id, or ``None`` where the index has none (a remote index reads all of it: use ``lookup`` for a few).
    - ``metadata``: a JSON-able dict that belongs to the whole index (the model that made the codes, the source).
    - ``close()``: let go of files and connections; the index is not used after it.
    """

    @property
    def nbits(self) -> int: ...

    @property
    def ntotal(self) -> int: ...

    @property
    def catalog(self) -> Catalog | None: ...

    @property
    def metadata(self) -> dict: ...

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None, *, labels=None, paths=None, keys=None,
            class_names=None) -> None: ...

    def remove(self, ids) -> int: ...

    def lookup(self, ids) -> list[dict]: ...

    def search_records(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]: ...

    def range_search_records(self, q: np.ndarray, radius: int
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]: ...

    def close(self) -> None: ...


class SearchThenLookup:
    """:meth:`search_records` and :meth:`range_search_records` of :class:`Index` for a backend that holds its
    records in this process (where a lookup costs no request): its own ``search`` or ``range_search``, then its
    ``lookup`` of what was found. The backend must not change between the two (an index that takes changes while
    it is searched hands out immutable snapshots, and these run on one)."""

    def search_records(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        # never more columns than the index holds: a huge k must not allocate nq x k result arrays
        D, I = self.search(q, min(check_k(k), max(self.ntotal, 1)))
        found = I >= 0  # the -1 tail of each row
        lims = np.zeros(D.shape[0] + 1, np.int64)
        np.cumsum(found.sum(axis=1), out=lims[1:])
        D, I = D[found], I[found]
        return lims, D, I, self.lookup(I) if I.size else []

    def range_search_records(self, q: np.ndarray, radius: int
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        lims, D, I = self.range_search(q, radius)
        return lims, D, I, self.lookup(I) if I.size else []


def check_whole(name: str, value, low: int) -> int:
    """``value`` as an ``int`` if it is a whole number >= ``low`` (an int, a numpy integer, or a float with no
    fraction; never a bool), else a one-line ``InputError`` naming ``name`` (a parameter or a flag)."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
    try:
        ok = ok and int(value) == value and int(value) >= low
    except (OverflowError, ValueError):  # inf, nan
        ok = False
    if not ok:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_k(k, name: str = "k") -> int:
    """The number of neighbours: an integer >= 1."""
    return check_whole(name, k, 1)


def check_radius(radius, name: str = "radius") -> int:
    """A Hamming radius: an integer >= 0 (distances up to it are included)."""
    return check_whole(name, radius, 0)


def check_new_ids(ids, n: int) -> np.ndarray:
    """Ids given for ``n`` new codes -> ``int64[n]``: 1-D, integers, >= 0 and distinct, else a one-line
    :class:`InputError` (every backend takes ids by these rules)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise InputError(f"ids must be 1-D with one id per code ({n}), got shape {ids.shape}")
    if n and ids.dtype.kind not in "iu":
        raise InputError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if n and ids.min() < 0:
        raise InputError("ids must be >= 0 (-1 marks a missing result)")
    if np.unique(ids).shape[0] != n:
        raise InputError("ids contain duplicates")
    return ids

"""An exact Hamming index over packed binary codes: k nearest neighbours and range search (no torch).

>>> index = HammingIndex(64)
>>> index.add(codes)                      # uint8[n, 8], ids 0..n-1
>>> D, I = index.search(queries, k=10)    # int32[nq, 10], int64[nq, 10]
>>> lims, D, I = index.range_search(queries, radius=2)

Results are exact and deterministic: ordered by distance, then by id. Every engine (``"numba"``, the default
fast path; ``"faiss"``; ``"numpy"``, the slow obvious reference) returns the same arrays, ties included.

Ids are int64 >= 0 (``-1`` marks a missing result). The index keeps its codes in ascending id order, so that
"ties by id" is "ties by position" inside the kernels; ``index.codes[i]`` is the code of ``index.ids[i]``.

Per-item records (labels, paths, user keys) live in ``index.catalog``, a :class:`dsh.index.catalog.Catalog` aligned row
by row with the codes and kept in step by ``add``, ``remove`` and ``reset``; ``index.lookup(ids)`` reads them.
``save`` writes the catalog beside the index under a name of this save's own (:func:`catalog_file`), then the
index, which names it, and then removes the catalogs of earlier saves: the index's rename puts the new pair in place
at once, so a crash leaves the old pair or the new one. ``load`` takes the catalog only if it is the index's. Both
files are checksummed and written atomically; their byte layout is in docs/FORMATS.md ("Index file").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from ..codes import group_kernels as G
from ..codes import kernels as K
from ..codes.bits import check_codes, nbytes_for
from ..codes.hamming import pairwise_hamming_reference
from ..errors import DataError, InputError
from ..utils.fileio import END_MARKER, TRAILER, atomic_write, check_trailer, read_header
from .base import SearchThenLookup, check_k, check_new_ids, check_radius, check_whole
from .catalog import Catalog, catalog_file, catalog_path, new_uid, written_beside
from .distinct import Groups, position_dtype
from .faiss_file import knn_exact, range_exact
from .mih import (
    MIH_TIME,
    PILOT_AGREE,
    PILOT_BUDGET,
    PILOT_REUSE,
    SCAN_TIME,
    KnnPlan,
    MIHTables,
    flat_knn_ns,
    pilot_size,
    plan_knn,
    prefer_mih,
)
from .sorted_codes import SORTED_SCAN_MIN, SortedCodes, worth_keeping

__all__ = ["HammingIndex", "ENGINES", "catalog_file", "catalog_path", "warm_up_kernels"]

ENGINES = ("auto", "numba", "faiss", "numpy")
METHODS = ("auto", "mih", "flat")
_log = logging.getLogger("dsh.index")
# one lock for building any index's groups and sorted copy: searches on several threads then build them once
_GROUPING = threading.Lock()

_MAGIC = b"DSHINDEX"
_END = END_MARKER
_VERSION = 2
# 88 bytes: magic, version, header size, nbits, bytes per code, n, flags, codes / ids offsets, metadata length,
# then distinct codes u and the group offsets' and positions' offsets (0 when no code repeats); docs/FORMATS.md
_HEADER = struct.Struct("<8sIIIIQQQQQQQQ")
_HEADER_V1 = struct.Struct("<8sIIIIQQQQQ")  # 64 bytes: the first ten fields, every code stored per item
_TRAILER = TRAILER
_ALIGN = 64


def _align(x: int) -> int:
    return -(-x // _ALIGN) * _ALIGN


def _layout(hsize: int, n: int, w: int, u: int) -> tuple[int, int, int, int, int]:
    """Offsets of the codes (``u`` rows), ids, group offsets and positions (0, 0 when ``u == n``), and where
    the metadata starts."""
    codes_off = _align(hsize)
    ids_off = _align(codes_off + u * w)
    if u == n:
        return codes_off, ids_off, 0, 0, ids_off + 8 * n
    goff_off = _align(ids_off + 8 * n)
    gpos_off = _align(goff_off + 8 * (u + 1))
    return codes_off, ids_off, goff_off, gpos_off, gpos_off + 8 * n


class HammingIndex(SearchThenLookup):
    """Exact search over ``nbits``-bit packed codes ``uint8[n, ceil(nbits / 8)]``.

    ``engine``: ``"auto"`` (= ``"numba"``), ``"numba"`` (multi-threaded scan; ``numba.set_num_threads`` sets the
    threads), ``"faiss"`` (``faiss.IndexBinaryFlat``, made exact at the k boundary) or ``"numpy"`` (slow
    reference). Range searches may use multi-index hashing (:mod:`dsh.index.mih`) whatever the engine.
    """

    def __init__(self, nbits: int, engine: str = "auto"):
        nbits = check_whole("nbits", nbits, 1)
        if engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        if engine == "faiss":
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise ImportError("engine='faiss' needs the faiss package (pip install faiss-cpu)") from None
        self._nbits = int(nbits)
        self._engine = "numba" if engine == "auto" else engine
        self.metadata: dict = {}
        self._set(np.zeros((0, nbytes_for(nbits)), np.uint8), np.zeros(0, np.int64), None)

    # -- state ---------------------------------------------------------------------------------------------------

    def _set(self, codes: np.ndarray | None, ids: np.ndarray, catalog: Catalog | None,
             groups: Groups | None = None) -> None:
        """``codes`` (``uint8[n, nbytes]``, rows in ascending id order) are kept as their distinct-code layer
        (:mod:`dsh.index.distinct`), given as ``groups`` or built here."""
        # the distinct-code layer is built when first needed: a run of adds (an index built batch by batch)
        # only appends rows, and groups them once
        self._built_groups = groups
        self._pending_codes = None if groups is not None else codes
        self._ids = ids  # int64[n], strictly ascending
        self._catalog = catalog  # row i is the record of ids[i]
        self._words = None  # uint64[u, W] over the distinct codes, built on first search
        self._mih: MIHTables | None = None  # over the distinct codes
        self._sorted: SortedCodes | bool | None = None  # built on first k-NN where worth it; False where not
        self._scan_ns: dict[int, float] = {}  # by k: a scan's time per query of one thread, as timed here
        # by k: batches left that take the scan without a pilot, after pilots in a row found MIH would not pay (a
        # pilot costs more than its budget says: about a third of a 1,000-query batch over 50,000 learned codes)
        self._scan_chosen: dict[int, int] = {}
        self._scan_streak: dict[int, int] = {}  # by k: pilots in a row that clearly chose the scan
        self._faiss = None

    @property
    def _groups(self) -> Groups:
        if self._built_groups is None:
            with _GROUPING:
                if self._built_groups is None:
                    self._built_groups = Groups.build(self._pending_codes)
                    self._pending_codes = None
        return self._built_groups

    def _item_codes(self) -> np.ndarray:
        """``uint8[ntotal, nbytes]`` in id order, without grouping codes that are not grouped yet."""
        pending = self._pending_codes
        return pending if pending is not None else self._groups.item_codes()

    @property
    def nbits(self) -> int:
        return self._nbits

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def ntotal(self) -> int:
        return int(self._ids.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    @property
    def codes(self) -> np.ndarray:
        """``uint8[ntotal, nbytes]``, read-only, in ascending id order (made from the distinct codes when codes
        repeat: ask once and keep it)."""
        v = self._item_codes().view(np.ndarray)
        v.flags.writeable = False
        return v

    @property
    def distinct(self) -> int:
        """How many distinct codes the index holds (each is kept, scanned and hashed once)."""
        return self._groups.u

    @property
    def nbytes(self) -> int:
        """Memory held by the codes, ids, distinct-code groups, MIH tables and the sorted order of the distinct
        codes, in bytes."""
        return int(self._groups.nbytes + self._ids.nbytes + (self._mih.nbytes if self._mih is not None else 0)
                   + (self._sorted.nbytes if self._sorted else 0))

    @property
    def ids(self) -> np.ndarray:
        """``int64[ntotal]``, read-only, strictly ascending."""
        v = self._ids.view(np.ndarray)
        v.flags.writeable = False
        return v

    @property
    def catalog(self) -> Catalog | None:
        """Per-item records aligned with the rows (``index.ids[i]``'s is row ``i``), or ``None``."""
        return self._catalog

    @catalog.setter
    def catalog(self, catalog: Catalog | None) -> None:
        if catalog is not None:
            if not isinstance(catalog, Catalog):
                raise InputError(f"catalog must be a dsh.index.catalog.Catalog or None, got {type(catalog).__name__}")
            if len(catalog) != self.ntotal:
                raise InputError(f"the catalog has {len(catalog)} records, but the index holds {self.ntotal}")
        self._catalog = catalog

    @property
    def mih(self) -> MIHTables | None:
        """The multi-index hashing tables, if built (they are dropped by ``add``, ``remove`` and ``reset``)."""
        return self._mih

    def __repr__(self) -> str:
        return f"HammingIndex(nbits={self._nbits}, ntotal={self.ntotal}, engine={self._engine!r})"

    def close(self) -> None:
        """Nothing to let go of (a memory-mapped index is unmapped when no array refers to it); here so that
        every :class:`dsh.index.base.Index` closes alike."""

    def __enter__(self) -> "HammingIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        """Remove everything (metadata stays; a catalog keeps its columns and class names, with no rows)."""
        cat = None if self._catalog is None else self._catalog.take(np.zeros(0, np.int64))
        self._set(self._item_codes()[:0].copy(), np.zeros(0, np.int64), cat)

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None, *, labels=None, paths=None, keys=None,
            class_names=None) -> None:
        """Add ``codes`` (``uint8[n, nbytes]``) with ``ids`` (``int64[n]``, >= 0, new and distinct).

        Default ids count on from one more than the largest id held (0 for an empty index): ``ntotal ..`` as long
        as no id was removed, and never a clash after a removal.

        ``labels`` (``int[n]`` class ids, -1 = unlabelled, or ``[n, C]`` multi-hot rows), ``paths``, ``keys``
        (``n`` strings each) and ``class_names`` go to the catalog (see :meth:`dsh.index.catalog.Catalog.from_columns`),
        row for row with ``codes``. Once an index has a catalog every ``add`` extends it; a column not given here
        gets its fill value (label -1, an all-zero multi-hot row, ``""``) for these rows, as earlier rows do for
        a column first given now. Nothing changes if any argument is refused.
        """
        codes = check_codes(codes, self._nbits)
        n = codes.shape[0]
        if ids is None:
            start = int(self._ids[-1]) + 1 if self.ntotal else 0
            ids = np.arange(start, start + n, dtype=np.int64)
        else:
            ids = check_new_ids(ids, n)
            clash = ids[np.isin(ids, self._ids)]
            if clash.size:
                raise InputError(f"{clash.size} ids are already in the index, e.g. {clash[:5].tolist()}")
        catalog = self._catalog
        if catalog is not None or any(x is not None for x in (labels, paths, keys, class_names)):
            new = Catalog.from_columns(n, labels=labels, paths=paths, keys=keys, class_names=class_names)
            catalog = (catalog if catalog is not None else Catalog.from_columns(self.ntotal)).concat(new)
        if n == 0:
            self._catalog = catalog  # class names alone may have been given
            return
        all_codes = np.concatenate([self._item_codes(), codes])
        all_ids = np.concatenate([self._ids, ids])
        if not (np.all(ids[1:] > ids[:-1]) and (self.ntotal == 0 or ids[0] > self._ids[-1])):
            order = np.argsort(all_ids, kind="stable")  # keep rows in id order (see the module docstring)
            all_codes, all_ids = all_codes[order], all_ids[order]
            catalog = None if catalog is None else catalog.take(order)
        self._set(all_codes, all_ids, catalog)

    def remove(self, ids) -> int:
        """Remove the codes with these ids (ids not held are ignored); returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        drop = np.isin(self._ids, ids)
        removed = int(drop.sum())
        if removed:
            keep = ~drop
            cat = None if self._catalog is None else self._catalog.take(np.flatnonzero(keep))
            self._set(np.ascontiguousarray(self._item_codes()[keep]), self._ids[keep], cat)
        return removed

    def _positions(self, ids) -> np.ndarray:
        """Rows of ``ids`` by binary search on the ascending ids; ``KeyError`` for an id not held."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        pos = np.searchsorted(self._ids, ids)
        ok = pos < self.ntotal
        ok[ok] = self._ids[pos[ok]] == ids[ok]
        if not ok.all():
            raise KeyError(f"ids not in the index: {ids[~ok][:5].tolist()}")
        return pos

    def reconstruct(self, ids) -> np.ndarray:
        """Codes ``uint8[len(ids), nbytes]`` of the given ids; ``KeyError`` for an id not held."""
        g = self._groups
        return np.asarray(g.ucodes[g.group_of(self._positions(ids))])

    def lookup(self, ids) -> list[dict]:
        """The record of each id: ``{"id": id}`` plus the catalog's fields (see
        :meth:`dsh.index.catalog.Catalog.record`); ``KeyError`` for an id not held."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        pos = self._positions(ids)
        cat = self._catalog
        return [{"id": int(i), **(cat.record(int(p)) if cat is not None else {})} for i, p in zip(ids, pos)]

    # -- search --------------------------------------------------------------------------------------------------

    def _queries(self, q: np.ndarray) -> np.ndarray:
        return check_codes(q, self._nbits, name="queries")

    def _get_words(self) -> np.ndarray:
        if self._words is None:
            self._words = K.as_words(self._groups.ucodes.view(np.ndarray))
        return self._words

    def _expand_range(self, lims, D, U):
        """Runs of distinct codes -> runs of positions, ordered by (distance, position)."""
        g = self._groups
        if g.identity:
            return lims, D, U
        counts, D, P = G.expand_range(lims, D, U, g.goff, g.gpos)
        return K.join_ranges([(counts, D, P)], len(lims) - 1)

    def _ids_of(self, P: np.ndarray) -> np.ndarray:
        """Positions -> ids, keeping -1."""
        if P.size == 0 or self.ntotal == 0:
            return np.full(P.shape, -1, np.int64)
        return np.where(P >= 0, self._ids[np.maximum(P, 0)], -1)

    def _fan_out(self, D: np.ndarray, I: np.ndarray, batch: "_Batch") -> None:
        """Copy each distinct query's answer, written at its first row of ``D`` / ``I`` (``[nq, k]``), to the rows
        that repeat it."""
        if batch.back is None:
            return
        src = batch.first[batch.back]
        K.run_parallel(lambda a, b: G.copy_rows(D, I, src, a, b), len(src), per_task=max(16, (1 << 15) // D.shape[1]))

    def search(self, q: np.ndarray, k: int, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes to each query.

        ``q``: ``uint8[nq, nbytes]``. Returns ``D int32[nq, k]`` and ``I int64[nq, k]``, each row ordered by
        (distance, id). Where the index holds fewer than ``k`` codes, the missing tail is ``D = -1``, ``I = -1``.

        ``method``: ``"flat"`` (a scan with the index's engine), ``"mih"`` (multi-index hashing with a growing
        radius, tables built on first use) or ``"auto"`` (with the numba engine, MIH when a pilot of a few
        queries shows it beats the scan, see :meth:`explain`; queries MIH would spend longer on are scanned).
        All give the same result. With the numba engine a query the batch repeats is answered once; where codes
        repeat enough (:mod:`dsh.index.sorted_codes`), the index keeps a sorted copy of its distinct codes, which
        the scan reads tile by tile once they number :data:`~dsh.index.sorted_codes.SORTED_SCAN_MIN` or more,
        and ``"auto"`` looks up a query equal to a code that alone holds ``k`` items (not where the index scans
        its distinct codes in index order and they hold fewer than ``k`` items on average: there the scan answers
        such a query about as fast).
        """
        q = self._queries(q)
        k = check_k(k)
        method = _check_method(method)
        nq, n = q.shape[0], self.ntotal
        if nq and n and (self._engine == "numba" or method == "mih"):
            batch = self._prepared(q, k, method)
            # every row is written: by a look-up, a pilot, MIH or the scan (-1 past the results), or copied from
            # the first row of the same query
            D = np.empty((nq, k), np.int32)
            I = np.empty((nq, k), np.int64)
            self._knn(batch.Q, k, method, batch.hits, D, I, batch.rows)
            self._fan_out(D, I, batch)
            return D, I
        D = np.full((nq, k), -1, np.int32)
        P = np.full((nq, k), -1, np.int64)
        if nq and n:
            kk = min(k, n)
            if self._engine == "faiss":
                D[:, :kk], P[:, :kk] = self._faiss_knn(q, kk)
            else:
                D[:, :kk], P[:, :kk] = self._numpy_knn(q, kk)
        return D, self._ids_of(P)

    def explain(self, q: np.ndarray, k: int, method: str = "auto") -> dict:
        """How :meth:`search` would answer ``q`` (it runs the pilot, a few queries by MIH, building the tables
        if the plan says so): ``{"method": "flat" | "mih", "reason", "flat_ns", "mih_ns", "pilot",
        "pilot_given_up", "budget_ns", "build_tables", "distinct", "ntotal", "nsub"}``, costs in nanoseconds per
        query of one thread (:class:`dsh.index.mih.KnnPlan`), and with the numba engine ``"distinct_queries"`` (a
        query the batch repeats is answered once) and ``"exact_hits"`` (distinct queries equal to a code that alone
        holds ``k`` items, looked up rather than planned; 0 where the index keeps no sorted copy of its codes, or
        where it scans fewer than :data:`~dsh.index.sorted_codes.SORTED_SCAN_MIN` distinct codes (in index order)
        and they hold fewer than ``k`` items on average)."""
        q = self._queries(q)
        k = check_k(k)
        method = _check_method(method)
        extra = {}
        if self._engine != "numba" and method != "mih":
            out = KnnPlan("flat", f"the {self._engine} engine scans", float("nan")).as_dict()
        else:
            batch = self._prepared(q, k, method)
            Q, hits = batch.Q, batch.hits
            rest = Q if hits is None else Q[hits < 0]
            out = self._plan(rest, k, method, consume=False)[0].as_dict()
            extra = {"distinct_queries": len(Q), "exact_hits": 0 if hits is None else int((hits >= 0).sum())}
        return {**out, **extra, "distinct": self.distinct, "ntotal": self.ntotal,
                "nsub": None if self._mih is None else self._mih.nsub}

    def _plan(self, Q: np.ndarray, k: int, method: str, consume: bool = True) -> tuple[KnnPlan, tuple | None]:
        """The k-NN plan for queries ``Q`` (``uint64[nq, W]``) and, after a pilot, its results for the first
        queries (as :meth:`MIHTables.knn` returns them). Pilots that agree MIH would not pay are trusted for the
        next :data:`~dsh.index.mih.PILOT_REUSE` batches of the same ``k`` (:meth:`_count_scan_verdict`;
        ``consume``: count this batch; :meth:`explain` does not)."""
        g = self._groups
        plan = plan_knn(g.u, self._nbits, len(Q), self._mih, method)
        # costs in real nanoseconds of one thread: the scan's as timed on this index (for this k), MIH's work
        # estimates scaled by how long MIH really took so far; budgets are handed to MIH in its estimated units
        flat_ns = self._scan_ns.get(k, plan.flat_ns * SCAN_TIME.ratio)
        plan = dataclasses.replace(plan, flat_ns=flat_ns)
        pilot = None
        if plan.method == "mih" and method == "auto" and self._scan_chosen.get(k, 0) > 0:
            if consume:
                self._scan_chosen[k] -= 1
            plan = dataclasses.replace(plan, method="flat", budget_ns=0.0,
                                       reason=f"{PILOT_AGREE} pilots in a row within the last {PILOT_REUSE} "
                                              f"batches of k={k} found MIH would not pay")
        elif plan.method == "mih" and method == "auto":
            tables = self._mih if self._mih is not None else self.build_mih()
            p, share = pilot_size(len(Q), K.num_threads())
            budget = share * flat_ns / MIH_TIME.ratio
            started = time.perf_counter_ns()
            pilot = tables.knn(self._get_words(), Q[:p], k, g.goff, g.n, budget, parallel=False)
            counts, work = pilot[0], pilot[3]
            MIH_TIME.observe(float(work.sum()), float(time.perf_counter_ns() - started))
            given_up = int((counts < 0).sum())
            mih_ns = float(work[counts >= 0].mean()) * MIH_TIME.ratio if given_up < p else None
            plan = dataclasses.replace(plan, budget_ns=flat_ns / MIH_TIME.ratio)
            if 2 * given_up > p or mih_ns > plan.flat_ns / 2:
                why = (f"{given_up} of {p} pilot queries would cost more than {share:.0%} of a scan by MIH"
                       + ("" if mih_ns is None else f", the others ~{mih_ns / plan.flat_ns:.0%}"))
                plan = dataclasses.replace(plan, method="flat", budget_ns=0.0)
                # only a pilot with the full budget (a small batch's tight one says little of larger ones) and a
                # clear verdict (most queries given up, or MIH dearer than the scan itself, not a close call
                # between half a scan and a whole one) counts towards reusing it
                if consume:
                    self._count_scan_verdict(k, share >= PILOT_BUDGET and (2 * given_up > p or mih_ns > plan.flat_ns))
            else:
                why = (f"{p - given_up} of {p} pilot queries finished by MIH within {share:.0%} of a scan, at "
                       f"~{mih_ns / plan.flat_ns:.1%} of one on average")
                if consume:
                    self._count_scan_verdict(k, False)
            plan = dataclasses.replace(plan, reason=why, mih_ns=mih_ns, pilot=p, pilot_given_up=given_up)
        _log.debug("k-NN plan for %d queries, k=%d over %d codes (%d distinct): %s", len(Q), k, self.ntotal, g.u,
                   plan)
        return plan, pilot

    def _count_scan_verdict(self, k: int, clear: bool) -> None:
        """After a pilot for ``k``: a clear verdict for the scan adds to a streak, anything else ends it; once
        :data:`~dsh.index.mih.PILOT_AGREE` pilots in a row agree, the next :data:`~dsh.index.mih.PILOT_REUSE`
        batches take the scan without one. One pilot is not trusted alone: its budget rests on MIH's time ratio,
        which a cold first call can throw off tenfold."""
        if not clear:
            self._scan_streak.pop(k, None)
            return
        if len(self._scan_streak) >= 64 or len(self._scan_chosen) >= 64:  # a caller trying many k: bounded
            self._scan_streak.clear()
            self._scan_chosen.clear()
        streak = self._scan_streak.get(k, 0) + 1
        if streak >= PILOT_AGREE:
            self._scan_chosen[k] = PILOT_REUSE
            self._scan_streak.pop(k, None)
        else:
            self._scan_streak[k] = streak

    def _sorted_codes(self) -> SortedCodes | None:
        """The distinct codes in sorted order (:mod:`dsh.index.sorted_codes`), built on first use where codes
        repeat enough for it to cost little; None elsewhere."""
        if self._sorted is None:
            g = self._groups
            words = self._get_words()
            with _GROUPING:  # searches on several threads build it once, as the groups
                if self._sorted is None:
                    self._sorted = SortedCodes.build(words) if worth_keeping(g.u, g.n, words.shape[1]) else False
        return self._sorted or None

    def _prepared(self, q: np.ndarray, k: int, method: str) -> "_Batch":
        """What the numba k-NN starts from, for :meth:`search` and :meth:`explain` alike (:class:`_Batch`): the
        batch's distinct queries and, with ``method="auto"``, those equal to a code that alone holds ``k`` items
        (looked up where the index keeps a sorted copy of its codes)."""
        Q, back, first = _distinct_rows(K.as_words(q))
        # Below SORTED_SCAN_MIN distinct codes the scan in index order answers a query equal to a code nearly as
        # cheaply as its look-up (its limit falls to 0 in the first chunk), so there queries are looked up only
        # where codes hold k items on average and most will be found: over the CIFAR-10 48-bit codes (5 items a
        # code) the look-ups made a k = 10 batch 10% slower, over 10M copies of the 12-bit ones (2,400 items a
        # code) they made a batch 5x faster
        g = self._groups
        look_up = method == "auto" and (g.u >= SORTED_SCAN_MIN or g.n >= k * g.u)
        sorted_codes = self._sorted_codes() if look_up else None
        hits = None if sorted_codes is None else sorted_codes.exact(Q, g.goff, k)
        return _Batch(Q, back, first, hits)

    def _knn(self, Q: np.ndarray, k: int, method: str, hits: np.ndarray | None, D: np.ndarray, I: np.ndarray,
             rows: np.ndarray) -> None:
        """Exact k-NN of ``Q`` (``uint64[m, W]``), query ``i`` into row ``rows[i]`` of ``D`` / ``I`` (ids):
        queries with a ``hits`` entry (see :meth:`_prepared`) directly, the others by the plan's method."""
        if hits is None or not (hits >= 0).any():
            return self._knn_planned(Q, k, method, D, I, rows)
        found = np.flatnonzero(hits >= 0)
        g = self._groups
        D[rows[found]] = 0
        I[rows[found]] = self._ids[g.gpos[g.goff[hits[found]][:, None] + np.arange(k)]]
        rest = np.flatnonzero(hits < 0)
        if rest.size:
            self._knn_planned(Q[rest], k, method, D, I, rows[rest])

    def _knn_planned(self, Q: np.ndarray, k: int, method: str, D: np.ndarray, I: np.ndarray,
                     rows: np.ndarray) -> None:
        """Exact k-NN of ``Q`` (``uint64[m, W]``) by the plan's method, query ``i`` into row ``rows[i]`` of ``D``
        / ``I`` (ids)."""
        plan, pilot = self._plan(Q, k, method)
        g, ids = self._groups, self._ids
        scan = np.ones(len(Q), bool)  # queries left to the scan
        if pilot is not None:
            p = len(pilot[0])
            g.expand_into(pilot, k, D, I, rows[:p], ids, parallel=True)
            scan[:p] = pilot[0] < 0
        if plan.method == "mih":
            rest = np.arange(0 if pilot is None else len(pilot[0]), len(Q))
            tables = self._mih if self._mih is not None else self.build_mih()
            started = time.perf_counter_ns()
            res = tables.knn(self._get_words(), Q[rest], k, g.goff, g.n, plan.budget_ns)
            MIH_TIME.observe(float(res[3].sum()), (time.perf_counter_ns() - started) * _threads_for(rest.size, 16))
            g.expand_into(res, k, D, I, rows[rest], ids, parallel=True)
            scan[rest] = res[0] < 0
        left = np.flatnonzero(scan)
        if left.size:
            whole = left.size == len(Q)
            self._scan_knn(Q if whole else Q[left], k, D, I, rows if whole else rows[left])

    def _scan_knn(self, Q: np.ndarray, k: int, D: np.ndarray, I: np.ndarray, rows: np.ndarray) -> None:
        """The numba scan over the distinct codes, query ``i`` into row ``rows[i]`` of ``D`` / ``I`` (ids)."""
        g, nq, ids = self._groups, len(Q), self._ids
        X = self._get_words()
        x, W, u = X.reshape(-1), X.shape[1], g.u
        sorted_codes = self._sorted_codes()  # (built before the clock starts)
        sorted_scan = sorted_codes is not None and u >= SORTED_SCAN_MIN
        per_task = 64
        started = time.perf_counter_ns()
        if g.identity:
            Dq = np.full((nq, k), -1, np.int32)  # the plain scan writes only what it finds
            Pq = np.full((nq, k), -1, np.int64)
            K.run_parallel(lambda a, b: K.knn_scan(x, u, W, Q, a, b, k, self._nbits, Dq, Pq), nq)
            D[rows] = Dq
            I[rows] = self._ids_of(Pq)
        elif sorted_scan:  # the runs each thread finds are expanded on that thread, every row written
            sorted_codes.knn_into(Q, k, self._nbits, g, D, I, rows, ids)
        else:  # one task a thread: a task's Python and dispatch, with the GIL held, cost about 20% of a k = 10
            # batch of 1,000 queries over 10,000 learned codes split in four
            per_task = _per_thread(nq, 64)
            K.run_parallel(lambda a, b: G.knn_scan_groups_into(x, u, W, Q, a, b, k, self._nbits, g.goff, g.gpos, D, I,
                                                               rows[a:b], ids), nq, per_task=per_task)
        if nq >= 4:  # a scan's time per query of one thread, for the plans of later batches
            ns = (time.perf_counter_ns() - started) * _threads_for(nq, per_task) / nq
            if not sorted_scan:
                SCAN_TIME.observe(flat_knn_ns(u, self._nbits) * nq, ns * nq)
            old = self._scan_ns.get(k)
            if old is None and len(self._scan_ns) >= 64:  # a caller trying many k: keep the memory bounded
                self._scan_ns.clear()
            self._scan_ns[k] = ns if old is None else 0.7 * old + 0.3 * ns

    def range_search(self, q: np.ndarray, radius: int, method: str = "auto"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code within Hamming distance ``radius`` (inclusive) of each query, faiss-style.

        Returns ``lims int64[nq + 1]``, ``D int32[lims[-1]]``, ``I int64[lims[-1]]``: query ``i``'s results are
        ``D[lims[i]:lims[i+1]]``, ordered by (distance, id). ``method``: ``"mih"`` (multi-index hashing, tables
        built on first use), ``"flat"`` (a scan with the index's engine) or ``"auto"`` (MIH when the numba engine
        estimates it pays, see :func:`dsh.index.mih.prefer_mih`). All give the same result.
        """
        q = self._queries(q)
        radius = check_radius(radius)
        method = _check_method(method)
        nq, n = q.shape[0], self.ntotal
        if nq == 0 or n == 0:
            return np.zeros(nq + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        if method == "auto":
            use_mih = self._engine == "numba" and prefer_mih(self.distinct, self._nbits, radius, nq, self._mih)
            method = "mih" if use_mih else "flat"
        if method == "mih":
            tables = self._mih if self._mih is not None else self.build_mih()
            lims, D, P = self._expand_range(*tables.search(self._get_words(), K.as_words(q), radius))
        elif self._engine == "numba":
            X, Q = self._get_words(), K.as_words(q)
            x, W, u = X.reshape(-1), X.shape[1], self.distinct
            parts = K.run_parallel(lambda a, b: K.range_scan(x, u, W, Q, a, b, radius, self._nbits), nq)
            lims, D, P = self._expand_range(*K.join_ranges(parts, nq))
        elif self._engine == "faiss":
            lims, D, P = self._faiss_range(q, radius)
        else:
            lims, D, P = self._numpy_range(q, radius)
        return lims, D, self._ids_of(P)

    def build_mih(self, nsub: int | None = None) -> MIHTables:
        """Build (or rebuild) the multi-index hashing tables over the distinct codes with ``nsub`` substrings
        (default :func:`dsh.index.mih.default_nsub`) and return them."""
        self._mih = MIHTables.build(self._get_words(), self._nbits, nsub)
        self._scan_chosen.clear()  # new tables: the next batch pilots them
        self._scan_streak.clear()
        return self._mih

    # -- the numpy reference engine ------------------------------------------------------------------------------

    def _query_chunks(self, nq: int):
        step = max(1, (1 << 24) // max(self.ntotal, 1))  # bounded distance matrices (64 MB of int32)
        return ((a, min(a + step, nq)) for a in range(0, nq, step))

    def _numpy_knn(self, q, k):
        codes = self._item_codes()
        D = np.empty((q.shape[0], k), np.int32)
        P = np.empty((q.shape[0], k), np.int64)
        for a, b in self._query_chunks(q.shape[0]):
            dist = pairwise_hamming_reference(q[a:b], codes)
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # stable: ties stay in position = id order
            P[a:b] = order
            D[a:b] = np.take_along_axis(dist, order, axis=1)
        return D, P

    def _numpy_range(self, q, radius):
        codes = self._item_codes()
        Ds, Ps, counts = [], [], []
        for a, b in self._query_chunks(q.shape[0]):
            dist = pairwise_hamming_reference(q[a:b], codes)
            for row in dist:
                sel = np.flatnonzero(row <= radius)
                sel = sel[np.argsort(row[sel], kind="stable")]
                Ps.append(sel)
                Ds.append(row[sel])
                counts.append(sel.size)
        lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return lims, np.concatenate(Ds).astype(np.int32), np.concatenate(Ps).astype(np.int64)

    # -- the faiss engine ----------------------------------------------------------------------------------------

    def _faiss_index(self):
        if self._faiss is None:
            import faiss

            codes = self._item_codes()
            self._faiss = faiss.IndexBinaryFlat(8 * codes.shape[1])  # padding bits are 0 on both sides
            self._faiss.add(np.ascontiguousarray(codes))
        return self._faiss

    def _faiss_knn(self, q, k):
        return knn_exact(self._faiss_index(), q, k)  # positions, which are in id order

    def _faiss_range(self, q, radius):
        return range_exact(self._faiss_index(), q, radius)

    # -- files ---------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write the index to ``path`` (format in the module docstring), atomically.

        ``metadata``: a JSON-serialisable dict stored with it (default: ``self.metadata``); it becomes
        ``self.metadata``. With a catalog, the catalog is first written to :func:`catalog_file` ``(path, uid)``, a
        name of this save's own, and the metadata gets ``"catalog": {"file", "uid", "count"}`` naming it. Without
        one, any ``"catalog"`` key is dropped, so the file never names a catalog that is not its own. Catalogs of
        earlier saves of ``path`` are removed once the new index is in place.
        """
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")
            self.metadata = metadata
        out, uid = self.metadata, None
        if self._catalog is not None:
            uid = new_uid()  # fresh each save: an older catalog left beside this index never matches
            out = {**out, "catalog": {"file": catalog_file(path, uid).name, "uid": uid, "count": self.ntotal}}
        elif "catalog" in out:
            out = {k: v for k, v in out.items() if k != "catalog"}
        # serialised before any file is touched: metadata that is not JSON writes nothing at all
        meta = json.dumps(out, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self.metadata = out
        g = self._groups
        n, u, w = self.ntotal, g.u, g.ucodes.shape[1]
        codes_off, ids_off, goff_off, gpos_off, meta_off = _layout(_HEADER.size, n, w, u)
        header = _HEADER.pack(_MAGIC, _VERSION, _HEADER.size, self._nbits, w, n, 0, codes_off, ids_off, len(meta),
                              u, goff_off, gpos_off)
        crc = 0
        with written_beside(self._catalog, path, self._ids, uid), atomic_write(path) as f:

            def put(buf) -> None:
                nonlocal crc
                f.write(buf)
                crc = zlib.crc32(buf, crc)

            def put_array(a: np.ndarray, at: int) -> None:
                put(bytes(at - f.tell()))
                flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                for a in range(0, flat.size, 1 << 24):  # in pieces, so a memory-mapped index is not read at once
                    put(memoryview(flat[a : a + (1 << 24)]))

            put(header)
            put_array(g.ucodes, codes_off)
            put_array(self._ids.astype("<i8", copy=False), ids_off)
            if u != n:
                put_array(g.goff.astype("<i8"), goff_off)
                put_array(g.gpos.astype("<i8"), gpos_off)
            put(meta)
            f.write(_TRAILER.pack(crc, _END))

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False, verify: bool = True,
             engine: str = "auto") -> "HammingIndex":
        """Read an index written by :meth:`save`, with its catalog if it names one.

        ``mmap=True`` maps the codes and ids read-only instead of reading them (for databases larger than
        memory; ``add``/``remove`` then make in-memory copies); the catalog's columns too, so no record is
        decoded until looked up. ``verify=False`` skips the checksums (which read the whole files), keeping the
        structural checks. Problems raise a one-line :class:`DataError`, among them a missing catalog file or
        one that is not this index's (another uid or other ids).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such index file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            old = f.read(12)[8:] == struct.pack("<I", 1)  # version 1: every code stored per item, no groups
            f.seek(0)
            head = _HEADER_V1 if old else _HEADER
            fields = read_header(f, path, size, head, _MAGIC, 1 if old else _VERSION, "index")
            _, _, hsize, nbits, w, n, flags, codes_off, ids_off, mlen = fields[:10]
            u, goff_off, gpos_off = (n, 0, 0) if old else fields[10:]
            if hsize != head.size or nbits < 1 or w != nbytes_for(nbits) or flags != 0 or not 0 < u <= n \
                    and not u == n == 0 or codes_off < hsize or codes_off % _ALIGN \
                    or (codes_off, ids_off, goff_off, gpos_off) != _layout(codes_off, n, w, u)[:4]:
                raise DataError(f"{path}: corrupt index header")
            meta_off = _layout(codes_off, n, w, u)[4]
            check_trailer(f, path, size, meta_off + mlen + _TRAILER.size, "index", verify)
            f.seek(meta_off)
            meta_bytes = f.read(mlen)

        def section(dtype, offset, shape):
            if mmap and n:
                return np.memmap(path, dtype, "r", offset=offset, shape=shape).view(np.ndarray)
            return np.fromfile(path, dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)

        codes = section(np.uint8, codes_off, (u, w))
        ids = section("<i8", ids_off, (n,))
        try:
            metadata = json.loads(meta_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable index metadata ({e.__class__.__name__})") from None
        if not isinstance(metadata, dict):
            raise DataError(f"{path}: index metadata is not a JSON object")
        try:
            codes = check_codes(codes, nbits)
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        if n and (ids[0] < 0 or np.any(ids[1:] <= ids[:-1])):
            raise DataError(f"{path}: ids are not strictly ascending and >= 0")
        ids = ids.astype(np.int64, copy=False)
        groups = None
        if u != n:
            dt = "<i8" if mmap else position_dtype(n)
            goff = section("<i8", goff_off, (u + 1,)).astype(dt, copy=False)
            gpos = section("<i8", gpos_off, (n,)).astype(dt, copy=False)
            groups = Groups.from_arrays(codes, goff, gpos, n)
            why = groups.check()
            if why:
                raise DataError(f"{path}: corrupt index: {why}")
        catalog = _load_catalog(path, metadata["catalog"], ids, mmap, verify) if "catalog" in metadata else None
        index = cls(nbits, engine=engine)
        index._set(codes, ids, catalog, groups)
        index.metadata = metadata
        return index


def _load_catalog(path: Path, entry, ids: np.ndarray, mmap: bool, verify: bool) -> Catalog:
    """The catalog an index file's metadata names, checked to be that index's."""
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("uid"), str)
            and isinstance(entry.get("count"), int)) or entry["file"] in ("", ".", "..") \
            or Path(entry["file"]).name != entry["file"]:
        raise DataError(f"{path}: corrupt catalog entry in the index metadata")
    cpath = path.with_name(entry["file"])
    if not cpath.is_file():
        raise DataError(f"{cpath}: no such catalog file (the index {path} names it)")
    catalog, cids, uid = Catalog.load(cpath, mmap=mmap, verify=verify)
    why = None
    if uid != entry["uid"]:
        why = "the catalog was written with another index (its uid differs)"
    elif entry["count"] != ids.shape[0] or cids.shape != ids.shape:
        why = f"the index holds {ids.shape[0]} items, the catalog {cids.shape[0]}"
    elif not np.array_equal(cids, ids):
        why = "the catalog is for other ids"
    if why:
        raise DataError(f"{path} and {cpath} do not belong together: {why}")
    return catalog



def _per_thread(nq: int, least: int) -> int:
    """Queries a task so that each of the kernels' threads takes one (at least ``least``)."""
    return max(least, -(-nq // K.num_threads()))


def _threads_for(nq: int, per_task: int) -> int:
    """Threads :func:`dsh.codes.kernels.run_parallel` keeps busy for ``nq`` queries in tasks of ``per_task``."""
    return max(1, min(K.num_threads(), -(-nq // per_task)))


@dataclasses.dataclass(frozen=True)
class _Batch:
    """A k-NN batch as the numba search takes it: its distinct queries ``Q`` (``uint64[u, W]``), ``back``
    (``int64[nq]``, each query's row of ``Q``) and ``first`` (``int64[u]``, the batch row where each of ``Q`` first
    appears), both None where no query repeats, and ``hits`` (``int64[u]``: the distinct code equal to each of
    ``Q`` that alone holds ``k`` items, else -1; None where not looked up)."""

    Q: np.ndarray
    back: np.ndarray | None
    first: np.ndarray | None
    hits: np.ndarray | None

    @property
    def rows(self) -> np.ndarray:
        """``int64[u]``: the batch row that receives each distinct query's answer."""
        return np.arange(len(self.Q)) if self.first is None else self.first


def _distinct_rows(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(the distinct rows of Q in order of first appearance, each row's index among them, the index of each
    distinct row's first appearance)`` for ``Q`` (``uint64[nq, W]``); ``(Q, None, None)`` where no row repeats."""
    if len(Q) < 2:
        return Q, None, None
    first, inverse = K.distinct_rows(np.ascontiguousarray(Q))
    if len(first) == len(Q):
        return Q, None, None
    return Q[first], inverse, first


def _check_method(method) -> str:
    if method not in METHODS:
        raise InputError(f"method must be 'auto', 'mih' or 'flat', got {method!r}")
    return method


def warm_up_kernels() -> None:
    """Compile (or load from numba's cache) every search kernel for each layout of the distinct-code layer, one
    code per item and codes that repeat (whose arrays differ in type), with and without the sorted copy. A service
    calls this before it listens: the first index whose codes repeat (a few uploads of one picture) would otherwise
    stall every request for the seconds a compile takes."""
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, 256, (24, 8), dtype=np.uint8)
    # codes that repeat a little (scanned as groups) and so much that the index keeps a sorted copy of them
    for codes in (distinct, np.repeat(distinct[:12], 2, axis=0), np.repeat(distinct[:4], 6, axis=0)):
        index = HammingIndex(64)
        index.add(codes)
        index.build_mih()
        for method in ("flat", "mih", "auto"):  # auto: the look-up of queries equal to a code
            index.search(codes[:2], 3, method=method)
            index.range_search(codes[:2], 1, method=method)
        sorted_codes = index._sorted_codes()
        if sorted_codes is not None:  # the scan of indexes with SORTED_SCAN_MIN distinct codes or more
            D, P = np.empty((2, 3), np.int32), np.empty((2, 3), np.int64)
            sorted_codes.knn_into(index._get_words()[:2], 3, 64, index._groups, D, P)

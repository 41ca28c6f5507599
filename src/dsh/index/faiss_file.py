"""dsh's codes as a faiss binary index: ``faiss.IndexBinaryFlat``, ``IndexBinaryIVF`` or ``IndexBinaryHash``,
written where ``faiss.read_index_binary`` loads it (needs the ``faiss`` extra; no torch).

>>> write_faiss("db.faissbin", index)                   # a HammingIndex (or codes + nbits)
>>> fidx = faiss.read_index_binary("db.faissbin")
>>> D, I = fidx.search(queries, 10)                     # the distances HammingIndex.search gives

dsh's packed codes are faiss's binary layout already, so they go in as they are; the catalog is not written. The
kinds (``"flat"``, ``"ivf"``, ``"hash"``), their defaults and how ids and odd code lengths are stored:
docs/FORMATS.md ("faiss file"). The file is written atomically (:func:`dsh.utils.fileio.atomic_write`).

:func:`read_faiss` opens such a file (or any faiss binary index file) as a :class:`FaissBinaryIndex`, which answers
as every :class:`dsh.index.base.Index` does: results ordered by (distance, id), ties included (:func:`knn_exact`
asks faiss for more results until every code at the k-th distance is among them). It is read-only and has no
catalog. A flat index answers exactly as :class:`~dsh.index.flat.HammingIndex`; an IVF or hash index answers what
faiss finds in the lists or buckets it probes, in the same order.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..codes.bits import check_codes, nbytes_for
from ..errors import DataError, InputError
from ..utils.fileio import atomic_write
from .base import SearchThenLookup, check_k, check_new_ids, check_radius, check_whole

__all__ = ["FAISS_KINDS", "FaissBinaryIndex", "knn_exact", "range_exact", "read_faiss", "to_faiss", "write_faiss"]

FAISS_KINDS = ("flat", "ivf", "hash")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ModuleNotFoundError("a faiss index file needs the faiss package: pip install 'dsh[faiss]'",
                                  name="faiss") from None
    return faiss


def _positive(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    return check_whole(name, value, 1)


def to_faiss(source, nbits: int | None = None, kind: str = "flat", *, ids=None, nlist: int | None = None,
             nprobe: int | None = None, hash_bits: int | None = None, nflip: int | None = None, seed: int = 0):
    """A faiss binary index holding ``source``: a :class:`~dsh.index.flat.HammingIndex` (its codes and ids), or packed
    codes ``uint8[n, ceil(nbits / 8)]`` with ``nbits`` (and ``ids``, default ``0 .. n-1``). See the module
    docstring for ``kind`` and its settings."""
    faiss = _faiss()
    if kind not in FAISS_KINDS:
        raise InputError(f"kind must be one of {', '.join(FAISS_KINDS)}, got {kind!r}")
    if hasattr(source, "codes") and hasattr(source, "ids") and hasattr(source, "nbits"):
        if nbits is not None and int(nbits) != source.nbits:
            raise InputError(f"nbits={nbits} but the index holds {source.nbits}-bit codes")
        if ids is not None:
            raise InputError("ids come with a HammingIndex; pass ids only with an array of codes")
        nbits, codes, ids = source.nbits, np.asarray(source.codes), np.asarray(source.ids)
    else:
        if nbits is None:
            raise InputError("nbits is needed with an array of codes")
        codes = check_codes(source, nbits)
    n = codes.shape[0]
    codes = np.ascontiguousarray(codes)
    if ids is not None:
        ids = check_new_ids(ids, n)
    own_ids = ids is not None and not np.array_equal(ids, np.arange(n))
    d = 8 * nbytes_for(nbits)
    nlist, nprobe = _positive("nlist", nlist), _positive("nprobe", nprobe)
    hash_bits = _positive("hash_bits", hash_bits)
    nflip = None if nflip is None else check_whole("nflip", nflip, 0)
    if kind != "ivf" and (nlist or nprobe):
        raise InputError("nlist and nprobe are settings of kind='ivf'")
    if kind != "hash" and (hash_bits or nflip is not None):
        raise InputError("hash_bits and nflip are settings of kind='hash'")

    if kind == "flat":
        index = faiss.IndexBinaryFlat(d)
    elif kind == "hash":
        b = hash_bits or min(int(nbits), 16)
        if b > min(int(nbits), 64):
            raise InputError(f"hash_bits must be at most min(nbits, 64) = {min(int(nbits), 64)}, got {b}")
        index = faiss.IndexBinaryHash(d, b)
        index.nflip = 2 if nflip is None else int(nflip)
    else:
        if n == 0:
            raise InputError("an IVF index is trained on the codes: there are none")
        nlist = nlist or max(1, int(round(math.sqrt(n))))
        if nlist > n:
            raise InputError(f"nlist={nlist} is more than the {n} codes to train it on")
        quantizer = faiss.IndexBinaryFlat(d)
        index = faiss.IndexBinaryIVF(quantizer, d, nlist)  # faiss's wrapper keeps the quantizer alive
        sample = codes
        if n > 256 * nlist:
            sample = codes[np.sort(np.random.default_rng(seed).choice(n, 256 * nlist, replace=False))]
        index.cp.seed = int(seed)
        index.verbose = False
        index.train(np.ascontiguousarray(sample))
        if nprobe is not None and nprobe > nlist:
            raise InputError(f"nprobe={nprobe} is more than nlist={nlist} (nprobe = nlist searches every list)")
        index.nprobe = nprobe or min(nlist, 16)
    if own_ids and kind != "ivf":
        index = faiss.IndexBinaryIDMap(index)  # which keeps the inner index alive
    if n:
        if own_ids:
            index.add_with_ids(codes, ids)
        else:
            index.add(codes)
    return index


def write_faiss(path: str | os.PathLike, source, nbits: int | None = None, kind: str = "flat", **settings):
    """:func:`to_faiss` written to ``path`` (atomically), for ``faiss.read_index_binary``; returns the index."""
    faiss = _faiss()
    index = to_faiss(source, nbits, kind, **settings)
    data = faiss.serialize_index_binary(index)
    with atomic_write(path) as f:
        f.write(memoryview(np.ascontiguousarray(data)))
    return index


# -- searching a faiss binary index in dsh's order -----------------------------------------------------------------


def knn_exact(index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` (a faiss binary index) ordered by (distance, id), ties at the k-th distance settled.

    faiss's heap keeps the k smallest distances but picks arbitrary codes among ties at the k-th distance ``t``.
    So ask for ``k2 > k`` results: once the ``k2``-th distance exceeds ``t``, or fewer than ``k2`` come back, or
    ``k2 = ntotal``, every code at distance ``<= t`` that faiss finds is among them, and sorting them by (distance,
    id) gives dsh's answer. Queries not yet settled are asked again with ``k2`` doubled.

    ``q``: ``uint8[nq, index.code_size]``; ``1 <= k <= index.ntotal``. Returns ``D int32[nq, k]``, ``I int64[nq,
    k]``, ``-1`` in both where faiss found fewer than ``k`` (an IVF or hash index probes only some codes).
    """
    n, nq = int(index.ntotal), q.shape[0]
    D = np.full((nq, k), -1, np.int32)
    I = np.full((nq, k), -1, np.int64)
    todo, k2 = np.arange(nq), k
    while todo.size:
        k2 = min(n, 2 * k2)
        D2, I2 = index.search(np.ascontiguousarray(q[todo]), k2)
        settled = (D2[:, -1] > D2[:, k - 1]) | (I2[:, -1] < 0) | (k2 == n)
        for r in np.flatnonzero(settled):
            found = I2[r] >= 0
            d, i = D2[r][found], I2[r][found]
            order = np.lexsort((i, d))[:k]
            D[todo[r], : order.size], I[todo[r], : order.size] = d[order], i[order]
        todo = todo[~settled]
    return D, I


def range_exact(index, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``index.range_search`` (a faiss binary index) with dsh's meaning and order: distances up to ``radius``
    inclusive (faiss keeps those below its radius), each query's results ordered by (distance, id). Returns
    ``lims int64[nq + 1]``, ``D int32[lims[-1]]``, ``I int64[lims[-1]]``."""
    lims, Df, If = index.range_search(np.ascontiguousarray(q), int(radius) + 1)
    lims = lims.astype(np.int64)
    qid = np.repeat(np.arange(q.shape[0]), np.diff(lims))
    order = np.lexsort((If, Df, qid))
    return lims, Df[order].astype(np.int32), If[order].astype(np.int64)


class FaissBinaryIndex(SearchThenLookup):
    """A faiss binary index (a file :func:`read_faiss` read, or one in memory) behind dsh's
    :class:`~dsh.index.base.Index` interface: ``search`` and ``range_search`` in (distance, id) order, read-only
    (``add`` and ``remove`` raise :class:`InputError`), no catalog (``lookup`` gives ``{"id": id}``).

    ``nbits``: the code length the file's codes have; faiss keeps only ``d = 8 * ceil(nbits / 8)``, the default.
    """

    def __init__(self, index, *, nbits: int | None = None, name: str = "faiss index"):
        d = int(index.d)
        nbits = d if nbits is None else check_whole("nbits", nbits, 1)
        if nbytes_for(nbits) * 8 != d:
            raise InputError(f"{name} holds codes of {d} dimensions, which {nbits}-bit codes are not")
        self._index = index
        self._nbits = nbits
        self._name = name
        self._held: np.ndarray | None = None  # the ids, ascending, read on the first lookup
        self.metadata: dict = {}

    @property
    def faiss_index(self):
        """The faiss index itself (to set ``nprobe`` or ``nflip``, say)."""
        return self._index

    @property
    def nbits(self) -> int:
        return self._nbits

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def catalog(self) -> None:
        """A faiss file holds codes and ids only."""
        return None

    def __repr__(self) -> str:
        return f"FaissBinaryIndex({type(self._index).__name__}, nbits={self._nbits}, ntotal={self.ntotal})"

    def __str__(self) -> str:
        return self._name

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes to each query ``uint8[nq, nbytes]``: ``D int32[nq, k]``, ``I int64[nq, k]``,
        each row ordered by (distance, id), ``-1`` where fewer are found."""
        q = check_codes(q, self._nbits, name="queries")
        k = check_k(k)
        D = np.full((q.shape[0], k), -1, np.int32)
        I = np.full((q.shape[0], k), -1, np.int64)
        kk = min(k, self.ntotal)
        if q.shape[0] and kk:
            D[:, :kk], I[:, :kk] = knn_exact(self._index, q, kk)
        return D, I

    def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code within Hamming distance ``radius`` (inclusive): ``lims int64[nq + 1]``, ``D int32[m]``,
        ``I int64[m]``, each query's ordered by (distance, id)."""
        q = check_codes(q, self._nbits, name="queries")
        radius = min(check_radius(radius), int(self._index.d))
        if q.shape[0] == 0 or self.ntotal == 0:
            return np.zeros(q.shape[0] + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        return range_exact(self._index, q, radius)

    def add(self, codes, ids=None, *, labels=None, paths=None, keys=None, class_names=None) -> None:
        raise InputError(f"{self._name} is a faiss index file, read-only here: build a new one with dsh index")

    def remove(self, ids) -> int:
        raise InputError(f"{self._name} is a faiss index file, read-only here: build a new one with dsh index")

    @property
    def ids(self) -> np.ndarray:
        """Every id held, ``int64[ntotal]`` ascending (read from the index once)."""
        if self._held is None:
            faiss = _faiss()
            index = self._index
            if hasattr(index, "id_map"):  # IndexBinaryIDMap
                held = faiss.vector_to_array(index.id_map)
            elif hasattr(index, "invlists"):  # IndexBinaryIVF keeps the ids in its lists
                inv = index.invlists
                parts = [faiss.rev_swig_ptr(inv.get_ids(j), inv.list_size(j)).copy()
                         for j in range(index.nlist) if inv.list_size(j)]
                held = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            else:  # flat and hash indexes number their codes 0 .. ntotal-1
                held = np.arange(self.ntotal)
            self._held = np.sort(held.astype(np.int64))
        return self._held

    def lookup(self, ids) -> list[dict]:
        """``{"id": id}`` for each id (a faiss file has no catalog); ``KeyError`` for an id not held."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        held = self.ids
        pos = np.searchsorted(held, ids)
        ok = pos < held.size
        ok[ok] = held[pos[ok]] == ids[ok]
        if not ok.all():
            raise KeyError(f"ids not in the index: {ids[~ok][:5].tolist()}")
        return [{"id": int(i)} for i in ids]

    def close(self) -> None:
        """Let go of the faiss index."""
        self._index = None


def read_faiss(path: str | os.PathLike, nbits: int | None = None) -> FaissBinaryIndex:
    """A faiss binary index file (:func:`write_faiss`, or ``faiss.write_index_binary``) as a
    :class:`FaissBinaryIndex`; a file faiss cannot read is a one-line :class:`DataError` naming it."""
    faiss = _faiss()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such faiss index file")
    try:
        index = faiss.read_index_binary(path)
    except RuntimeError as e:  # faiss reports a damaged or foreign file as a RuntimeError with its C++ trace
        first = next((line for line in str(e).splitlines() if "Error" in line or "error" in line), "unreadable")
        raise DataError(f"{path}: not a readable faiss binary index ({' '.join(first.split())[:150]})") from None
    return FaissBinaryIndex(index, nbits=nbits, name=path)

"""dsh's codes as a faiss binary index: ``faiss.IndexBinaryFlat``, ``IndexBinaryIVF`` or ``IndexBinaryHash``,
written where ``faiss.read_index_binary`` loads it (needs the ``faiss`` extra; no torch).

>>> write_faiss("db.faissbin", index)                   # a HammingIndex (or codes + nbits)
>>> fidx = faiss.read_index_binary("db.faissbin")
>>> D, I = fidx.search(queries, 10)                     # the distances HammingIndex.search gives

dsh's packed codes are faiss's binary layout already, so they go in as they are; the catalog is not written. The
kinds (``"flat"``, ``"ivf"``, ``"hash"``), their defaults and how ids and odd code lengths are stored:
docs/FORMATS.md ("faiss file"). The file is written atomically (:func:`dsh.utils.fileio.atomic_write`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..codes.bits import check_codes, nbytes_for
from ..errors import InputError
from ..utils.fileio import atomic_write

__all__ = ["FAISS_KINDS", "to_faiss", "write_faiss"]

FAISS_KINDS = ("flat", "ivf", "hash")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ModuleNotFoundError("writing a faiss index needs the faiss package: pip install 'dsh[faiss]'",
                                  name="faiss") from None
    return faiss


def _positive(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


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
        ids = np.asarray(ids)
        if ids.shape != (n,) or (n and ids.dtype.kind not in "iu"):
            raise InputError(f"ids must be {n} integers, got dtype {ids.dtype} shape {ids.shape}")
        ids = ids.astype(np.int64)
        if n and (ids.min() < 0 or np.unique(ids).shape[0] != n):
            raise InputError("ids must be distinct and >= 0")
    own_ids = ids is not None and not np.array_equal(ids, np.arange(n))
    d = 8 * nbytes_for(nbits)
    nlist, nprobe = _positive("nlist", nlist), _positive("nprobe", nprobe)
    hash_bits = _positive("hash_bits", hash_bits)
    if nflip is not None and (isinstance(nflip, bool) or not isinstance(nflip, (int, np.integer)) or nflip < 0):
        raise InputError(f"nflip must be an integer >= 0, got {nflip!r}")
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

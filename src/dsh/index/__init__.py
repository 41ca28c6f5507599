"""Exact Hamming search over packed codes, with no torch, behind one interface (:class:`Index`, in ``base``):
:class:`HammingIndex` (k-NN and range search, a scan or multi-index hashing), the :class:`Catalog` of per-item
records beside it, faiss binary index files (written by ``write_faiss``, searched as a :class:`FaissBinaryIndex`),
and a Milvus collection (:class:`MilvusIndex`, imported on first use: it needs the ``milvus`` extra).
:func:`open_index` opens any of them from a path, a Milvus URI and collection, or an :class:`IndexSpec`;
:func:`write_index` writes a HammingIndex to any of them; :func:`warm_up_kernels` compiles the search kernels ahead
of a service's first request."""

from __future__ import annotations

from ..utils.lazy import lazy_exports
from .base import Index
from .catalog import Catalog
from .faiss_file import FaissBinaryIndex, read_faiss, to_faiss, write_faiss
from .flat import HammingIndex, warm_up_kernels
from .store import IndexSpec, check_target, open_index, write_index

__getattr__ = lazy_exports(__name__, {"MilvusIndex": "milvus"})
__all__ = ["Catalog", "FaissBinaryIndex", "HammingIndex", "Index", "IndexSpec", "MilvusIndex", "check_target",
           "open_index", "read_faiss", "to_faiss", "warm_up_kernels", "write_faiss", "write_index"]

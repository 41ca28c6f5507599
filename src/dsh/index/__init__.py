"""Exact Hamming search over packed codes, with no torch: :class:`HammingIndex` (k-NN and range search, a scan or
multi-index hashing), the :class:`Catalog` of per-item records beside it, faiss binary index files, and a Milvus
collection behind the same interface (:class:`MilvusIndex`, imported on first use: it needs the ``milvus`` extra)."""

from __future__ import annotations

from ..utils.lazy import lazy_exports
from .catalog import Catalog
from .flat import HammingIndex

__getattr__ = lazy_exports(__name__, {"MilvusIndex": "milvus", "write_faiss": "faiss_file", "to_faiss": "faiss_file"})
__all__ = ["Catalog", "HammingIndex", "MilvusIndex", "to_faiss", "write_faiss"]

"""Where a new index goes, checked before anything is encoded: a file (dsh's index with its catalog, or a faiss
binary index with its settings) or a Milvus collection. Each setting that does not fit the others is refused in one
line naming its flag, for ``dsh index`` and for any program that takes the same choices."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["check_index_target"]


def check_index_target(*, store: str = "file", out: str | None = None, format: str = "dsh",
                       faiss_index: str = "flat", nlist: int | None = None, hash_bits: int | None = None,
                       uri: str | None = None, collection: str | None = None, overwrite: bool = False,
                       append: bool = False) -> None:
    """Raise :class:`InputError` where the settings (``dsh index``'s flags, by the same names) contradict each
    other: ``store="file"`` writes ``out`` in ``format`` (``"dsh"`` or ``"faiss"``, the latter with
    ``faiss_index``, ``nlist``, ``hash_bits``); ``store="milvus"`` writes ``collection`` at ``uri``, replacing it
    (``overwrite``) or adding to it (``append``)."""
    if store not in ("file", "milvus"):
        raise InputError(f"--store must be file or milvus, got {store!r}")
    if store == "milvus":
        if not (uri and collection):
            raise InputError("index --store milvus needs --uri URI and --collection NAME")
        if out is not None or format != "dsh":
            raise InputError("--out and --format are for index files; --store milvus writes to --uri / --collection")
        if overwrite and append:
            raise InputError("--overwrite replaces the collection and --append adds to it: give one of them")
    else:
        if out is None:
            raise InputError("index needs --out FILE (or --store milvus --uri URI --collection NAME)")
        stray = [f for f, v in (("--uri", uri), ("--collection", collection), ("--overwrite", overwrite),
                                ("--append", append)) if v]
        if stray:
            raise InputError(f"{stray[0]} is for --store milvus")
    if format != "faiss":
        stray = [f for f, v in (("--faiss-index", faiss_index != "flat"), ("--nlist", nlist is not None),
                                ("--hash-bits", hash_bits is not None)) if v]
        if stray:
            raise InputError(f"{stray[0]} is for --format faiss")

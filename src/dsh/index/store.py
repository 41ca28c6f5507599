"""Where an index lives, and opening or writing it there: a dsh index file, a faiss binary index file, or a Milvus
collection (a URI and a collection name). Front ends name the place; this module chooses the backend.

>>> index = open_index("db.dshidx")                          # HammingIndex.load, memory-mapped
>>> index = open_index("db.faissbin")                        # FaissBinaryIndex, read-only
>>> index = open_index("codes.db", collection="digits")      # MilvusIndex.open: Milvus Lite file, or http://host:19530
>>> index = open_index(IndexSpec("codes.db", "digits"))      # the same place as one value
>>> write_index(hamming_index, IndexSpec("codes.db", "digits"), overwrite=True).summary

A file is told by its first bytes (dsh's ``DSHINDEX``, faiss's ``IB...``), never by its name. Every open index is a
:class:`dsh.index.base.Index`; ``close()`` (or ``with``) lets go of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, InputError
from .faiss_file import FAISS_KINDS, read_faiss, write_faiss
from .flat import HammingIndex
from .live import LiveIndex, has_changes_logged

__all__ = ["IndexSpec", "Written", "check_target", "is_dsh_index_file", "open_index", "write_index"]

DEFAULT_TIMEOUT = 10.0  # seconds to wait for a Milvus connection (dsh.index.milvus.DEFAULT_TIMEOUT)
_DSH_MAGIC = b"DSHINDEX"
_FAISS_MAGIC = b"IB"  # faiss's binary index files begin with a fourcc "IB..": IBxF flat, IBMp id map, IBwF IVF, ...
_URI_PREFIXES = ("http://", "https://", "tcp://", "unix:")


@dataclass(frozen=True)
class IndexSpec:
    """Where an index is: a file (``location`` a path, ``collection`` None) or a Milvus collection (``location``
    its URI: a Milvus Lite file ``NAME.db`` or ``http://host:19530``; ``collection`` its name). ``timeout``:
    seconds to wait for a Milvus connection."""

    location: str | os.PathLike
    collection: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_milvus(self) -> bool:
        return self.collection is not None

    def __str__(self) -> str:
        if self.is_milvus:
            return f"Milvus collection {self.collection!r} in {os.fspath(self.location)}"
        return os.fspath(self.location)

    @classmethod
    def from_flags(cls, command: str, *, index: str | None = None, store: str = "file", uri: str | None = None,
                   collection: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> "IndexSpec":
        """The place that a command's ``--index FILE`` or ``--store milvus --uri URI --collection NAME`` names
        (``dsh search`` and ``dsh serve`` take the same flags); a combination that does not name one place is a
        one-line ``InputError`` naming the flags."""
        if store == "milvus":
            if not (uri and collection):
                raise InputError(f"{command} --store milvus needs --uri URI and --collection NAME")
            if index is not None:
                raise InputError(f"--index is an index file; with --store milvus, dsh {command} reads --uri and "
                                 f"--collection")
            return cls(uri, collection, timeout)
        if store != "file":
            raise InputError(f"--store must be file or milvus, got {store!r}")
        if index is None:
            raise InputError(f"{command} needs --index FILE (or --store milvus --uri URI --collection NAME)")
        if uri or collection:
            raise InputError(f"{'--uri' if uri else '--collection'} is for --store milvus")
        return cls(index)


def _spec(where, collection: str | None, timeout: float | None) -> IndexSpec:
    if isinstance(where, IndexSpec):
        if collection is not None:
            raise InputError("give the collection in the IndexSpec or as collection=, not both")
        return where if timeout is None else IndexSpec(where.location, where.collection, timeout)
    if not isinstance(where, (str, os.PathLike)):
        raise InputError(f"an index is named by a path, a Milvus URI or an IndexSpec, got {type(where).__name__}")
    return IndexSpec(where, collection, DEFAULT_TIMEOUT if timeout is None else timeout)


def open_index(where, collection: str | None = None, *, nbits: int | None = None, mmap: bool = True,
               verify: bool = True, timeout: float | None = None):
    """The index at ``where``: a path, a Milvus URI with ``collection``, or an :class:`IndexSpec`.

    - a dsh index file (``.dshidx``, :meth:`HammingIndex.load`): with its catalog, memory-mapped unless
      ``mmap=False``; ``verify=False`` skips the checksums; where its change log holds changes not yet folded in,
      a read-only :class:`dsh.index.live.LiveIndex` (the file and its log, as they are now);
    - a faiss binary index file (:func:`dsh.index.faiss_file.read_faiss`): read-only, no catalog; ``nbits`` its
      code length where that is not the file's ``8 * ceil(nbits / 8)`` dimensions;
    - a Milvus collection (:meth:`dsh.index.milvus.MilvusIndex.open`, needs the ``milvus`` extra).

    ``nbits``, when given, must be the index's. A missing, damaged or foreign file is a one-line ``DataError``
    naming it."""
    spec = _spec(where, collection, timeout)
    if spec.is_milvus:
        from .milvus import MilvusIndex

        return MilvusIndex.open(spec.location, spec.collection, nbits=nbits, timeout=spec.timeout)
    path = Path(spec.location)
    text = os.fspath(spec.location)
    if text.startswith(_URI_PREFIXES) or (path.suffix == ".db" and not _starts_with(path, (_DSH_MAGIC,
                                                                                             _FAISS_MAGIC))):
        raise InputError(f"{text} is a Milvus URI: name the collection too (collection=NAME, --collection NAME)")
    if not path.is_file():
        raise DataError(f"{path}: no such index file")
    if _starts_with(path, (_DSH_MAGIC,)):
        # changes logged beside the file (dsh index add / remove, a writable dsh serve) are part of the index
        index = LiveIndex.open(path, writable=False, verify=verify) if has_changes_logged(path) else \
            HammingIndex.load(path, mmap=mmap, verify=verify)
    elif _starts_with(path, (_FAISS_MAGIC,)):
        return read_faiss(path, nbits=nbits)
    else:
        raise DataError(f"{path}: not an index file (neither a dsh index nor a faiss binary index)")
    if nbits is not None and int(nbits) != index.nbits:
        raise DataError(f"{path} holds {index.nbits}-bit codes, not {nbits}-bit")
    return index


def is_dsh_index_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a dsh index file (by its first bytes; False for a folder, a URI or a missing file)."""
    return Path(path).is_file() and _starts_with(Path(path), (_DSH_MAGIC,))


def _starts_with(path: Path, magics: tuple[bytes, ...]) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return any(head.startswith(m) for m in magics)


@dataclass(frozen=True)
class Written:
    """What :func:`write_index` wrote: ``count`` codes of ``nbits`` bits into ``where``; ``total`` the codes held
    there after an append; ``faiss_type`` and ``dims`` for a faiss file."""

    where: str
    count: int
    nbits: int
    total: int | None = None
    faiss_type: str | None = None
    dims: int | None = None

    @property
    def summary(self) -> str:
        """One line that says so."""
        what = f"{self.count} codes of {self.nbits} bits"
        if self.total is not None:
            return f"added {what} to {self.where} (now {self.total})"
        if self.faiss_type is not None:
            return f"wrote {what} as a faiss {self.faiss_type} ({self.dims} dimensions; no catalog) into {self.where}"
        return f"indexed {what} into {self.where}"


def _target(target) -> IndexSpec:
    return target if isinstance(target, IndexSpec) else _spec(target, None, None)


def _check_options(spec: IndexSpec, format: str, overwrite: bool, append: bool) -> None:
    if format not in ("dsh", "faiss"):
        raise InputError(f"format must be dsh or faiss, got {format!r}")
    if spec.is_milvus:
        if format != "dsh":
            raise InputError("a Milvus collection holds dsh's codes and catalog: format='faiss' is for files")
        if overwrite and append:
            raise InputError("overwrite replaces the collection and append adds to it: choose one")
    elif overwrite or append:
        raise InputError("overwrite and append are for a Milvus collection; a file is replaced whole")


def check_target(target, *, format: str = "dsh", overwrite: bool = False, append: bool = False) -> None:
    """Raise now the error that :func:`write_index` to ``target`` would (a Milvus server out of reach, a
    collection that exists without ``overwrite``, none to ``append`` to), before anything is encoded; writes
    nothing."""
    spec = _target(target)
    _check_options(spec, format, overwrite, append)
    if spec.is_milvus:
        from .milvus import MilvusIndex

        MilvusIndex.check_writable(spec.location, spec.collection, overwrite=overwrite, append=append,
                                   timeout=spec.timeout)


def write_index(index: HammingIndex, target, *, format: str = "dsh", overwrite: bool = False, append: bool = False,
                faiss_kind: str = "flat", **faiss_settings) -> Written:
    """Write ``index`` (codes, ids, catalog, metadata) to ``target`` (a path or an :class:`IndexSpec`):

    - a file, ``format="dsh"``: :meth:`HammingIndex.save` (its catalog beside it);
    - a file, ``format="faiss"``: :func:`dsh.index.faiss_file.write_faiss` of kind ``faiss_kind`` (``flat``,
      ``ivf``, ``hash``) with ``faiss_settings`` (``nlist``, ``hash_bits``, ...); codes and ids only;
    - a Milvus collection: a new one (``overwrite`` replaces one that exists), or with ``append`` the items added
      to an existing one (new ids, counting on after its largest).
    """
    spec = _target(target)
    _check_options(spec, format, overwrite, append)
    if format == "faiss":
        if faiss_kind not in FAISS_KINDS:
            raise InputError(f"faiss_kind must be one of {', '.join(FAISS_KINDS)}, got {faiss_kind!r}")
    elif faiss_kind != "flat" or faiss_settings:
        raise InputError("faiss_kind and its settings are for format='faiss'")
    if spec.is_milvus:
        from .milvus import MilvusIndex

        if append:
            with MilvusIndex.open(spec.location, spec.collection, timeout=spec.timeout) as out:
                out.add_index(index)
                return Written(str(out), index.ntotal, index.nbits, total=out.ntotal)
        with MilvusIndex.from_index(index, spec.location, spec.collection, overwrite=overwrite,
                                    timeout=spec.timeout) as out:
            return Written(str(out), index.ntotal, index.nbits)
    where = os.fspath(spec.location)
    if format == "faiss":
        fidx = write_faiss(where, index, kind=faiss_kind, **faiss_settings)
        return Written(where, index.ntotal, index.nbits, faiss_type=type(fidx).__name__, dims=int(fidx.d))
    index.save(where)
    return Written(where, index.ntotal, index.nbits)

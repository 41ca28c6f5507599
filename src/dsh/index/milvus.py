"""Milvus as a search backend: dsh's codes and catalog in a Milvus collection, searched exactly as
:class:`dsh.index.flat.HammingIndex` searches (no torch; needs the ``milvus`` extra: ``pip install "dsh[milvus]"``).

>>> index = MilvusIndex.from_index(hamming_index, "codes.db", "digits")     # Milvus Lite: a local file
>>> index = MilvusIndex.open("http://127.0.0.1:19530", "digits")            # or a Milvus server
>>> D, I = index.search(queries, k=10)          # int32[nq, 10], int64[nq, 10], ordered by (distance, id)
>>> lims, D, I = index.range_search(queries, 2)
>>> index.lookup(I[0])                           # [{"id", "label", "class", "path", "key"}, ...]
>>> Searcher(index).search_hex(["F7"], k=5)      # dsh.runtime.searcher.Searcher takes any dsh.index.base.Index

:class:`MilvusIndex` is a :class:`dsh.index.base.Index` (``nbits``, ``ntotal``, ``search``, ``range_search``,
``add``, ``remove``, ``lookup``, ``catalog``, ``metadata`` with the model record, ``close``), and has HammingIndex's
``reconstruct``, ``reset``, ``ids`` and ``codes`` too (``catalog``, ``ids`` and ``codes`` read the whole collection).
:func:`dsh.index.store.open_index` opens it from a URI and collection name. Its results are HammingIndex's,
ties and all: Milvus returns codes at equal distance in an order of its own and caps a request at 16,384 results, so a
k-NN query asks for more results until the last one is farther than the k-th (every code at the k-th distance is
then among them) and sorts them by (distance, id); a query whose ties do not fit in one request, and a range query
with more results than that, are gathered one distance at a time, a distance with too many codes in id ranges
split until each fits. Nothing is approximate: the collection is indexed ``BIN_FLAT`` with metric ``HAMMING``.

The URI is a local file (Milvus Lite, embedded: ``NAME.db``, created if absent, the file name at most 36
characters of ``[A-Za-z0-9._-]``; one process at a time may open it) or a server, ``http://host:19530``
(``https://``, ``tcp://`` and ``unix:`` too); the same code serves both. A server's token comes from the
environment, ``$DSH_MILVUS_TOKEN`` (``user:password`` or an API key), never from a command line.

The collection's fields, the ``dsh_meta`` row and how a write is made safe: docs/FORMATS.md ("Milvus collection").
Errors are one-line :class:`dsh.errors.DataError` (an unreachable server, a missing or foreign collection,
another ``nbits``, a failed Milvus call) or :class:`dsh.errors.InputError` (a malformed URI or collection name,
bad arrays), as HammingIndex's are.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..codes.bits import check_codes, nbytes_for
from ..errors import DataError, InputError, UserError, one_line
from .base import check_k, check_new_ids, check_radius, check_whole
from .catalog import Catalog

__all__ = ["MilvusIndex", "MissingExtraError", "META_COLLECTION", "TOPK_MAX", "check_uri", "check_collection_name"]

META_COLLECTION = "dsh_meta"  # one per database: a JSON row per dsh collection
TOPK_MAX = 16384  # Milvus's cap on the results of one query (its "topk"), search and range search alike
DEFAULT_TIMEOUT = 10.0  # seconds to wait for a connection
TOKEN_ENV = "DSH_MILVUS_TOKEN"

_FORMAT, _VERSION = "dsh-milvus", 1
_VARCHAR_MAX = 65535  # bytes, Milvus's largest VARCHAR
_META_MAX = 65536  # bytes of the metadata JSON: a server's default JSON field limit
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LITE_NAME_RE = re.compile(r"[A-Za-z0-9.\-_]+\Z")
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
_CHUNK_IDS = 4096  # ids per query(ids=...) / delete call
_MAX_HITS = 1 << 21  # results per search request (nq x limit), about 25 MB of ids and distances
_INSERT_BATCH = 10_000
# A server collection may have several writers at once, so new items there take random ids below 2**53 (exact in
# a JavaScript number, so the page shows them right), drawn afresh until none is held; two writers draw the same id
# at the same instant with odds of about n1 * n2 / 2**53.
RANDOM_ID_BITS = 53
# Ids new_ids drew (and found free) that no add has used yet, at most this many remembered: an add of those ids
# need not ask the server again whether they are held
_DRAWN_MAX = 1 << 16
# What several writers of one collection share in its metadata row, read again before each write
_SHARED_META = ("catalog", "columns", "label_kind", "label_columns", "class_names")


class MissingExtraError(UserError, ImportError):
    """Milvus support is not installed (the ``milvus`` extra)."""


# -- names and connections -----------------------------------------------------------------------------------------


def check_uri(uri: str | os.PathLike) -> tuple[str, str]:
    """``(kind, uri)``: ``("lite", absolute path)`` for a Milvus Lite file, ``("server", uri)`` for a server.
    ``InputError`` for anything else."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(f"a Milvus URI must be a non-empty string, got {uri!r}")
    if uri.startswith(_SERVER_SCHEMES):
        return "server", uri
    if "://" in uri:
        raise InputError(f"Milvus URI {uri!r}: use a Milvus Lite file (NAME.db) or "
                         f"{', '.join(s + '...' for s in _SERVER_SCHEMES)}")
    path = Path(uri).expanduser()
    name = path.name
    if not name.endswith(".db"):
        raise InputError(f"Milvus URI {uri!r}: a Milvus Lite database is a file whose name ends in .db "
                         f"(a server is http://host:19530)")
    if len(name) > 36 or not _LITE_NAME_RE.match(name):
        raise InputError(f"Milvus Lite file name {name!r}: at most 36 characters of letters, digits, '.', '-' "
                         f"and '_' (a limit of Milvus Lite; the folder may be anything)")
    return "lite", str(path.resolve())


def check_collection_name(name: str) -> str:
    """A collection name Milvus accepts (letters, digits, ``_``; not starting with a digit; at most 255), and
    not ``dsh_meta``; ``InputError`` otherwise."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 255:
        raise InputError(f"Milvus collection name {name!r}: letters, digits and '_', not starting with a digit, "
                         f"at most 255 characters")
    if name == META_COLLECTION:
        raise InputError(f"{META_COLLECTION!r} is where dsh keeps what each collection is; choose another name")
    return name


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise MissingExtraError("Milvus needs the milvus extra: pip install 'dsh[milvus]' (pymilvus and "
                                "milvus-lite)") from None
    return pymilvus


def _check_lite_installed() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        try:
            import milvus_lite  # noqa: F401
        except ImportError as e:
            if "pkg_resources" in str(e):
                raise MissingExtraError("milvus-lite 2.5 imports pkg_resources, which setuptools 81 removed: pip "
                                        "install 'setuptools<81'") from None
            raise MissingExtraError("a Milvus Lite file needs milvus-lite: pip install 'dsh[milvus]'") from None


def _version(pm) -> tuple[int, ...]:
    parts = []
    for x in str(getattr(pm, "__version__", "0")).split(".")[:2]:
        digits = re.match(r"\d+", x)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def _message(e: BaseException) -> str:
    return one_line(getattr(e, "message", None) or e, limit=300)


def connect(uri: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT, token: str | None = None):
    """A ``pymilvus.MilvusClient`` for ``uri`` (see :func:`check_uri`); ``DataError`` where it cannot be had
    within ``timeout`` seconds. ``token`` defaults to ``$DSH_MILVUS_TOKEN``.

    pymilvus's own log (its ``"pymilvus"`` logger, which writes to stderr) is set to CRITICAL: every failure it
    would log reaches the caller as one :class:`DataError` already, and Milvus Lite's query iterator warns of a
    missing server timestamp on every page."""
    pm = _pymilvus()
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    kind, where = check_uri(uri)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InputError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    if kind == "lite":
        _check_lite_installed()
        if not Path(where).parent.is_dir():
            raise DataError(f"{where}: the folder of this Milvus Lite file does not exist")
    extra = {}
    if _version(pm) < (2, 6):
        # pymilvus 2.5 shares one connection among the clients of a URI, and closing any one closes it for all:
        # a connection of its own for each index
        extra["alias"] = f"dsh-{uuid.uuid4().hex}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            return pm.MilvusClient(uri=where, token=token, timeout=float(timeout), **extra)
    except pm.MilvusException as e:
        if kind == "lite":
            raise DataError(f"{where}: cannot open this Milvus Lite database ({_message(e)}); is another process "
                            f"using it? Milvus Lite lets one process at a time open a file") from None
        raise DataError(f"cannot reach Milvus at {where} within {timeout:g} s: {_message(e)}") from None


# -- the index -----------------------------------------------------------------------------------------------------


class MilvusIndex:
    """Exact Hamming search over a Milvus collection of ``nbits``-bit codes with their catalog.

    Made by :meth:`create` (empty), :meth:`from_index` (a :class:`~dsh.index.flat.HammingIndex` written out) or
    :meth:`open` (an existing collection). ``close()`` (or ``with``) lets go of the connection.
    """

    def __init__(self, client, uri: str, collection: str, meta: dict):
        # internal: use create / from_index / open
        self._client = client
        self._uri = uri
        self._name = collection
        self._meta = meta
        self._saved = _meta_text(meta)  # the row as last read or written: a write is needed when they differ
        self._dim = 8 * nbytes_for(meta["nbits"])
        self._shared = check_uri(uri)[0] == "server"  # other clients may write it meanwhile
        self._drawn: dict[int, None] = {}  # new_ids' ids not yet added, oldest first
        self._drawn_lock = threading.Lock()

    # -- making and opening ----------------------------------------------------------------------------------------

    @classmethod
    def create(cls, uri: str | os.PathLike, collection: str, nbits: int, *, overwrite: bool = False,
               metadata: dict | None = None, timeout: float = DEFAULT_TIMEOUT, token: str | None = None
               ) -> "MilvusIndex":
        """A new, empty collection for ``nbits``-bit codes. An existing collection of that name is an error
        (``DataError``) unless ``overwrite``, which drops it first (only one that dsh wrote)."""
        return cls._new(uri, collection, nbits, overwrite=overwrite, metadata=metadata, timeout=timeout,
                        token=token, complete=True)

    @classmethod
    def from_index(cls, index, uri: str | os.PathLike, collection: str, *, overwrite: bool = False,
                   timeout: float = DEFAULT_TIMEOUT, token: str | None = None, batch_size: int = _INSERT_BATCH,
                   progress=None) -> "MilvusIndex":
        """Write a :class:`~dsh.index.flat.HammingIndex` (codes, ids, catalog, metadata) into a new collection.

        The collection is marked incomplete until every row is in; if anything fails it is dropped, so a
        half-written collection is never left behind (a process killed half way leaves one that :meth:`open`
        refuses). ``progress``: called with the number of rows written so far, after each batch."""
        batch_size = check_whole("batch_size", batch_size, 1)
        meta_user = {k: v for k, v in index.metadata.items() if k != "catalog"}  # "catalog" names a file
        out = cls._new(uri, collection, index.nbits, overwrite=overwrite, metadata=meta_user, timeout=timeout,
                       token=token, complete=False)
        with out._filling(complete=True):
            cat = index.catalog
            if cat is not None and cat.class_names:
                out.add(index.codes[:0], labels=cat.labels[:0] if cat.labels is not None else None,
                        class_names=cat.class_names)
            n, step = index.ntotal, int(batch_size)
            for a in range(0, n, step):
                b = min(a + step, n)
                cols: dict[str, Any] = {}
                if cat is not None:
                    rows = np.arange(a, b)
                    if cat.labels is not None:
                        cols["labels"] = np.asarray(cat.labels[a:b])
                    if cat.paths is not None:
                        cols["paths"] = cat.paths.take(rows)
                    if cat.keys is not None:
                        cols["keys"] = cat.keys.take(rows)
                out._add(np.asarray(index.codes[a:b]), np.asarray(index.ids[a:b]), save=False,
                         force_catalog=cat is not None, check_ids=False, **cols)
                if progress is not None:
                    progress(b)
            out._client.flush(collection)
        return out

    @classmethod
    def open(cls, uri: str | os.PathLike, collection: str, *, nbits: int | None = None,
             timeout: float = DEFAULT_TIMEOUT, token: str | None = None) -> "MilvusIndex":
        """An existing dsh collection; ``nbits``, when given, must be the collection's. ``DataError`` for a
        collection that is missing, not dsh's, incomplete (an interrupted write) or of another ``nbits``."""
        name = check_collection_name(collection)
        kind, where = check_uri(uri)
        client = connect(where, timeout, token)
        try:
            meta = cls._check_existing(client, where, name)
            if meta is None:
                raise DataError(f"no collection {name!r} in {where}")
            if not meta.get("complete"):
                raise DataError(f"collection {name!r} in {where} is incomplete (a write that did not finish); "
                                f"write it again with dsh index --overwrite (overwrite=True)")
            if nbits is not None and int(nbits) != meta["nbits"]:
                raise DataError(f"collection {name!r} in {where} holds {meta['nbits']}-bit codes, not {nbits}-bit")
            out = cls(client, where, name, meta)
            with out._calls("load"):
                client.load_collection(name)
            return out
        except BaseException:
            client.close()
            raise

    @classmethod
    def check_writable(cls, uri: str | os.PathLike, collection: str, *, overwrite: bool = False,
                       append: bool = False, timeout: float = DEFAULT_TIMEOUT, token: str | None = None) -> None:
        """Raise the ``DataError`` / ``InputError`` that writing ``collection`` would (a server out of reach, a
        collection that exists without ``overwrite``, none to ``append`` to, one that dsh did not write), before
        anything is computed; writes nothing."""
        name = check_collection_name(collection)
        kind, where = check_uri(uri)
        if overwrite and append:
            raise InputError("overwrite replaces the collection and append adds to it: choose one")
        client = connect(where, timeout, token)
        try:
            existing = cls._check_existing(client, where, name)
        finally:
            client.close()
        if append:
            if existing is None:
                raise DataError(f"no collection {name!r} in {where} to append to")
            if not existing.get("complete"):
                raise DataError(f"collection {name!r} in {where} is incomplete (a write that did not finish); "
                                f"write it again with dsh index --overwrite (overwrite=True)")
        elif existing is not None and not overwrite:
            raise DataError(cls._exists_message(name, where, existing))

    @staticmethod
    def _exists_message(name: str, where: str, existing: dict) -> str:
        state = "" if existing.get("complete") else " (incomplete: a write that did not finish)"
        return (f"collection {name!r} already exists in {where}{state}: dsh index --overwrite (overwrite=True) "
                f"replaces it, --append adds to it")

    @classmethod
    def _new(cls, uri, collection, nbits, *, overwrite, metadata, timeout, token, complete) -> "MilvusIndex":
        name = check_collection_name(collection)
        nbits = check_whole("nbits", nbits, 1)
        if metadata is not None and not isinstance(metadata, dict):
            raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")
        kind, where = check_uri(uri)
        client = connect(where, timeout, token)
        try:
            existing = cls._check_existing(client, where, name)
            if existing is not None:
                if not overwrite:
                    raise DataError(cls._exists_message(name, where, existing))
            meta = {"format": _FORMAT, "version": _VERSION, "nbits": int(nbits), "complete": False,
                    "catalog": False, "columns": [], "label_kind": None, "label_columns": 0, "class_names": [],
                    "next_id": 0, "metadata": dict(metadata or {})}
            _check_meta_size(meta)
            out = cls(client, where, name, meta)
            if existing is not None:
                out._drop_quietly(raise_errors=True)
            out._ensure_meta_collection()
            out._save_meta()  # marked incomplete before the collection exists: an interruption is detectable
            with out._filling(complete=complete):
                out._create_collection()
            return out
        except BaseException:
            client.close()
            raise

    @contextmanager
    def _filling(self, complete: bool) -> Iterator[None]:
        """Around the work that fills a new collection: if it fails, the collection is dropped, so no half-made
        one is left; if it succeeds and ``complete``, the collection is marked complete."""
        try:
            yield
            if complete:
                self._meta["complete"] = True
                self._save_meta()
        except BaseException:
            self._drop_quietly()
            raise

    @staticmethod
    def _check_existing(client, where: str, name: str) -> dict | None:
        """The metadata row of collection ``name``, or ``None`` where there is no such collection (a stale row
        without its collection counts as none). ``DataError`` for a collection that dsh did not write."""
        try:
            exists = client.has_collection(name)
            has_meta = client.has_collection(META_COLLECTION)
            rows = []
            if has_meta:
                client.load_collection(META_COLLECTION)  # a server may have released it
                rows = _query_ids(client, META_COLLECTION, [name], ["meta"], pk="name")
        except Exception as e:  # noqa: BLE001 - pymilvus raises MilvusException or grpc errors
            raise DataError(f"Milvus at {where}: cannot read its collections: {_message(e)}") from None
        meta = rows[0]["meta"] if rows else None
        if not exists:
            if meta is not None and not meta.get("complete"):
                return {**meta, "complete": False}  # killed before the collection was made: replaceable
            return None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise DataError(f"collection {name!r} in {where} was not written by dsh (no record of it in "
                            f"{META_COLLECTION}); dsh neither reads nor replaces it")
        if meta.get("version") != _VERSION:
            raise DataError(f"collection {name!r} in {where} is in dsh-milvus format version {meta.get('version')}, "
                            f"this dsh reads version {_VERSION}")
        return meta

    def _ensure_meta_collection(self) -> None:
        pm = _pymilvus()
        c = self._client
        with self._calls(f"create {META_COLLECTION}"):
            if not c.has_collection(META_COLLECTION):
                s = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                  description="dsh: what each dsh collection in this database is")
                s.add_field("name", pm.DataType.VARCHAR, is_primary=True, max_length=255)
                s.add_field("meta", pm.DataType.JSON)
                s.add_field("v", pm.DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in a collection
                ip = c.prepare_index_params()
                ip.add_index(field_name="v", index_type="FLAT", metric_type="L2")
                try:
                    c.create_collection(META_COLLECTION, schema=s, index_params=ip, consistency_level="Strong")
                except pm.MilvusException:
                    if not c.has_collection(META_COLLECTION):  # another writer made it meanwhile: fine
                        raise
            c.load_collection(META_COLLECTION)

    def _create_collection(self) -> None:
        pm = _pymilvus()
        c, T = self._client, pm.DataType
        s = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                          description=f"dsh: {self.nbits}-bit binary hash codes and their catalog")
        s.add_field("id", T.INT64, is_primary=True)
        s.add_field("code", T.BINARY_VECTOR, dim=self._dim)
        s.add_field("label", T.INT64)
        s.add_field("labels", T.JSON)
        s.add_field("class_name", T.VARCHAR, max_length=_VARCHAR_MAX)
        s.add_field("path", T.VARCHAR, max_length=_VARCHAR_MAX)
        s.add_field("key", T.VARCHAR, max_length=_VARCHAR_MAX)
        ip = c.prepare_index_params()
        ip.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        with self._calls("create the collection"):
            c.create_collection(self._name, schema=s, index_params=ip, consistency_level="Strong")
            c.load_collection(self._name)

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def nbits(self) -> int:
        return int(self._meta["nbits"])

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def collection(self) -> str:
        return self._name

    @property
    def client(self):
        """The ``pymilvus.MilvusClient`` (for filters and queries of one's own)."""
        return self._client

    @property
    def ntotal(self) -> int:
        """How many codes the collection holds now (asked of Milvus)."""
        with self._calls("count"):
            rows = self._client.query(self._name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __len__(self) -> int:
        return self.ntotal

    @property
    def metadata(self) -> dict:
        """The index's metadata (the model record, the source, ...), as HammingIndex's; changes are written by
        the next ``add`` / ``remove`` / ``reset`` or by :meth:`save_metadata`."""
        return self._meta["metadata"]

    @metadata.setter
    def metadata(self, value: dict) -> None:
        if not isinstance(value, dict):
            raise InputError(f"metadata must be a dict, got {type(value).__name__}")
        self._meta["metadata"] = value

    @property
    def columns(self) -> tuple[str, ...]:
        """The catalog columns this index has, among ``"labels"``, ``"paths"``, ``"keys"``."""
        return tuple(self._meta["columns"])

    @property
    def class_names(self) -> list[str]:
        return list(self._meta["class_names"])

    def save_metadata(self) -> None:
        """Write :attr:`metadata` to Milvus now."""
        self._save_meta()

    def __repr__(self) -> str:
        return f"MilvusIndex(uri={self._uri!r}, collection={self._name!r}, nbits={self.nbits})"

    def __str__(self) -> str:
        return f"Milvus collection {self._name!r} in {self._uri}"

    def close(self) -> None:
        """Let go of the connection (a Milvus Lite file is free for another process once all are closed)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "MilvusIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def drop(self) -> None:
        """Delete the collection and its metadata row, then close."""
        self._drop_quietly(raise_errors=True)
        self.close()

    # -- changing --------------------------------------------------------------------------------------------------

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None, *, labels=None, paths=None, keys=None,
            class_names=None) -> np.ndarray:
        """Add ``codes`` with ``ids`` and catalog columns, with HammingIndex.add's rules, and return the ids
        (``int64[n]``). Default ids: in a Milvus Lite file (one process at a time) they count on from one more
        than the largest id held, as HammingIndex's; in a server collection, which several clients may write at
        once, they are random, below 2**53, and not held (see :data:`RANDOM_ID_BITS`). A column not given gets its
        fill value; nothing changes if an argument is refused (``InputError``, also for ids already held).

        Once this returns, every client of the collection finds the new codes (searches ask for consistency
        level Strong)."""
        return self._add(codes, ids, labels=labels, paths=paths, keys=keys, class_names=class_names)

    def add_index(self, index) -> int:
        """Append every item of a :class:`~dsh.index.flat.HammingIndex` (codes and catalog; new ids, counting on), after
        checking that its codes are as long as these and, where both record their model, made by the same model
        (codes of two models are not comparable). Returns the number of items added."""
        if index.nbits != self.nbits:
            raise InputError(f"{self} holds {self.nbits}-bit codes; these are {index.nbits}-bit")
        made_by = (self.metadata.get("model") or {}).get("fingerprint")
        new_by = (index.metadata.get("model") or {}).get("fingerprint")
        if made_by and new_by and made_by != new_by:
            raise InputError(f"{self} holds codes of another model (fingerprint {made_by[:12]} vs {new_by[:12]}); "
                             f"they would not be comparable")
        cat = index.catalog
        self.add(np.asarray(index.codes), labels=None if cat is None else cat.labels,
                 paths=None if cat is None else cat.paths, keys=None if cat is None else cat.keys,
                 class_names=None if cat is None or not cat.class_names else cat.class_names)
        return index.ntotal

    def _add(self, codes, ids=None, *, labels=None, paths=None, keys=None, class_names=None, save: bool = True,
             force_catalog: bool = False, check_ids: bool = True) -> np.ndarray:
        codes = check_codes(codes, self.nbits)
        n = codes.shape[0]
        if save:  # (from_index fills a new collection, which no other client opens until it is complete)
            self._refresh_shared()
        if ids is None:
            ids = self._draw_ids(n)
        else:
            ids = check_new_ids(ids, n)
            # from_index: a new collection holds none. Ids new_ids just drew were found free then, and another
            # writer gives the same random id meanwhile with odds of about n * (its adds) / 2**53
            check_ids = check_ids and not self._take_drawn(ids)
            clash = self._held(ids) if check_ids else ids[:0]
            if clash.size:
                raise InputError(f"{clash.size} ids are already in the index, e.g. {clash[:5].tolist()}")
        given = any(x is not None for x in (labels, paths, keys, class_names))
        merged = None
        if self._meta["catalog"] or given or force_catalog:
            merged = self._skeleton().concat(
                Catalog.from_columns(n, labels=labels, paths=paths, keys=keys, class_names=class_names))
        if n:
            _check_fits(merged)
            try:
                for a in range(0, n, _INSERT_BATCH):
                    rows = self._rows(codes, ids, merged, a, min(a + _INSERT_BATCH, n))
                    with self._calls("insert"):
                        self._client.insert(self._name, rows)
            except BaseException:
                self._delete_ids(ids, quiet=True)  # nothing half-added
                raise
            if not self._shared:  # a server collection's new ids are random: counting on would only cost a write
                self._meta["next_id"] = max(int(self._meta["next_id"]), int(ids.max()) + 1)
        if merged is not None:
            self._meta.update(catalog=True, columns=list(merged.columns), label_kind=merged.label_kind,
                              label_columns=int(merged.labels.shape[1]) if merged.label_kind == "multi-hot" else 0,
                              class_names=list(merged.class_names))
        if save and _meta_text(self._meta) != self._saved:
            self._save_meta()
        return ids

    def new_ids(self, n: int) -> np.ndarray:
        """``int64[n]`` ids for new items, as :meth:`add` chooses them when given none: counting on in a Milvus
        Lite file; in a server collection random, below 2**53, and not held now, so that other writers of the
        collection (other processes, other services) do not give them too. An :meth:`add` with these ids does not
        ask the server again whether they are held (the last 65,536 drawn are remembered until an add uses them)."""
        out = self._draw_ids(check_whole("n", n, 0))
        if self._shared:
            with self._drawn_lock:
                self._drawn.update(dict.fromkeys(out.tolist()))
                while len(self._drawn) > _DRAWN_MAX:
                    del self._drawn[next(iter(self._drawn))]
        return out

    def _draw_ids(self, n: int) -> np.ndarray:
        """:meth:`new_ids`' ids, not remembered (an add with default ids uses them at once)."""
        if not self._shared:
            start = int(self._meta["next_id"])
            return np.arange(start, start + n, dtype=np.int64)
        out = np.zeros(0, np.int64)
        while out.size < n:
            draw = np.frombuffer(os.urandom(8 * (n - out.size)), np.uint64) >> np.uint64(64 - RANDOM_ID_BITS)
            out = np.unique(np.concatenate([out, draw.astype(np.int64)]))  # a repeat within the batch: draw again
            out = out[~np.isin(out, self._held(out))]
        return out

    def _take_drawn(self, ids: np.ndarray) -> bool:
        """Whether new_ids drew every one of ``ids`` (and no add used them yet); they are then forgotten."""
        ids = ids.tolist()
        with self._drawn_lock:
            if not ids or not all(i in self._drawn for i in ids):
                return False
            for i in ids:
                del self._drawn[i]
        return True

    def remove(self, ids) -> int:
        """Remove the codes with these ids (ids not held are ignored); returns how many were removed."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        held = self._held(ids)
        if held.size:
            self._delete_ids(held)
            top = int(self._meta["next_id"]) - 1
            if not self._shared and top in set(held.tolist()):
                self._meta["next_id"] = self._max_id(top) + 1
                self._save_meta()
        return int(held.size)

    def reset(self) -> None:
        """Remove every code (the metadata, catalog columns and class names stay)."""
        with self._calls("delete"):
            self._client.delete(self._name, filter="id >= 0")
        self._meta["next_id"] = 0
        self._save_meta()

    # -- reading ---------------------------------------------------------------------------------------------------

    def lookup(self, ids) -> list[dict]:
        """The record of each id, as HammingIndex.lookup gives it: ``{"id": id}`` plus the catalog's fields
        (``label``, ``class``, ``path``, ``key``, those the index has); ``KeyError`` for an id not held."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        found = self._fetch(ids, self._catalog_fields())
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        if not ids.size:
            return []
        cat = self._catalog_of([found[int(i)] for i in ids])
        return [{"id": int(i), **cat.record(j)} for j, i in enumerate(ids)]

    @property
    def catalog(self) -> Catalog | None:
        """Every record, read from the collection: a :class:`~dsh.index.catalog.Catalog` whose row ``i`` is the
        ``i``-th smallest id's (as HammingIndex's), or ``None`` where the collection has no catalog. This reads
        the whole collection: :meth:`lookup` reads the records of some ids."""
        if not self._meta["catalog"]:
            return None
        return self._catalog_of(self._scan(self._catalog_fields()))

    @property
    def ids(self) -> np.ndarray:
        """Every id held, ``int64[ntotal]`` ascending (reads the whole collection)."""
        return np.array([r["id"] for r in self._scan(["id"])], np.int64)

    @property
    def codes(self) -> np.ndarray:
        """Every code held, ``uint8[ntotal, nbytes]``, in ascending id order, row for row with :attr:`catalog`
        (reads the whole collection)."""
        rows = self._scan(["id", "code"])
        out = np.zeros((len(rows), self._dim // 8), np.uint8)
        for j, r in enumerate(rows):
            out[j] = np.frombuffer(_code_bytes(r["code"]), np.uint8)
        return out

    def _catalog_fields(self) -> list[str]:
        if self._shared:  # all of them: another writer may have given the catalog a column since (_catalog_of)
            return ["id", "label", "labels", "path", "key"]
        cols = self.columns
        fields = ["id"]
        if "labels" in cols:
            fields.append("labels" if self._meta["label_kind"] == "multi-hot" else "label")
        return fields + [f for f, c in (("path", "paths"), ("key", "keys")) if c in cols]

    def _catalog_of(self, rows: list[dict]) -> Catalog:
        """The catalog of these rows (as :meth:`_catalog_fields` reads them), in their order."""
        if self._shared and any(_unknown_columns(r, self.columns) for r in rows):
            self._refresh_shared()  # another writer gave the catalog a column since this client read it
        cols = self.columns
        labels = None
        if "labels" in cols:
            if self._meta["label_kind"] == "multi-hot":
                labels = np.zeros((len(rows), int(self._meta["label_columns"])), np.uint8)
                for j, r in enumerate(rows):
                    labels[j, list(r["labels"]["ids"])] = 1
            else:
                labels = np.array([r["label"] for r in rows], np.int64)
        return Catalog.from_columns(len(rows), labels=labels,
                                    paths=[r["path"] for r in rows] if "paths" in cols else None,
                                    keys=[r["key"] for r in rows] if "keys" in cols else None,
                                    class_names=self._meta["class_names"])

    def _scan(self, fields: list[str]) -> list[dict]:
        """Every row's ``fields``, in ascending id order (Milvus pages through them with a query iterator)."""
        rows: list[dict] = []
        with self._calls("read every row"):
            it = self._client.query_iterator(self._name, batch_size=_CHUNK_IDS, filter="id >= 0",
                                             output_fields=fields)
            try:
                while batch := it.next():
                    rows.extend(batch)
            finally:
                it.close()
        rows.sort(key=lambda r: int(r["id"]))
        return rows

    def reconstruct(self, ids) -> np.ndarray:
        """Codes ``uint8[len(ids), nbytes]`` of the given ids; ``KeyError`` for an id not held."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        found = self._fetch(ids, ["id", "code"])
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        out = np.zeros((ids.size, self._dim // 8), np.uint8)
        for j, i in enumerate(ids):
            out[j] = np.frombuffer(_code_bytes(found[int(i)]["code"]), np.uint8)
        return out

    # -- search ----------------------------------------------------------------------------------------------------

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes to each query, as HammingIndex.search: ``D int32[nq, k]``, ``I int64[nq, k]``,
        each row ordered by (distance, id), the tail ``-1`` where the index holds fewer than ``k`` codes."""
        q = check_codes(q, self.nbits, name="queries")
        k = check_k(k)
        D = np.full((q.shape[0], k), -1, np.int32)
        I = np.full((q.shape[0], k), -1, np.int64)
        for j, (d, i, _) in enumerate(self._knn(q, k)):
            D[j, : len(i)], I[j, : len(i)] = d, i
        return D, I

    def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code within Hamming distance ``radius`` (inclusive) of each query, as HammingIndex.range_search:
        ``lims int64[nq + 1]``, ``D int32[lims[-1]]``, ``I int64[lims[-1]]``, each query's ordered by (distance,
        id)."""
        q = check_codes(q, self.nbits, name="queries")
        lims, D, I, _ = _joined(self._range(q, check_radius(radius)))
        return lims, D, I

    def search_records(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """:meth:`search` and the record of every code found (as :meth:`lookup` gives it), laid out as
        :meth:`range_search`'s results: ``lims``, ``D``, ``I``, ``records`` (see :class:`dsh.index.base.Index`).
        One Milvus request per block of queries: the search returns the catalog fields with its hits, so no
        lookup follows it (a second request, which could also see a later state of the collection than the
        search did: an item removed meanwhile would have no record)."""
        q = check_codes(q, self.nbits, name="queries")
        return self._with_records(self._knn(q, check_k(k), self._catalog_fields()))

    def range_search_records(self, q: np.ndarray, radius: int
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """:meth:`range_search` and the record of every code found, in one request, as :meth:`search_records`."""
        q = check_codes(q, self.nbits, name="queries")
        return self._with_records(self._range(q, check_radius(radius), self._catalog_fields()))

    def _knn(self, q: np.ndarray, k: int, fields: list[str] | None = None) -> list[tuple]:
        """Per query ``(D int32[m], I int64[m], rows)``, its ``m <= k`` nearest codes ordered by (distance, id);
        ``rows``: each one's ``fields`` (a dict per code), or None without ``fields``."""
        out: list[tuple] = [None] * q.shape[0]
        limit = min(TOPK_MAX, max(2 * k, k + 32))
        todo = np.arange(q.shape[0])
        while todo.size:
            results = self._search(q[todo], limit, fields=fields)
            later = []
            for j, (d, i, rows) in zip(todo, results):
                # fewer results than asked for: nothing was left out. Otherwise every code nearer than the last
                # one returned is among them, and so is every code at the k-th distance once the last is farther
                if len(i) < limit or (len(i) > k and d[-1] > d[k - 1]):
                    m = min(k, len(i))
                    out[j] = (d[:m], i[:m], None if rows is None else rows[:m])
                elif limit >= TOPK_MAX:
                    d, i = self._knn_by_distance(q[j], k, d, i)
                    out[j] = (d, i, self._rows_of(i, fields))
                else:
                    later.append(j)
            todo = np.asarray(later, np.int64)
            limit = min(TOPK_MAX, 4 * limit)
        return out

    def _range(self, q: np.ndarray, radius: int, fields: list[str] | None = None) -> list[tuple]:
        """Per query ``(D, I, rows)`` as :meth:`_knn`'s, every code within distance ``radius``."""
        radius = min(radius, self._dim)
        if q.shape[0] == 0:
            return []
        out = []
        for j, (d, i, rows) in enumerate(self._search(q, TOPK_MAX, lo=0, hi=radius + 1, fields=fields)):
            if len(i) >= TOPK_MAX:  # more than one request holds: gather them a distance at a time
                parts = [self._bucket(q[j], dist) for dist in range(radius + 1)]
                i = np.concatenate(parts)
                d = np.concatenate([np.full(len(p), dist, np.int32) for dist, p in enumerate(parts)])
                rows = self._rows_of(i, fields)
            out.append((d, i, rows))
        return out

    def _rows_of(self, ids: np.ndarray, fields: list[str] | None) -> list[dict] | None:
        """``fields`` of each of ``ids`` (held), for results gathered by more than one request (ties or a range
        past Milvus's cap), where one more request is the least of the cost."""
        if fields is None:
            return None
        found = self._fetch(ids, fields)
        return [found[int(x)] for x in ids]

    def _with_records(self, results: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        lims, D, I, rows = _joined(results)
        if not rows:
            return lims, D, I, []
        cat = self._catalog_of(rows)
        return lims, D, I, [{"id": int(x), **cat.record(t)} for t, x in enumerate(I)]

    def _knn_by_distance(self, qv, k, d, i):
        """k-NN for a query whose ties at the k-th distance overflow a request: the codes nearer than the last
        distance returned are complete; the rest come from each further distance, smallest ids first."""
        t = int(d[-1])
        keep = d < t
        Ds, Is = [d[keep]], [i[keep]]
        got = int(keep.sum())
        for dist in range(t, self._dim + 1):
            if got >= k:
                break
            ids = self._bucket(qv, dist, need=k - got)
            Ds.append(np.full(len(ids), dist, np.int32))
            Is.append(ids)
            got += len(ids)
        return np.concatenate(Ds)[:k], np.concatenate(Is)[:k]

    def _bucket(self, qv, dist: int, need: int | None = None, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Ids (ascending) of the codes at exactly distance ``dist`` from ``qv`` with ``lo <= id < hi`` (``hi``
        None: no upper bound), only the ``need`` smallest when given. An id range whose codes overflow a request
        is split at the median of the ids that came back, so each part holds fewer codes than the whole (ids may
        be anywhere in int64: a server's are random)."""
        flt = None if (lo == 0 and hi is None) else f"id >= {lo}" + ("" if hi is None else f" and id < {hi}")
        [(_, ids, _)] = self._search(qv[None], TOPK_MAX, lo=dist, hi=dist + 1, filter=flt)
        ids = np.sort(ids)
        if len(ids) < TOPK_MAX:
            return ids if need is None else ids[:need]
        mid = int(ids[len(ids) // 2])  # > ids[0] >= lo: the ids below it are left out of the upper part, and so on
        left = self._bucket(qv, dist, need, lo, mid)
        if need is not None and len(left) >= need:
            return left[:need]
        right = self._bucket(qv, dist, None if need is None else need - len(left), mid, hi)
        return np.concatenate([left, right])

    def _search(self, q: np.ndarray, limit: int, lo: int | None = None, hi: int | None = None,
                filter: str | None = None, fields: list[str] | None = None) -> list[tuple]:
        """One Milvus search per block of queries: per query ``(D int32, I int64, rows)`` sorted by (distance,
        id). ``lo``/``hi``: only distances ``lo <= d < hi`` (a range search). ``fields``: the search returns these
        fields of each hit too (``rows``, a dict per hit; None without ``fields``)."""
        params: dict[str, Any] = {"metric_type": "HAMMING"}
        if hi is not None:
            params["params"] = {"radius": int(hi), "range_filter": int(lo or 0)}
        step = max(1, min(TOPK_MAX, _MAX_HITS // max(limit, 1)))
        out = []
        for a in range(0, q.shape[0], step):
            data = [row.tobytes() for row in q[a : a + step]]
            with self._calls("search"):
                # Strong: the search sees every write acknowledged before it was sent, by this client or any other
                # (another service over the collection). Session would miss the other clients' writes, and
                # Bounded (or Eventually) may miss any write of the last few seconds (the server's graceful time,
                # 5 s by default), while an added item must be found through every service at once. Its price is
                # a wait for the server's next time tick, paid once per search now that one request brings the
                # records too.
                res = self._client.search(self._name, data=data, anns_field="code", limit=int(limit),
                                          search_params=params, filter=filter or "", output_fields=fields or [],
                                          consistency_level="Strong")
            for hits in res:
                rows = None
                ids = getattr(hits, "ids", None)
                if fields:
                    rows = [h["entity"] for h in hits]
                    I = np.array([h["id"] for h in hits], np.int64)
                    D = np.rint(np.array([h["distance"] for h in hits], np.float64)).astype(np.int32)
                elif ids is not None:
                    I = np.asarray(ids, np.int64)
                    D = np.rint(np.asarray(hits.distances, np.float64)).astype(np.int32)
                else:  # older pymilvus: a list of dicts
                    I = np.array([h["id"] for h in hits], np.int64)
                    D = np.rint(np.array([h["distance"] for h in hits], np.float64)).astype(np.int32)
                order = np.lexsort((I, D))
                out.append((D[order], I[order], None if rows is None else [rows[t] for t in order]))
        return out

    # -- helpers ---------------------------------------------------------------------------------------------------

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Milvus's errors as one-line DataErrors naming the collection and what was being done."""
        if self._client is None:
            raise DataError(f"{self} is closed")
        try:
            yield
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - MilvusException, or grpc's errors for a server that went away
            pm = _pymilvus()
            import grpc

            if isinstance(e, (pm.MilvusException, grpc.RpcError)):
                raise DataError(f"{self}: {what} failed: {_message(e)}") from None
            raise

    def _skeleton(self) -> Catalog:
        """A zero-row catalog with this index's columns, label kind and class names (for Catalog.concat's
        checks and merging)."""
        m = self._meta
        labels = None
        if "labels" in m["columns"]:
            labels = np.zeros((0, m["label_columns"]), np.uint8) if m["label_kind"] == "multi-hot" else \
                np.zeros(0, np.int64)
        return Catalog.from_columns(0, labels=labels, paths=[] if "paths" in m["columns"] else None,
                                    keys=[] if "keys" in m["columns"] else None, class_names=m["class_names"])

    def _rows(self, codes: np.ndarray, ids: np.ndarray, cat: Catalog | None, a: int, b: int) -> list[dict]:
        """Rows ``a:b`` as Milvus's insert wants them (``cat`` checked by :func:`_check_fits`)."""
        lab = None if cat is None else cat.labels
        multi = lab is not None and lab.ndim == 2
        names = [] if cat is None else cat.class_names

        def strings(col):
            return [""] * (b - a) if col is None else col.take(np.arange(a, b)).tolist()

        paths = strings(None if cat is None else cat.paths)
        keys = strings(None if cat is None else cat.keys)
        rows = []
        for r, j in enumerate(range(a, b)):
            label, labels, cname = -1, [], ""
            if lab is not None:
                if multi:
                    labels = np.flatnonzero(lab[j]).tolist()
                else:
                    label = int(lab[j])
                    if 0 <= label < len(names):
                        cname = names[label]
            rows.append({"id": int(ids[j]), "code": codes[j].tobytes(), "label": label, "labels": {"ids": labels},
                         "class_name": cname, "path": paths[r], "key": keys[r]})
        return rows

    def _fetch(self, ids: np.ndarray, fields: list[str]) -> dict[int, dict]:
        uniq = np.unique(ids)
        found: dict[int, dict] = {}
        for a in range(0, uniq.size, _CHUNK_IDS):
            chunk = [int(x) for x in uniq[a : a + _CHUNK_IDS]]
            with self._calls("query"):
                for r in _query_ids(self._client, self._name, chunk, fields):
                    found[int(r["id"])] = r
        return found

    def _held(self, ids: np.ndarray) -> np.ndarray:
        """Those of ``ids`` the collection holds (ascending)."""
        return np.array(sorted(self._fetch(np.asarray(ids, np.int64), ["id"])), np.int64)

    def _delete_ids(self, ids: np.ndarray, quiet: bool = False) -> None:
        ids = np.asarray(ids, np.int64)
        try:
            for a in range(0, ids.size, _CHUNK_IDS):
                with self._calls("delete"):
                    self._client.delete(self._name, ids=[int(x) for x in ids[a : a + _CHUNK_IDS]])
        except UserError:
            if not quiet:
                raise

    def _count(self, flt: str) -> int:
        with self._calls("count"):
            return int(self._client.query(self._name, filter=flt, output_fields=["count(*)"])[0]["count(*)"])

    def _max_id(self, upper: int) -> int:
        """The largest id held (all are <= ``upper``), -1 for none: a binary search with counts."""
        if self._count("id >= 0") == 0:
            return -1
        lo, hi = 0, upper  # the largest id is in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._count(f"id >= {mid}"):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _save_meta(self) -> None:
        _check_meta_size(self._meta)
        with self._calls(f"write {META_COLLECTION}"):
            self._client.upsert(META_COLLECTION, [{"name": self._name, "meta": self._meta, "v": [0.0, 0.0]}])
        self._saved = _meta_text(self._meta)

    def _refresh_shared(self) -> None:
        """Read again what other writers of a server collection may have changed (its catalog columns and class
        names), so that a write builds on theirs; the rest of the metadata stays this client's."""
        if not self._shared:
            return
        with self._calls(f"read {META_COLLECTION}"):
            rows = _query_ids(self._client, META_COLLECTION, [self._name], ["meta"], pk="name")
        if not rows:
            raise DataError(f"{self}: its record in {META_COLLECTION} is gone (was the collection dropped?)")
        theirs = rows[0]["meta"]
        mine_unsaved = _meta_text(self._meta) != self._saved
        self._meta.update({k: theirs[k] for k in _SHARED_META})
        if not mine_unsaved:
            self._meta["metadata"] = theirs["metadata"]
            self._saved = _meta_text(self._meta)

    def _drop_quietly(self, raise_errors: bool = False) -> None:
        """Drop the collection and its metadata row (best effort unless ``raise_errors``)."""
        try:
            with self._calls("drop"):
                if self._client.has_collection(self._name):
                    self._client.drop_collection(self._name)
                if self._client.has_collection(META_COLLECTION):
                    self._client.delete(META_COLLECTION, ids=[self._name])
        except UserError:
            if raise_errors:
                raise


def _query_ids(client, collection: str, ids: list, fields: list[str], pk: str = "id") -> list[dict]:
    """``client.query(ids=...)``, also where nothing matches: pymilvus 2.5 then fails with "Unsupported data
    type: 0" instead of answering ``[]``, so such a failure is checked with a count."""
    try:
        return client.query(collection, ids=ids, output_fields=fields)
    except Exception as e:  # noqa: BLE001
        if "Unsupported data type" not in str(getattr(e, "message", "") or e):
            raise
        count = client.query(collection, filter=f"{pk} in {json.dumps(list(ids))}", output_fields=["count(*)"])
        if int(count[0]["count(*)"]):
            raise
        return []


def _unknown_columns(row: dict, columns: tuple[str, ...]) -> bool:
    """Whether a row (all catalog fields read) holds a value in a catalog column not among ``columns``."""
    return (("labels" not in columns and (row["label"] != -1 or bool(row["labels"]["ids"])))
            or ("paths" not in columns and row["path"] != "") or ("keys" not in columns and row["key"] != ""))


def _meta_text(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)


def _code_bytes(code) -> bytes:
    """A BINARY_VECTOR as Milvus returns it (bytes, or a list holding them) -> its bytes."""
    return code[0] if isinstance(code, list) else code


def _check_fits(cat: Catalog | None) -> None:
    """``InputError`` for catalog values Milvus cannot hold (checked before anything is inserted)."""
    if cat is None or len(cat) == 0:
        return
    for what, col in (("path", cat.paths), ("key", cat.keys)):
        if col is not None and int(np.diff(col.offsets).max()) > _VARCHAR_MAX:
            raise InputError(f"a {what} is longer than Milvus's {_VARCHAR_MAX} bytes (UTF-8)")
    for name in cat.class_names:
        if len(name.encode("utf-8")) > _VARCHAR_MAX:
            raise InputError(f"a class name is longer than Milvus's {_VARCHAR_MAX} bytes (UTF-8)")


def _check_meta_size(meta: dict) -> None:
    try:
        size = len(json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as e:
        raise InputError(f"the index metadata is not JSON: {one_line(e)}") from None
    if size > _META_MAX:
        raise InputError(f"the index metadata (class names, model record, ...) takes {size:,} bytes as JSON; "
                         f"Milvus keeps at most {_META_MAX:,}")


def _joined(results: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict] | None]:
    """Per-query ``(D, I, rows)`` -> ``lims int64[nq + 1]``, ``D int32[m]``, ``I int64[m]`` laid out as a range
    search's, and the rows joined alike (None where the results have none)."""
    lims = np.zeros(len(results) + 1, np.int64)
    lims[1:] = np.cumsum([len(i) for _, i, _ in results])
    D = np.concatenate([np.zeros(0, np.int32), *(d for d, _, _ in results)]).astype(np.int32)
    I = np.concatenate([np.zeros(0, np.int64), *(i for _, i, _ in results)]).astype(np.int64)
    rows = None if any(r is None for _, _, r in results) else [row for _, _, r in results for row in r]
    return lims, D, I, rows

"""Per-item records that travel with a :class:`dsh.index.flat.HammingIndex`: labels, paths and user keys (no torch).

A :class:`Catalog` holds ``n`` records aligned row by row with an index's rows (ascending id order), as columns,
each optional: ``labels`` (class ids, ``-1`` = unlabelled, or multi-hot rows), ``paths``, ``keys`` (strings) and
``class_names``. Strings are kept as a :class:`StringColumn` (offsets + a UTF-8 blob), so reading item ``i`` decodes
that one slice and a memory-mapped column costs nothing until it is read.

>>> cat = Catalog.from_columns(3, labels=[0, 2, -1], paths=["a.jpg", "b.jpg", "c.jpg"],
...                            class_names=["cat", "dog", "emu"])
>>> cat.record(1)
{'label': 2, 'class': 'emu', 'path': 'b.jpg'}

A catalog is a value: ``take`` and ``concat`` return new catalogs and its arrays are read-only. ``save`` / ``load``
write and read the checksummed catalog file (``mmap=True``: read-only memory-mapped columns); its byte layout is in
docs/FORMATS.md ("Catalog").

Beside an index, each save writes its catalog under a name of its own, ``INDEX.<uid>.catalog``
(:func:`catalog_file`), before the index that names it; the index's rename is the one step that puts the new pair
in place, and older catalogs of that index are removed after it (:func:`written_beside`). A crash at any moment
thus leaves the old pair or the new one, both loadable, and at worst a file the next save removes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import operator
import os
import re
import secrets
import struct
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import DataError, InputError, one_line
from ..utils.fileio import (
    END_MARKER,
    TRAILER,
    atomic_write,
    check_trailer,
    folder_lock,
    fsync_folder,
    read_header,
    remove_stale_temporaries,
)

__all__ = ["Catalog", "StringColumn", "catalog_file", "catalog_path", "fill_record", "new_uid", "written_beside"]

_MAGIC = b"DSHCATLG"
_END = END_MARKER
_VERSION = 1
_HEADER = struct.Struct("<8sIIQIIQ" + "Q" * 11)  # 128 bytes, fields as in the module docstring
_TRAILER = TRAILER
_ALIGN = 64
_KINDS = {None: 0, "class": 1, "multi-hot": 2}
_FLAG_PATHS, _FLAG_KEYS = 1, 2
_PIECE = 1 << 22  # bytes handled per step when copying or checksumming big columns: bounded temporaries


def _align(x: int) -> int:
    return -(-x // _ALIGN) * _ALIGN


def _frozen(a: np.ndarray) -> np.ndarray:
    if a.flags.writeable:
        a.flags.writeable = False
    return a


def catalog_path(index_path: str | os.PathLike) -> Path:
    """The catalog name of index files written by earlier versions of dsh: the index's name with ``.catalog``
    appended (such files still load: an index file names its catalog). New saves use :func:`catalog_file`."""
    p = Path(index_path)
    return p.with_name(p.name + ".catalog")


_UID = re.compile(r"[0-9a-f]{16}")


def new_uid() -> str:
    """A fresh catalog uid, 16 hex digits: one per save, so an older catalog never passes for a newer one."""
    return secrets.token_hex(8)


def catalog_file(index_path: str | os.PathLike, uid: str) -> Path:
    """Where the save of ``index_path`` whose catalog has ``uid`` writes it: ``INDEX.<uid>.catalog`` beside it."""
    p = Path(index_path)
    return p.with_name(f"{p.name}.{uid}.catalog")


@contextlib.contextmanager
def written_beside(catalog: "Catalog | None", index_path: str | os.PathLike, ids: np.ndarray, uid: str | None
                   ) -> Iterator[None]:
    """Around the write of the index file ``index_path``: writes ``catalog`` (with the index's ``ids`` and ``uid``)
    to :func:`catalog_file` first; once the index is in place, removes the catalogs of earlier saves of that index
    and the temporaries of killed saves. If the index's write fails, the new catalog is removed and the old pair
    stays as it was. The folder is locked meanwhile, so two saves there do not interleave."""
    index_path = Path(index_path)
    folder = index_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{index_path}: cannot write here ({e.strerror or one_line(e)})") from None
    cpath = None if catalog is None else catalog_file(index_path, uid)
    with folder_lock(folder):
        if catalog is not None:
            catalog.save(cpath, ids, uid)
            fsync_folder(folder)  # the catalog's rename reaches the disk before the index's that relies on it
        try:
            yield
        except BaseException:
            if cpath is not None:
                with contextlib.suppress(OSError):
                    cpath.unlink()
            raise
        fsync_folder(folder)
        remove_stale_catalogs(index_path, keep=cpath)


def remove_stale_catalogs(index_path: str | os.PathLike, keep: Path | None) -> list[Path]:
    """Remove the catalogs of ``index_path`` other than ``keep`` (those of earlier saves, and the one an earlier
    dsh wrote as :func:`catalog_path`), and the temporaries killed saves left; returns what was removed. Only a
    file that is a catalog is removed, and under a per-save name only one whose uid is the one its name holds, so
    another file that happens to match the pattern is left alone."""
    index_path = Path(index_path)
    folder, name = index_path.parent, index_path.name
    removed = []
    candidates = [catalog_path(index_path)]
    temp_targets = {catalog_path(index_path)}
    with contextlib.suppress(OSError):
        for p in folder.glob(f"{glob.escape(name)}.*.catalog"):
            tag = p.name[len(name) + 1 : -len(".catalog")]
            if _UID.fullmatch(tag):
                candidates.append(p)
        for tmp in folder.glob(f".{glob.escape(name)}.*.catalog.dsh-*.tmp"):
            target = tmp.name[1:].split(".dsh-", 1)[0]
            if _UID.fullmatch(target[len(name) + 1 : -len(".catalog")]):
                temp_targets.add(folder / target)
    for p in candidates:
        if keep is not None and p.name == keep.name:
            continue
        uid = Catalog.read_uid(p)
        legacy = p.name == catalog_path(index_path).name
        if uid is not None and (legacy or p.name == catalog_file(index_path, uid).name):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    for target in sorted(temp_targets):
        removed += remove_stale_temporaries(target)
    return removed


# -- strings -------------------------------------------------------------------------------------------------------


class StringColumn:
    """``n`` strings as ``offsets int64[n + 1]`` (``offsets[0] = 0``, non-decreasing) and ``blob uint8[offsets[-1]]``
    holding their UTF-8 bytes back to back: string ``i`` is ``blob[offsets[i]:offsets[i + 1]]``."""

    __slots__ = ("offsets", "blob", "source")

    def __init__(self, offsets: np.ndarray, blob: np.ndarray, source: str | None = None):
        # trusted: callers have checked the invariants (from_strings, load, take, concat)
        self.offsets = _frozen(offsets)
        self.blob = _frozen(blob)
        self.source = source  # the file it came from, for the message should a slice not decode

    @classmethod
    def from_strings(cls, strings: Iterable[str], name: str = "strings") -> "StringColumn":
        """From an iterable of ``str`` (or ``os.PathLike``, or a numpy ``str`` array); ``InputError`` otherwise."""
        if isinstance(strings, (str, bytes)):
            raise InputError(f"{name} must be a sequence of strings, got a single {type(strings).__name__}")
        if isinstance(strings, np.ndarray):
            if strings.ndim != 1 or (strings.size and strings.dtype.kind != "U"):
                raise InputError(f"{name} must be a 1-D array of str, got dtype {strings.dtype} shape {strings.shape}")
            strings = strings.tolist()
        encoded = []
        for i, s in enumerate(strings):
            if not isinstance(s, str):
                s = os.fspath(s) if isinstance(s, os.PathLike) else s
                if not isinstance(s, str):
                    raise InputError(f"{name}[{i}] is a {type(s).__name__}, not a string")
            try:
                encoded.append(s.encode("utf-8"))
            except UnicodeEncodeError:
                raise InputError(f"{name}[{i}] cannot be written as UTF-8 (it holds a lone surrogate)") from None
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, count=len(encoded)), out=offsets[1:])
        return cls(offsets, np.frombuffer(b"".join(encoded), np.uint8))

    @classmethod
    def empty(cls, n: int) -> "StringColumn":
        """``n`` empty strings (the fill value)."""
        return cls(np.zeros(int(n) + 1, np.int64), np.zeros(0, np.uint8))

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i) -> str:
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"string {i} out of range for {n} strings")
        i %= n
        raw = self.blob[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # only reachable for a file loaded with verify=False
            raise DataError(f"{self.source or 'catalog'}: string {i} is not valid UTF-8 (corrupt file)") from None

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]

    def __repr__(self) -> str:
        return f"StringColumn(n={len(self)}, nbytes={int(self.offsets[-1])})"

    def take(self, positions: np.ndarray) -> "StringColumn":
        """The strings at ``positions`` (``int[m]``, each in ``[0, n)``, repeats allowed), vectorised."""
        pos = np.asarray(positions, np.int64)
        starts = np.asarray(self.offsets[pos])
        lens = np.asarray(self.offsets[pos + 1]) - starts
        offsets = np.zeros(pos.shape[0] + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        blob = np.empty(int(offsets[-1]), np.uint8)
        src = self.blob
        a, m = 0, pos.shape[0]
        while a < m:
            # items [a, b) hold about _PIECE bytes, so the gather index below stays small
            b = max(a + 1, int(np.searchsorted(offsets, offsets[a] + _PIECE, side="right")) - 1)
            b = min(b, m)
            lo, hi = int(offsets[a]), int(offsets[b])
            if hi > lo:
                shift = np.repeat(starts[a:b] - (offsets[a:b] - lo), lens[a:b])
                blob[lo:hi] = src[shift + np.arange(hi - lo)]
            a = b
        return StringColumn(offsets, blob)

    def concat(self, other: "StringColumn") -> "StringColumn":
        offsets = np.concatenate([np.asarray(self.offsets), np.asarray(other.offsets[1:]) + self.offsets[-1]])
        return StringColumn(offsets, np.concatenate([np.asarray(self.blob), np.asarray(other.blob)]))


def _check_string_arrays(offsets: np.ndarray, blob_len: int) -> bool:
    return bool(offsets[0] == 0 and offsets[-1] == blob_len and np.all(offsets[1:] >= offsets[:-1]))


# -- the catalog ---------------------------------------------------------------------------------------------------


class Catalog:
    """``n`` per-item records, as optional columns (see the module docstring). Build one with
    :meth:`from_columns`; ``record(i)`` is row ``i``'s record."""

    __slots__ = ("_n", "labels", "paths", "keys", "class_names")

    def __init__(self, n: int, labels: np.ndarray | None, paths: StringColumn | None, keys: StringColumn | None,
                 class_names: list[str]):
        # trusted: use from_columns for anything from outside
        self._n = int(n)
        self.labels = None if labels is None else _frozen(labels)  # int64[n] | uint8[n, C]
        self.paths = paths
        self.keys = keys
        self.class_names = class_names

    # -- building ------------------------------------------------------------------------------------------------

    @classmethod
    def from_columns(cls, n: int, labels=None, paths=None, keys=None, class_names=None) -> "Catalog":
        """Validate and copy columns of ``n`` items into a catalog.

        ``labels``: integer ``[n]`` class ids ``>= -1`` (stored ``int64``), or ``[n, C]`` 0/1 multi-hot rows
        (integer or bool, stored ``uint8``, ``C >= 1``). ``paths``, ``keys``: ``n`` strings each.
        ``class_names``: strings; with multi-hot labels there must be exactly ``C`` of them. A column left as
        ``None`` is absent. Wrong lengths, dtypes or values raise a one-line :class:`InputError`.
        """
        try:
            count = -1 if isinstance(n, bool) else operator.index(n)
        except TypeError:
            count = -1
        if count < 0:
            raise InputError(f"n must be an integer >= 0, got {n!r}")
        n = count
        lab = None if labels is None else _check_labels(labels, n)
        cols = []
        for name, col in (("paths", paths), ("keys", keys)):
            if col is not None and not isinstance(col, StringColumn):
                col = StringColumn.from_strings(col, name)
            if col is not None and len(col) != n:
                raise InputError(f"{name} has {len(col)} entries, but there are {n} items")
            cols.append(col)
        names = _check_class_names(class_names, lab)
        return cls(n, lab, cols[0], cols[1], names)

    # -- reading -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def label_kind(self) -> str | None:
        """``None`` (no labels), ``"class"`` (``int64[n]`` class ids) or ``"multi-hot"`` (``uint8[n, C]``)."""
        if self.labels is None:
            return None
        return "class" if self.labels.ndim == 1 else "multi-hot"

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns present, among ``"labels"``, ``"paths"``, ``"keys"``."""
        return tuple(c for c in ("labels", "paths", "keys") if getattr(self, c) is not None)

    def record(self, pos: int) -> dict:
        """Row ``pos``'s record: ``label`` (an int, or a list of ids for multi-hot), ``class`` (the class name of
        a class id within ``class_names``; for multi-hot the list of names, when there are names), ``path``,
        ``key``, each only when its column is present. ``IndexError`` outside ``[-n, n)``."""
        i = operator.index(pos)
        if not -self._n <= i < self._n:
            raise IndexError(f"record {i} out of range for a catalog of {self._n}")
        i %= self._n
        rec: dict = {}
        if self.labels is not None:
            names = self.class_names
            if self.labels.ndim == 1:
                lab = int(self.labels[i])
                rec["label"] = lab
                if 0 <= lab < len(names):
                    rec["class"] = names[lab]
            else:
                ids = np.flatnonzero(np.asarray(self.labels[i])).tolist()
                rec["label"] = ids
                if names:
                    rec["class"] = [names[j] for j in ids]
        if self.paths is not None:
            rec["path"] = self.paths[i]
        if self.keys is not None:
            rec["key"] = self.keys[i]
        return rec

    def __repr__(self) -> str:
        return (f"Catalog(n={self._n}, columns={list(self.columns)}, label_kind={self.label_kind!r}, "
                f"classes={len(self.class_names)})")

    # -- new catalogs from old -----------------------------------------------------------------------------------

    def take(self, positions) -> "Catalog":
        """The rows at ``positions`` (``int[m]``, in ``[-n, n)``, repeats allowed) as a new in-memory catalog."""
        pos = np.asarray(positions)
        if pos.size == 0:
            pos = np.zeros(0, np.int64)
        if pos.ndim != 1 or pos.dtype.kind not in "iu":
            raise InputError(f"positions must be a 1-D integer array, got dtype {pos.dtype} shape {pos.shape}")
        pos = pos.astype(np.int64)
        if pos.size and (pos.min() < -self._n or pos.max() >= self._n):
            raise InputError(f"positions out of range for a catalog of {self._n}")
        pos = np.where(pos < 0, pos + self._n, pos)
        labels = None if self.labels is None else np.asarray(self.labels[pos])
        paths = None if self.paths is None else self.paths.take(pos)
        keys = None if self.keys is None else self.keys.take(pos)
        return Catalog(pos.shape[0], labels, paths, keys, list(self.class_names))

    def concat(self, other: "Catalog") -> "Catalog":
        """``self``'s rows then ``other``'s. A column present on one side only gets the fill value on the other
        (label ``-1``, an all-zero multi-hot row, ``""``). ``InputError`` for labels of another kind or width, or
        class names that differ."""
        if not isinstance(other, Catalog):
            raise InputError(f"can only concatenate a Catalog, got {type(other).__name__}")
        a, b = self.labels, other.labels
        if a is not None and b is not None:
            if a.ndim != b.ndim:
                raise InputError("cannot join class-id labels with multi-hot labels")
            if a.ndim == 2 and a.shape[1] != b.shape[1]:
                raise InputError(f"multi-hot labels with {a.shape[1]} and {b.shape[1]} classes cannot be joined")
        if self.class_names and other.class_names and self.class_names != other.class_names:
            raise InputError("the class names differ from the catalog's")
        like = a if a is not None else b
        labels = None
        if like is not None:
            labels = np.concatenate([_labels_or_fill(a, self._n, like), _labels_or_fill(b, other._n, like)])
        strings = []
        for name in ("paths", "keys"):
            x, y = getattr(self, name), getattr(other, name)
            if x is None and y is None:
                strings.append(None)
            else:
                x = StringColumn.empty(self._n) if x is None else x
                strings.append(x.concat(StringColumn.empty(other._n) if y is None else y))
        names = list(self.class_names or other.class_names)
        names = _check_class_names(names, labels)
        return Catalog(self._n + other._n, labels, strings[0], strings[1], names)

    # -- files ---------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, ids: np.ndarray, uid: str) -> None:
        """Write the catalog with the index ``ids`` it belongs to (``int64[n]``, strictly ascending, >= 0) and
        ``uid`` to ``path`` (format in the module docstring), atomically."""
        ids = np.asarray(ids)
        if ids.shape != (self._n,) or (self._n and ids.dtype.kind not in "iu"):
            raise InputError(f"ids must be {self._n} integers, got dtype {ids.dtype} shape {ids.shape}")
        ids = ids.astype("<i8", copy=False)
        if self._n and (ids[0] < 0 or np.any(ids[1:] <= ids[:-1])):
            raise InputError("ids must be strictly ascending and >= 0")
        if not isinstance(uid, str):
            raise InputError(f"uid must be a str, got {type(uid).__name__}")
        meta = json.dumps({"uid": uid, "class_names": list(self.class_names)}, ensure_ascii=False,
                          sort_keys=True).encode("utf-8")
        n, kind = self._n, _KINDS[self.label_kind]
        C = int(self.labels.shape[1]) if kind == 2 else 0
        flags = (_FLAG_PATHS if self.paths is not None else 0) | (_FLAG_KEYS if self.keys is not None else 0)
        plen = int(self.paths.offsets[-1]) if self.paths is not None else 0
        klen = int(self.keys.offsets[-1]) if self.keys is not None else 0
        lay = _layout(n, kind, C, flags, plen, klen)
        header = _HEADER.pack(_MAGIC, _VERSION, _HEADER.size, n, kind, C, flags, lay["ids"], lay["labels"],
                              lay["poff"], lay["pblob"], plen, lay["koff"], lay["kblob"], klen, lay["json"],
                              len(meta), 0)
        sections = [("ids", ids)]
        if kind:
            sections.append(("labels", self.labels.astype("<i8" if kind == 1 else np.uint8, copy=False)))
        for tag, col in (("p", self.paths), ("k", self.keys)):
            if col is not None:
                sections += [(tag + "off", col.offsets.astype("<i8", copy=False)), (tag + "blob", col.blob)]
        crc = 0
        with atomic_write(path) as f:
            pos = 0

            def put(buf) -> None:
                nonlocal crc, pos
                f.write(buf)
                crc = zlib.crc32(buf, crc)
                pos += len(buf)

            put(header)
            for name, arr in sections:
                put(bytes(lay[name] - pos))
                flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
                for a in range(0, flat.size, _PIECE):  # in pieces: a memory-mapped column is not read at once
                    put(memoryview(np.ascontiguousarray(flat[a : a + _PIECE])))
            put(bytes(lay["json"] - pos))
            put(meta)
            f.write(_TRAILER.pack(crc, _END))

    @staticmethod
    def read_uid(path: str | os.PathLike) -> str | None:
        """The uid of the catalog file ``path`` (its header and JSON only, nothing checksummed), or ``None`` where
        ``path`` is not a readable catalog file."""
        try:
            with open(path, "rb") as f:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size or head[: len(_MAGIC)] != _MAGIC:
                    return None
                fields = _HEADER.unpack(head)
                json_off, mlen = fields[15], fields[16]
                if fields[1] != _VERSION or json_off + mlen + _TRAILER.size != os.fstat(f.fileno()).st_size:
                    return None
                f.seek(json_off)
                meta = json.loads(f.read(mlen).decode("utf-8"))
        except (OSError, ValueError):
            return None
        uid = meta.get("uid") if isinstance(meta, dict) else None
        return uid if isinstance(uid, str) else None

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False, verify: bool = True
             ) -> tuple["Catalog", np.ndarray, str]:
        """Read a catalog file: ``(catalog, ids int64[n], uid)``.

        ``mmap=True`` maps the columns and ids read-only (``np.memmap``) instead of reading them; nothing per item
        is decoded until asked. ``verify=False`` skips the checksum (which reads the whole file), keeping the
        structural checks. Problems raise a one-line :class:`DataError` naming the file.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such catalog file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            (_, _, hsize, n, kind, C, flags, ids_off, lab_off, poff, pblob, plen, koff, kblob, klen,
             json_off, mlen, reserved) = read_header(f, path, size, _HEADER, _MAGIC, _VERSION, "catalog")
            if hsize != _HEADER.size or kind not in (0, 1, 2) or (kind == 2) != (C > 0) or reserved \
                    or flags & ~(_FLAG_PATHS | _FLAG_KEYS) \
                    or (not flags & _FLAG_PATHS and plen) or (not flags & _FLAG_KEYS and klen):
                raise DataError(f"{path}: corrupt catalog header")
            lay = _layout(n, kind, C, flags, plen, klen)
            if (ids_off, lab_off, poff, pblob, koff, kblob, json_off) != tuple(
                    lay[k] for k in ("ids", "labels", "poff", "pblob", "koff", "kblob", "json")):
                raise DataError(f"{path}: corrupt catalog header (sections are not where its counts put them)")
            check_trailer(f, path, size, json_off + mlen + _TRAILER.size, "catalog", verify)
            f.seek(json_off)
            meta_bytes = f.read(mlen)

        def arr(dtype, offset, shape):
            count = math.prod(shape)
            if mmap and count:
                return np.memmap(path, dtype, "r", offset=offset, shape=shape)
            return np.fromfile(path, dtype, count=count, offset=offset).reshape(shape)

        try:
            meta = json.loads(meta_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable catalog JSON ({e.__class__.__name__})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("uid"), str) \
                or not isinstance(meta.get("class_names"), list) \
                or not all(isinstance(s, str) for s in meta["class_names"]):
            raise DataError(f"{path}: corrupt catalog JSON (wants a uid and a list of class names)")
        ids = arr("<i8", ids_off, (n,))
        if n and (ids[0] < 0 or np.any(ids[1:] <= ids[:-1])):
            raise DataError(f"{path}: the catalog's ids are not strictly ascending and >= 0")
        labels = None
        if kind == 1:
            labels = arr("<i8", lab_off, (n,))
            if n and labels.min() < -1:
                raise DataError(f"{path}: the catalog holds class ids below -1")
        elif kind == 2:
            labels = arr(np.uint8, lab_off, (n, C))
            if labels.size and labels.max() > 1:
                raise DataError(f"{path}: the catalog's multi-hot labels hold values other than 0 and 1")
            if meta["class_names"] and len(meta["class_names"]) != C:
                raise DataError(f"{path}: {len(meta['class_names'])} class names for {C} multi-hot columns")
        cols = []
        for flag, o_off, b_off, blen, what in ((_FLAG_PATHS, poff, pblob, plen, "paths"),
                                               (_FLAG_KEYS, koff, kblob, klen, "keys")):
            if not flags & flag:
                cols.append(None)
                continue
            offsets = arr("<i8", o_off, (n + 1,))
            if not _check_string_arrays(offsets, blen):
                raise DataError(f"{path}: corrupt catalog ({what} offsets do not fit their bytes)")
            cols.append(StringColumn(offsets, arr(np.uint8, b_off, (blen,)), source=str(path)))
        catalog = cls(n, labels, cols[0], cols[1], list(meta["class_names"]))
        return catalog, _frozen(ids), meta["uid"]


# -- helpers -------------------------------------------------------------------------------------------------------


def _layout(n: int, kind: int, C: int, flags: int, plen: int, klen: int) -> dict[str, int]:
    """Section offsets (0 for an absent section) from the header's counts: the one layout a file may have."""
    lay = dict.fromkeys(("ids", "labels", "poff", "pblob", "koff", "kblob"), 0)
    cur = _align(_HEADER.size)

    def place(name: str, nbytes: int) -> None:
        nonlocal cur
        lay[name] = cur
        cur = _align(cur + nbytes)

    place("ids", 8 * n)
    if kind:
        place("labels", 8 * n if kind == 1 else n * C)
    if flags & _FLAG_PATHS:
        place("poff", 8 * (n + 1))
        place("pblob", plen)
    if flags & _FLAG_KEYS:
        place("koff", 8 * (n + 1))
        place("kblob", klen)
    lay["json"] = cur
    return lay


def _check_labels(labels, n: int) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim == 1:
        if a.size and a.dtype.kind not in "iu":
            raise InputError(f"class-id labels must be integers, got dtype {a.dtype}")
        if a.shape[0] != n:
            raise InputError(f"labels has {a.shape[0]} rows, but there are {n} items")
        if a.size and (a.min() < -1 or (a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max)):
            raise InputError("class-id labels must be >= -1 (-1 = unlabelled) and fit in int64")
        return a.astype(np.int64)
    if a.ndim == 2:
        if a.dtype.kind not in "iub":
            raise InputError(f"multi-hot labels must be integers or booleans, got dtype {a.dtype}")
        if a.shape[0] != n:
            raise InputError(f"labels has {a.shape[0]} rows, but there are {n} items")
        if a.shape[1] < 1:
            raise InputError("multi-hot labels need at least one class column")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise InputError("multi-hot labels must be 0 or 1")
        return a.astype(np.uint8)
    raise InputError(f"labels must be [n] class ids or [n, C] multi-hot rows, got shape {a.shape}")


def _check_class_names(class_names, labels: np.ndarray | None) -> list[str]:
    if class_names is None:
        return []
    if isinstance(class_names, (str, bytes)):
        raise InputError("class_names must be a sequence of strings, got a single string")
    names = list(np.asarray(class_names).tolist()) if isinstance(class_names, np.ndarray) else list(class_names)
    if not all(isinstance(s, str) for s in names):
        raise InputError("class_names must all be strings")
    names = [str(s) for s in names]
    if names and labels is not None and labels.ndim == 2 and len(names) != labels.shape[1]:
        raise InputError(f"{len(names)} class names for multi-hot labels with {labels.shape[1]} classes")
    return names


def fill_record(catalogs) -> dict:
    """The fields a row of one of ``catalogs`` (``Catalog`` or None each) gets, in their :meth:`Catalog.concat`,
    for the columns its own catalog lacks: the fill values as :meth:`Catalog.record` shows them (``label`` -1 or
    ``[]``, ``class`` ``[]`` for multi-hot with names, ``path`` and ``key`` ``""``)."""
    joined = Catalog.from_columns(1)
    for cat in catalogs:
        if cat is not None:
            joined = joined.concat(cat.take(np.zeros(0, np.int64)))
    return joined.record(0)


def _labels_or_fill(labels: np.ndarray | None, n: int, like: np.ndarray) -> np.ndarray:
    if labels is not None:
        return np.asarray(labels)
    if like.ndim == 1:
        return np.full(n, -1, np.int64)
    return np.zeros((n, like.shape[1]), np.uint8)

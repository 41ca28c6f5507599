"""A dsh index file that takes additions and removals while it is searched, durably and cheaply (no torch).

>>> with LiveIndex.open("db.dshidx") as live:       # claims the file: one writer at a time
...     ids = live.add(codes, labels=[3])            # logged and fsynced before it returns; int64[n] new ids
...     live.remove([17])
...     D, I = live.search(q, k=10)                  # sees both

Three files sit together: the index file ``F`` (:class:`~dsh.index.flat.HammingIndex`, untouched by an add),
its change log ``F.log`` and the writer's lock ``F.lock``.

- **The log.** Each change is one record (``add`` with its codes and catalog fields, or ``remove``), numbered in
  order, appended to ``F.log`` and fsynced before :meth:`LiveIndex.add` / :meth:`LiveIndex.remove` return: a change
  that returned survives ``kill -9`` or a power cut, and one item added to a 10M-item index writes a few hundred
  bytes, not the index. A record is ``b"RECD"``, its payload's length and CRC-32, then the payload (UTF-8 JSON with
  the record's number ``seq``; codes as hex). The log's header names the index file it extends (a random log id
  that the file's metadata repeats once a fold has written it, or the file's size and trailing checksum before
  then) and the number of the last record folded when it was started. On open the records the file does not hold
  yet are replayed; a record cut short at the end of the log (the process died while writing it, before
  acknowledging it) is dropped, and a damaged record with more log after it is refused with a one-line
  :class:`~dsh.errors.DataError`.
- **The fold.** From time to time (when the log, the additions held in memory or the removals pass their limits),
  on :meth:`LiveIndex.fold` and on a clean :meth:`LiveIndex.close`, the changes are folded into a new ``F`` written
  atomically (:meth:`HammingIndex.save`), whose metadata records the number of the last record it holds
  (``log_seq``); then the log is rewritten (atomically) with only the records after it. A fold the policy asks for
  runs in a thread of its own: searches and further changes go on while the file is written (seconds at 10M
  items), and what changed meanwhile is replayed onto the new file's items when it is in place. A crash at any
  point leaves a file and a log that together hold every acknowledged change once: records the file already holds
  are skipped by number.
- **Snapshots.** What a search sees is an immutable :class:`LiveView` (the index file's items, the ids removed
  from them, the items added since): a change builds a new view and swaps it in with one assignment, so a search
  that runs during an update sees it whole or not at all. :meth:`LiveIndex.snapshot` hands one out, so a search
  and the lookup of its results see the same items.
- **One writer.** ``F.lock`` is held with ``fcntl.flock`` while a writable :class:`LiveIndex` is open (the kernel
  lets it go when the process ends, however it ends); a second writer gets a one-line ``DataError`` naming the
  holder's pid. Readers (``writable=False``) take no lock: they read the file and replay the log as it is, and
  :meth:`LiveIndex.refresh` (which :meth:`LiveIndex.snapshot` calls at most every 0.1 s) takes in what the writer
  changed since: the records appended, or the new file and log after a fold.

New ids count on from one more than the largest id this index has ever held (kept in the index's metadata as
``next_id`` across folds), so an id is never given twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codes.bits import check_codes
from ..errors import DataError, InputError, one_line
from ..utils.fileio import TRAILER, atomic_write
from ..utils.runlock import lock_held
from .base import SearchThenLookup, check_k, check_new_ids, check_radius
from .catalog import Catalog, fill_record
from .flat import HammingIndex

logger = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

__all__ = ["LiveIndex", "LiveView", "FoldPolicy", "log_path", "lock_path", "check_unlocked", "has_changes_logged"]

_LOG_MAGIC = b"DSHILOG2"
# magic, nbits, the index file's size and trailer (CRC-32 + end marker) when the log was started, the log's id,
# the number of the last record folded into that file
_LOG_HEAD = struct.Struct("<8sIQ8s16sQ")
# an earlier log: the file's size and trailer only, records unnumbered (read, then written again in this format)
_LOG_MAGIC_V1 = b"DSHILOG1"
_LOG_HEAD_V1 = struct.Struct("<8sIQ8s")
_REC = struct.Struct("<4sII")  # b"RECD", payload bytes, CRC-32 of the payload
_REC_MAGIC = b"RECD"


def log_path(index_path: str | os.PathLike) -> Path:
    """The change log beside an index file: its name with ``.log`` appended."""
    p = Path(index_path)
    return p.with_name(p.name + ".log")


def lock_path(index_path: str | os.PathLike) -> Path:
    """The writer's lock beside an index file: its name with ``.lock`` appended."""
    p = Path(index_path)
    return p.with_name(p.name + ".lock")


def has_changes_logged(index_path: str | os.PathLike) -> bool:
    """Whether a log beside ``index_path`` holds records (changes that may not be in the file yet)."""
    try:
        with open(log_path(index_path), "rb") as f:
            head = f.read(_LOG_HEAD.size)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return size > (_LOG_HEAD_V1.size if head[:8] == _LOG_MAGIC_V1 else _LOG_HEAD.size)


@dataclass(frozen=True)
class FoldPolicy:
    """When changes are folded into the index file: the log past ``log_bytes``, more than ``added`` items held in
    memory, or more than ``removed`` ids removed from the file's items (each removed id makes a k-NN search
    over the file ask for one more neighbour)."""

    log_bytes: int = 64 << 20
    added: int = 200_000
    removed: int = 2_000
    #: fold in a thread of its own (changes and searches go on meanwhile); False folds inside the change that
    #: passed a limit, before it returns
    background: bool = True
    #: after a fold failed (a full disk), seconds before the policy tries again (the log keeps every change)
    retry_seconds: float = 30.0


# -- the writer's lock ------------------------------------------------------------------------------------------


def _busy(index_path: Path, fd: int | None) -> DataError:
    holder = ""
    with contextlib.suppress(OSError, ValueError):
        text = lock_path(index_path).read_text().strip()
        if text.isdigit():
            holder = f" (pid {int(text)})"
    return DataError(f"{index_path}: another dsh process{holder} is writing this index; stop it or open the index "
                     f"read-only")


class _WriterLock:
    """``fcntl.flock`` on ``F.lock``, held while the writer lives. The file stays when released: a lock on a file
    that is never removed cannot be taken by two processes through two inodes."""

    def __init__(self, index_path: Path):
        self.index_path = index_path
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        path = lock_path(self.index_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DataError(f"{path}: cannot create the index's lock file ({e.strerror or one_line(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(self.index_path, fd) from None
        except OSError as e:
            os.close(fd)
            raise DataError(f"{path}: cannot lock the index ({e.strerror or one_line(e)})") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def check_unlocked(index_path: str | os.PathLike) -> None:
    """The one-line busy error if a live process writes ``index_path`` (for commands that would replace the
    file under it); creates nothing."""
    if lock_held(lock_path(index_path)):
        raise _busy(Path(index_path), None)


# -- the snapshot searched --------------------------------------------------------------------------------------


def _columns(index: HammingIndex, positions: np.ndarray | None = None) -> dict:
    """The rows of ``index`` (all, or those at ``positions``) as :meth:`HammingIndex.add`'s arguments."""
    codes, ids, cat = index.codes, index.ids, index.catalog
    if positions is not None:
        codes, ids = codes[positions], ids[positions]
        cat = None if cat is None else cat.take(positions)
    cols = {"codes": np.asarray(codes), "ids": np.asarray(ids)}
    if cat is not None:
        cols.update(labels=cat.labels, paths=cat.paths, keys=cat.keys, class_names=cat.class_names)
    return cols


def _build(nbits: int, *parts: dict) -> HammingIndex:
    out = HammingIndex(nbits)
    for cols in parts:
        cols = dict(cols)
        out.add(cols.pop("codes"), cols.pop("ids"), **cols)
    return out


_EMPTY_IDS = np.zeros(0, np.int64)


class LiveView(SearchThenLookup):
    """An immutable state of a live index, as parts: the index file's items (``base``, never changed) and the
    items added since, in memory, as a few segments whose sizes fall geometrically (an add makes a new small
    segment and merges it with the ones before it as long as they are not much larger, or small, so an add costs
    O(log n) amortised, not O(items added)). Each part has the ids removed from it (``int64[m]`` ascending;
    ``dead`` is the base's). It answers every reading call of :class:`dsh.index.base.Index` exactly as one
    :class:`HammingIndex` holding the same items would (:meth:`merged` builds that index)."""

    def __init__(self, base: HammingIndex, dead: np.ndarray = _EMPTY_IDS,
                 segments: tuple[tuple[HammingIndex, np.ndarray], ...] = ()):
        self.base, self.dead, self.segments = base, dead, segments
        self._merged: HammingIndex | None = None

    @property
    def parts(self) -> tuple[tuple[HammingIndex, np.ndarray], ...]:
        """``(index, ids removed from it)`` for the base and each segment."""
        return ((self.base, self.dead), *self.segments)

    @property
    def unchanged(self) -> bool:
        """Whether this state is the file's index as it is: nothing added, nothing removed (a reader with no
        changes to take in answers from the index itself)."""
        return not self.segments and not self.dead.shape[0]

    @property
    def nbits(self) -> int:
        return self.base.nbits

    @property
    def added(self) -> int:
        """Items held in the segments (added since the file was written, not removed since)."""
        return sum(seg.ntotal - int(gone.shape[0]) for seg, gone in self.segments)

    @property
    def ntotal(self) -> int:
        return sum(part.ntotal - int(gone.shape[0]) for part, gone in self.parts)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def metadata(self) -> dict:
        return self.base.metadata

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """``bool[len(ids)]``: which of ``ids`` (``int64``) this state holds."""
        return self.where(ids) >= 0

    def where(self, ids: np.ndarray) -> np.ndarray:
        """``int64[len(ids)]``: the part (0 the base, 1.. the segments) that holds each id, -1 where none."""
        ids = np.asarray(ids, np.int64).ravel()
        out = np.full(ids.shape, -1, np.int64)
        for j, (part, gone) in enumerate(self.parts):
            out[_member(part.ids, ids) & ~_member(gone, ids)] = j
        return out

    @property
    def max_id(self) -> int:
        """The largest id held, or -1."""
        tops = []
        for part, gone in self.parts:
            alive = part.ids
            j = alive.shape[0] - 1
            while j >= 0 and _member(gone, alive[j : j + 1])[0]:  # walk down past the removed ones at the top
                j -= 1
            if j >= 0:
                tops.append(int(alive[j]))
        return max(tops, default=-1)

    def merged(self) -> HammingIndex:
        """One :class:`HammingIndex` holding exactly this state's items (built once; reads the whole base)."""
        if self._merged is None and not self.dead.shape[0] and not self.segments:
            self._merged = self.base  # nothing changed since the file: the file's index is the answer
        if self._merged is None:
            merged = _build(self.nbits, *(_alive_columns(part, gone) for part, gone in self.parts if part.ntotal))
            merged.metadata = dict(self.base.metadata)
            if merged.catalog is None and self.base.catalog is not None:
                merged.catalog = self.base.catalog.take(_EMPTY_IDS)
            self._merged = merged
        return self._merged

    @property
    def ids(self) -> np.ndarray:
        return self.merged().ids

    @property
    def codes(self) -> np.ndarray:
        return self.merged().codes

    @property
    def catalog(self) -> Catalog | None:
        if all(part.catalog is None for part, _ in self.parts):
            return None
        return self.merged().catalog

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`HammingIndex.search`: ``D int32[nq, k]``, ``I int64[nq, k]`` ordered by (distance, id)."""
        if self.unchanged:
            return self.base.search(q, k)
        q = check_codes(q, self.nbits, name="queries")
        k = check_k(k)
        nq = q.shape[0]
        parts_d, parts_i = [], []
        for part, gone in self.parts:
            if not part.ntotal:
                continue
            # removed items may take places among the nearest: ask for as many more as there are removed ids
            Dp, Ip = part.search(q, min(k + int(gone.shape[0]), part.ntotal))
            if gone.shape[0]:
                out = _member(gone, Ip.ravel()).reshape(Ip.shape)
                Dp, Ip = np.where(out, -1, Dp), np.where(out, -1, Ip)
            parts_d.append(Dp)
            parts_i.append(Ip)
        D = np.full((nq, k), -1, np.int32)
        I = np.full((nq, k), -1, np.int64)
        if not parts_d:
            return D, I
        Dm, Im = np.concatenate(parts_d, axis=1), np.concatenate(parts_i, axis=1)
        missing = Im < 0
        key_d = np.where(missing, np.iinfo(np.int64).max, Dm.astype(np.int64))
        key_i = np.where(missing, np.iinfo(np.int64).max, Im)
        order = np.lexsort((key_i, key_d), axis=-1)[:, :k]
        take = min(k, order.shape[1])
        D[:, :take] = np.take_along_axis(Dm, order, axis=1)
        I[:, :take] = np.take_along_axis(Im, order, axis=1)
        D[I < 0] = -1
        return D, I

    def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`HammingIndex.range_search`: ``lims int64[nq + 1]``, ``D int32[..]``, ``I int64[..]``."""
        if self.unchanged:
            return self.base.range_search(q, radius)
        q = check_codes(q, self.nbits, name="queries")
        radius = check_radius(radius)
        nq = q.shape[0]
        rows, ds, is_ = [], [], []
        for part, gone in self.parts:
            if not part.ntotal:
                continue
            lims, D, I = part.range_search(q, radius)
            row = np.repeat(np.arange(nq, dtype=np.int64), np.diff(lims))
            if gone.shape[0]:
                keep = ~_member(gone, I)
                row, D, I = row[keep], D[keep], I[keep]
            rows.append(row)
            ds.append(D)
            is_.append(I)
        if not rows:
            return np.zeros(nq + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        row, D, I = np.concatenate(rows), np.concatenate(ds).astype(np.int32), np.concatenate(is_)
        order = np.lexsort((I, D, row))
        lims = np.zeros(nq + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=nq), out=lims[1:])
        return lims, D[order], I[order]

    def lookup(self, ids) -> list[dict]:
        """Each id's record; ``KeyError`` for an id not held."""
        if self.unchanged:
            return self.base.lookup(ids)
        ids = np.asarray(ids, np.int64).ravel()
        holder = self.where(ids)
        if (holder < 0).any():
            raise KeyError(f"ids not in the index: {ids[holder < 0][:5].tolist()}")
        out: list[dict] = [{}] * ids.shape[0]
        for j, (part, _) in enumerate(self.parts):
            at = np.flatnonzero(holder == j)
            if at.shape[0]:
                for i, rec in zip(at, part.lookup(ids[at])):
                    out[i] = rec
        # a column that one part has and another lacks: the fill value the merged catalog would give
        fill = fill_record(part.catalog for part, _ in self.parts)
        for rec in out:
            labelled = "label" in rec
            for name, value in fill.items():
                if name not in rec and (name != "class" or not labelled):
                    rec[name] = list(value) if isinstance(value, list) else value
        return out

    def close(self) -> None:
        """Nothing to let go of (the live index owns the files)."""

    # -- the next state ---------------------------------------------------------------------------------------

    def with_added(self, cols: dict) -> "LiveView":
        """This state with the items of ``cols`` (:meth:`HammingIndex.add`'s arguments) added as a new segment,
        merged with the last ones while they are not more than twice its size."""
        segments = [*self.segments, (_build(self.nbits, cols), _EMPTY_IDS)]
        return LiveView(self.base, self.dead, _settled(self.nbits, segments))

    def without(self, ids: np.ndarray) -> "LiveView":
        """This state with the items of ``ids`` (``int64``; those not held are ignored) removed. A segment that
        loses more than half its items is rebuilt without them (so removed ids never outnumber the held ones)."""
        ids = np.asarray(ids, np.int64).ravel()
        holder = self.where(ids)
        dead = np.union1d(self.dead, ids[holder == 0]) if (holder == 0).any() else self.dead
        segments = []
        for j, (seg, gone) in enumerate(self.segments, start=1):
            mine = ids[holder == j]
            if mine.shape[0]:
                gone = np.union1d(gone, mine)
                if 2 * gone.shape[0] > seg.ntotal:
                    seg, gone = _build(self.nbits, _alive_columns(seg, gone)), _EMPTY_IDS
            if seg.ntotal:
                segments.append((seg, gone))
        return LiveView(self.base, dead, _settled(self.nbits, segments))


# segments below this many items are merged whatever their sizes: rebuilding one costs well under a millisecond,
# and every segment costs each search a call of its own
_SMALL_SEGMENT = 4096


def _settled(nbits: int, segments: list) -> tuple:
    """``segments`` (oldest first) with each one more than twice the size of the next and above
    :data:`_SMALL_SEGMENT` items (but the newest): a segment not larger than that is merged with the one after it
    (their removed items left out), from the newest back."""
    j = len(segments) - 2
    while j >= 0:
        if j + 1 < len(segments) and segments[j][0].ntotal <= max(2 * segments[j + 1][0].ntotal, _SMALL_SEGMENT):
            (older, gone_a), (newer, gone_b) = segments[j], segments[j + 1]
            segments[j : j + 2] = [(_build(nbits, _alive_columns(older, gone_a), _alive_columns(newer, gone_b)),
                                    _EMPTY_IDS)]
            j = min(j, len(segments) - 2)  # the merged one may now be too close to the next (or the one before)
            continue
        j -= 1
    return tuple(segments)


def _alive_columns(part: HammingIndex, gone: np.ndarray) -> dict:
    """The columns of ``part``'s items whose ids are not in ``gone``."""
    if not gone.shape[0]:
        return _columns(part)
    return _columns(part, np.flatnonzero(~_member(gone, part.ids)))


def _member(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``bool`` of ``ids``' shape: which are in ``sorted_ids`` (ascending); a binary search per id, so a few ids
    against a 10M-item index cost microseconds (``np.isin`` would sort both)."""
    ids = np.asarray(ids, np.int64)
    if sorted_ids.shape[0] == 0 or ids.size == 0:
        return np.zeros(ids.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
    return np.asarray(sorted_ids[pos] == ids)


# -- log records ------------------------------------------------------------------------------------------------


def _file_identity(path: Path) -> tuple[int, bytes]:
    """The index file's size and its trailer (CRC-32 of everything before it + end marker): what a log names."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - TRAILER.size))
        return size, f.read(TRAILER.size).ljust(TRAILER.size, b"\0")


def _add_payload(seq: int, codes: np.ndarray, ids: np.ndarray, catalog: dict) -> bytes:
    rec = {"op": "add", "seq": seq, "ids": ids.tolist(), "codes": codes.tobytes().hex()}
    for name, value in catalog.items():
        if value is None:
            continue
        if name == "labels":
            value = np.asarray(value).tolist()
        elif name in ("paths", "keys"):
            value = list(value)
        rec[name] = value
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _remove_payload(seq: int, ids: np.ndarray) -> bytes:
    return json.dumps({"op": "remove", "seq": seq, "ids": ids.tolist()}, separators=(",", ":")).encode()


def _folded_seq(base: HammingIndex) -> int:
    """The number of the last log record the index file holds (0: none, a file no fold has written)."""
    seq = base.metadata.get("log_seq")
    return seq if isinstance(seq, int) and seq >= 0 else 0


@dataclass
class _Replay:
    """What a log holds for its index file: ``records`` (``(seq, record, payload bytes)``, those after the file's
    ``log_seq`` only), the length of its intact part, the number of its last record (or of the last one folded),
    its id, and whether it must be written again before appending (an earlier format, records the file already
    holds, or a torn tail)."""

    records: list
    length: int
    last_seq: int
    log_id: bytes
    rewrite: bool
    last_record: tuple | None = None


def _read_records(path: Path, base: HammingIndex, identity: tuple[int, bytes]) -> _Replay | None:
    """The log's records that ``base`` (the index file, whose size and trailer are ``identity``) does not hold,
    or ``None`` where the log extends another index file (one replaced since) or was started after a fold this
    file does not hold (a reader that read the file before that fold). A torn last record is left out; a damaged
    record before the end raises."""
    data = path.read_bytes()
    magic = data[:8]
    folded = _folded_seq(base)
    if magic == _LOG_MAGIC and len(data) >= _LOG_HEAD.size:
        _, bits, size, trailer, log_id, start_seq = _LOG_HEAD.unpack_from(data)
        pos = _LOG_HEAD.size
        ours = base.metadata.get("log_id") == log_id.hex() or (size, trailer) == identity
        if not ours or start_seq > folded:
            return None
    elif magic == _LOG_MAGIC_V1 and len(data) >= _LOG_HEAD_V1.size:
        _, bits, size, trailer = _LOG_HEAD_V1.unpack_from(data)
        pos, log_id, start_seq = _LOG_HEAD_V1.size, b"", 0
        if (size, trailer) != identity:
            return None
    else:
        raise DataError(f"{path}: not a dsh index log (no {_LOG_MAGIC.decode()} header)")
    if bits != base.nbits:
        raise DataError(f"{path}: the log holds {bits}-bit codes, its index {base.nbits}-bit")
    records, pos, seq, skipped, last = _parse_records(path, data, pos, start_seq, folded,
                                                      numbered=magic == _LOG_MAGIC)
    return _Replay(records, pos, max(seq, folded), log_id,
                   rewrite=magic == _LOG_MAGIC_V1 or skipped or pos != len(data), last_record=last)


def _parse_records(path: Path, data: bytes, pos: int, seq: int, folded: int, *, numbered: bool = True,
                   offset: int = 0) -> tuple[list, int, int, bool, tuple | None]:
    """The records in ``data`` from ``pos`` on (``data`` is the log from byte ``offset``), the first numbered
    ``seq + 1``: ``(records after folded, as (seq, record, payload), position after the last intact one, the last
    number, whether some were skipped as folded, (CRC-32, bytes) of the last intact record or None)``.
    ``numbered=False``: records of the earlier format, numbered here in order."""
    records, skipped, last = [], False, None
    while pos < len(data):
        end = pos + _REC.size
        if end > len(data):
            break  # a header cut short: the last write was torn
        tag, length, crc = _REC.unpack_from(data, pos)
        stop = end + length
        intact = tag == _REC_MAGIC and stop <= len(data) and zlib.crc32(data[end:stop]) == crc
        if not intact:
            if tag == _REC_MAGIC and stop >= len(data) or not any(data[pos:]):
                break  # the last record, cut short or not yet on disk whole: never acknowledged
            raise DataError(f"{path}: damaged record at byte {offset + pos} with {len(data) - pos} bytes of log "
                            f"after it; the log cannot be replayed (restore it, or move it away to lose its changes)")
        payload = data[end:stop]
        try:
            rec = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"{path}: unreadable record at byte {offset + pos}") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: unreadable record at byte {offset + pos}")
        if not numbered:
            rec["seq"] = seq + 1
            payload = json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if rec.get("seq") != seq + 1:
            raise DataError(f"{path}: record at byte {offset + pos} is numbered {rec.get('seq')!r} after {seq}; the "
                            f"log cannot be replayed (restore it, or move it away to lose its changes)")
        seq += 1
        if seq > folded:
            records.append((seq, rec, payload))
        else:
            skipped = True  # the fold that wrote the file ended before it rewrote the log
        last = (crc, stop - pos)
        pos = stop
    return records, pos, seq, skipped, last


# -- the live index ---------------------------------------------------------------------------------------------


class LiveIndex:
    """An index file with its change log (see the module docstring). Open with :meth:`open`; it offers the whole
    :class:`dsh.index.base.Index` interface, and :meth:`add` answers the new ids (``int64[n]``)."""

    def __init__(self, path: Path, view: LiveView, *, writable: bool, policy: FoldPolicy, next_id: int,
                 lock: _WriterLock | None, log_len: int, seq: int, log_id: bytes):
        self.path = path
        self._view = view
        self.writable = writable
        self.policy = policy
        self._next_id = next_id
        self._lock = lock
        self._log_fd: int | None = None
        self._log_len = log_len
        self._seq = seq  # the number of the last record logged (or folded)
        self._log_id = log_id
        self.bytes_written = 0  # by adds, removes and folds, since open (for measuring what a change costs)
        self.folds = 0
        self.last_fold_error: str | None = None  # why the last fold failed, until one succeeds
        self._changing = threading.RLock()  # one change at a time; searches never wait for it
        self._fold_thread: threading.Thread | None = None
        self._fold_failed_at: float | None = None
        # while a fold writes the file: the changes made since it began, (seq, record, payload), to replay onto
        # the folded items and to keep in the log
        self._tail: list | None = None
        # a reader's: the file and log it read (to notice a writer's changes), and when it last looked
        self._identity: tuple[int, bytes] | None = None
        self._log_ino: int | None = None
        self._verify = True
        self._looked_at = 0.0
        self._looking = threading.Lock()
        self._last_record: tuple | None = None  # (CRC-32, bytes) of the last record read
        self._log_seen: tuple | None = None  # the log's (size, mtime) when it was last read

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = True, policy: FoldPolicy | None = None,
             verify: bool = True) -> "LiveIndex":
        """The index file ``path`` with its log replayed. ``writable``: claim the file (one writer; a one-line
        ``DataError`` if another process holds it) and take changes; else read as it is, with no lock."""
        path = Path(path)
        lock = None
        if writable:
            lock = _WriterLock(path)
            lock.acquire()
        try:
            for attempt in range(3):
                base = HammingIndex.load(path, mmap=True, verify=verify)
                identity = _file_identity(path)
                lpath = log_path(path)
                replay = _read_records(lpath, base, identity) if lpath.is_file() else None
                # a reader may meet a fold between reading the file and the log: read both again
                if replay is not None or writable or not lpath.is_file() or attempt == 2:
                    break
            meta_next = base.metadata.get("next_id")
            next_id = max(int(base.ids[-1]) + 1 if base.ntotal else 0,
                          meta_next if isinstance(meta_next, int) else 0)
            folded = _folded_seq(base)
            known_id = base.metadata.get("log_id")
            log_id = (replay.log_id if replay is not None and replay.log_id else
                      bytes.fromhex(known_id) if isinstance(known_id, str) and len(known_id) == 32 else os.urandom(16))
            live = cls(path, LiveView(base), writable=writable,
                       policy=policy or FoldPolicy(), next_id=next_id, lock=lock,
                       log_len=replay.length if replay is not None else 0,
                       seq=replay.last_seq if replay is not None else folded, log_id=log_id)
            for _, rec, _ in replay.records if replay is not None else ():
                live._apply(rec, where=lpath)
            live._identity, live._verify, live._looked_at = identity, verify, time.monotonic()
            live._last_record = replay.last_record if replay is not None else None
            if replay is not None:
                with contextlib.suppress(OSError):
                    live._log_ino = os.stat(lpath).st_ino
            if writable:
                if replay is None or replay.rewrite:
                    live._write_log(identity, folded, [] if replay is None else replay.records)
                else:
                    live._log_fd = os.open(lpath, os.O_WRONLY)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return live

    # -- reading: the current view ------------------------------------------------------------------------------

    def snapshot(self) -> LiveView:
        """The current state, which later changes leave as it is. A reader first takes in what a writer in another
        process changed since it last looked (:meth:`refresh`, at most every :attr:`follow_seconds`)."""
        if not self.writable and time.monotonic() - self._looked_at >= self.follow_seconds:
            with contextlib.suppress(DataError, OSError):  # a file being replaced: the next look sees it whole
                self.refresh()
        return self._view

    #: how often a reader's :meth:`snapshot` looks for a writer's changes (two ``stat`` calls and an 8-byte read)
    follow_seconds = 0.1

    def refresh(self) -> bool:
        """A reader: take in what a writer (``dsh index add``, a writable ``dsh serve``) changed since this was
        opened or last refreshed: the records appended to the log, or, after a fold, the new file and log.
        Whether anything changed. A writer's own changes are always current (False)."""
        if self.writable:
            return False
        if not self._looking.acquire(blocking=False):
            return False  # another thread is looking: the view it makes is as good
        try:
            self._looked_at = time.monotonic()
            lpath = log_path(self.path)
            try:
                log = os.stat(lpath)
            except FileNotFoundError:
                log = None
            replaced = _file_identity(self.path) != self._identity
            ino = None if log is None else log.st_ino
            if replaced or ino != self._log_ino or (log is not None and log.st_size < self._log_len):
                self._read_again()
                return True
            if log is None or (log.st_size, log.st_mtime_ns) == self._log_seen:
                return False
            # from the last record read, to check that it is still there: a writer whose fsync failed cuts its
            # record back, and the next one takes its number
            at = self._log_len - self._last_record[1] if self._last_record else self._log_len
            with open(lpath, "rb") as f:
                f.seek(at)
                data = f.read()
            try:
                if self._last_record:
                    tag, length, crc = _REC.unpack_from(data, 0)
                    if (tag, crc, _REC.size + length) != (_REC_MAGIC, self._last_record[0], self._last_record[1]):
                        raise DataError("the last record read was replaced")
                start = self._log_len - at
                records, used, seq, _, last = _parse_records(lpath, data, start, self._seq,
                                                             _folded_seq(self._view.base), offset=at)
            except (DataError, struct.error):  # not what followed the records read: read everything again
                self._read_again()
                return True
            before = self._view, self._next_id
            try:
                for _, rec, _ in records:
                    self._apply(rec, where=lpath)
            except BaseException:
                self._view, self._next_id = before  # all of these records or none
                raise
            self._last_record = last or self._last_record
            self._log_len = at + used
            self._seq = seq
            self._log_seen = (log.st_size, log.st_mtime_ns)
            return bool(records)
        finally:
            self._looking.release()

    def _read_again(self) -> None:
        """A reader: the file and its log read afresh."""
        fresh = LiveIndex.open(self.path, writable=False, policy=self.policy, verify=self._verify)
        self._view, self._seq, self._next_id = fresh._view, fresh._seq, fresh._next_id
        self._log_len, self._identity, self._log_ino = fresh._log_len, fresh._identity, fresh._log_ino
        self._last_record = fresh._last_record

    @property
    def nbits(self) -> int:
        return self._view.nbits

    @property
    def ntotal(self) -> int:
        return self._view.ntotal

    def __len__(self) -> int:
        return self.ntotal

    @property
    def metadata(self) -> dict:
        return self._view.metadata

    @property
    def catalog(self) -> Catalog | None:
        return self._view.catalog

    @property
    def ids(self) -> np.ndarray:
        return self._view.ids

    @property
    def codes(self) -> np.ndarray:
        return self._view.codes

    @property
    def next_id(self) -> int:
        """The id the next add without ids starts at."""
        return self._next_id

    @property
    def pending(self) -> int:
        """Changes held in the log, not yet folded into the index file (items added + file items removed)."""
        v = self._view
        return v.added + int(v.dead.shape[0])

    def search(self, q, k):
        return self._view.search(q, k)

    def range_search(self, q, radius):
        return self._view.range_search(q, radius)

    def lookup(self, ids):
        return self._view.lookup(ids)

    def search_records(self, q, k):
        return self._view.search_records(q, k)  # one view for the search and its lookup

    def range_search_records(self, q, radius):
        return self._view.range_search_records(q, radius)

    def __repr__(self) -> str:
        return f"LiveIndex({str(self.path)!r}, ntotal={self.ntotal}, pending={self.pending}, writable={self.writable})"

    # -- changes ------------------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if not self.writable:
            raise InputError(f"{self.path} is open read-only: open it writable to add or remove items")
        if self._lock is None:
            raise InputError(f"{self.path} is closed")

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None, *, labels=None, paths=None, keys=None,
            class_names=None) -> np.ndarray:
        """Add ``codes`` (``uint8[n, nbytes]``) with their catalog fields (as :meth:`HammingIndex.add`), durably;
        returns their ids (``int64[n]``: ``ids``, or new ones counting on from :attr:`next_id`). Nothing changes
        if anything is refused or the log cannot be written."""
        with self._changing:
            return self._add(codes, ids, {"labels": labels, "paths": paths, "keys": keys,
                                          "class_names": class_names})

    def _add(self, codes, ids, fields: dict) -> np.ndarray:
        self._check_writable()
        codes = check_codes(codes, self.nbits)
        n = codes.shape[0]
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            ids = check_new_ids(ids, n)
            clash = ids[self._view.holds(ids)]
            if clash.size:
                raise InputError(f"{clash.size} ids are already in the index, e.g. {clash[:5].tolist()}")
        rec = {"op": "add", "ids": ids, "codes": codes, **fields}
        view = self._changed(rec)  # every check before anything is written
        if n:
            self._append(_add_payload(self._seq + 1, codes, ids, fields), rec)
        self._set(view, ids)
        self._maybe_fold()
        return ids

    def remove(self, ids) -> int:
        """Remove the items with these ids (ids not held are ignored), durably; how many were removed."""
        with self._changing:
            return self._remove(ids)

    def _remove(self, ids) -> int:
        self._check_writable()
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        ids = ids[self._view.holds(ids)]
        if ids.shape[0]:
            rec = {"op": "remove", "ids": ids}
            view = self._changed(rec)
            self._append(_remove_payload(self._seq + 1, ids), rec)
            self._set(view, None)
            self._maybe_fold()
        return int(ids.shape[0])

    def _set(self, view: LiveView, added_ids: np.ndarray | None) -> None:
        if added_ids is not None and added_ids.shape[0]:
            self._next_id = max(self._next_id, int(added_ids.max()) + 1)
        self._view = view  # one assignment: a search holds either the old view or this one

    def _changed(self, rec: dict, v: LiveView | None = None) -> LiveView:
        """The view after one change to ``v`` (default: the current view, which is not touched)."""
        v = self._view if v is None else v
        ids = np.asarray(rec["ids"], np.int64)
        if rec["op"] == "remove":
            return v.without(ids)
        codes = rec["codes"]
        fields = {k: rec.get(k) for k in ("labels", "paths", "keys", "class_names")}
        # what the file's catalog would say to these rows: the error now, not at the fold
        given = any(x is not None for x in fields.values())
        catalogs = [part.catalog for part, _ in v.parts if part.catalog is not None]
        if given or catalogs:
            new = Catalog.from_columns(codes.shape[0], **fields)
            for cat in catalogs:
                cat.take(_EMPTY_IDS).concat(new)
            if fields["class_names"] is None and v.base.catalog is not None and v.base.catalog.class_names:
                fields["class_names"] = v.base.catalog.class_names
        return v.with_added({"codes": codes, "ids": ids, **fields})

    def _apply(self, rec: dict, where: Path) -> None:
        """Replay one log record (as JSON gave it)."""
        try:
            if rec.get("op") == "add":
                n = len(rec["ids"])
                rec = {**rec, "codes": np.frombuffer(bytes.fromhex(rec["codes"]), np.uint8).reshape(n, -1)}
            elif rec.get("op") != "remove":
                raise ValueError(f"unknown op {rec.get('op')!r}")
            view = self._changed(rec)
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{where}: a record cannot be replayed ({one_line(e, 120)})") from None
        self._set(view, np.asarray(rec["ids"], np.int64) if rec["op"] == "add" else None)

    def _append(self, payload: bytes, rec: dict) -> None:
        """Record number ``self._seq + 1`` (``payload``, which says so) at the end of the log, fsynced; on
        failure the log is cut back and a ``DataError`` raised."""
        if self._log_fd is None:
            raise DataError(f"{log_path(self.path)}: the change log is not open; nothing was changed")
        buf = _REC.pack(_REC_MAGIC, len(payload), zlib.crc32(payload)) + payload
        start = self._log_len
        try:
            done = 0
            while done < len(buf):
                done += os.pwrite(self._log_fd, buf[done:], start + done)
            os.fsync(self._log_fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._log_fd, start)
                os.fsync(self._log_fd)
            raise DataError(f"{log_path(self.path)}: cannot write the change ({e.strerror or one_line(e)}); "
                            f"nothing was changed") from None
        self._log_len = start + len(buf)
        self._seq += 1
        self.bytes_written += len(buf)
        if self._tail is not None:
            self._tail.append((self._seq, rec, payload))

    def _write_log(self, identity: tuple[int, bytes], folded: int, records: list) -> None:
        """A log naming the index file as it is now (``identity``, which holds the records up to ``folded``)
        and holding ``records`` (``(seq, record, payload)``), put in place atomically, then opened to append."""
        head = _LOG_HEAD.pack(_LOG_MAGIC, self.nbits, *identity, self._log_id, folded)
        body = b"".join(_REC.pack(_REC_MAGIC, len(p), zlib.crc32(p)) + p for _, _, p in records)
        lpath = log_path(self.path)
        with atomic_write(lpath) as f:
            f.write(head + body)
        fd = os.open(lpath, os.O_WRONLY)
        self._log_fd_close()
        self._log_fd = fd
        self._log_len = len(head) + len(body)
        self.bytes_written += len(head) + len(body)

    # -- folding ------------------------------------------------------------------------------------------------

    def _maybe_fold(self) -> None:
        v, p = self._view, self.policy
        if not (self._log_len > p.log_bytes or v.added > p.added or v.dead.shape[0] > p.removed):
            return
        if self._fold_thread is not None:
            return  # one is under way; the changes since it began wait for the next
        failed = self._fold_failed_at
        if failed is not None and time.monotonic() - failed < p.retry_seconds:
            return
        if not p.background:
            self._fold_now()
            return
        self._fold_thread = threading.Thread(target=self._fold_in_background, name=f"dsh-fold {self.path.name}",
                                             daemon=True)
        self._fold_thread.start()

    def fold(self) -> None:
        """Write the index file with every change in it (atomically), then start an empty log; waits for a fold
        under way first. Raises what stopped it (a one-line ``DataError``: nothing is lost, the log holds all)."""
        while True:
            self.wait_for_fold()
            with self._changing:
                if self._fold_thread is None:  # none can start while this holds the change lock
                    self._fold_now()
                    return

    def wait_for_fold(self, timeout: float | None = None) -> bool:
        """Wait for a fold running in the background, if any; whether none is running now."""
        thread = self._fold_thread
        if thread is not None:
            thread.join(timeout)
        return self._fold_thread is None or not self._fold_thread.is_alive()

    @property
    def folding(self) -> bool:
        """Whether a fold runs in the background now."""
        return self._fold_thread is not None

    def _fold_now(self) -> None:
        start = self._begin_fold()
        if start is None:
            return
        try:
            merged = self._write_folded(*start)
        except BaseException:
            self._tail = None
            raise
        self._finish_fold(merged, start[1])

    def _fold_in_background(self) -> None:
        try:
            with self._changing:
                start = self._begin_fold()
            if start is None:
                return
            try:
                merged = self._write_folded(*start)  # the long part: changes and searches go on meanwhile
            except BaseException:
                with self._changing:
                    self._tail = None
                raise
            with self._changing:
                self._finish_fold(merged, start[1])
        except Exception as e:  # noqa: BLE001 - a full disk, say: the log still holds every change
            self.last_fold_error = one_line(e)
            self._fold_failed_at = time.monotonic()
            logger.warning("%s: folding the change log into the index file failed (%s); the log keeps every "
                           "change, and the fold is tried again later", self.path, self.last_fold_error)
        finally:
            self._fold_thread = None

    def _begin_fold(self) -> tuple[LiveView, int, int] | None:
        """Under the change lock: what the fold writes (the view, the number of its last record, the next id),
        or None where the file holds everything already."""
        self._check_writable()
        if not self.pending and self._seq == _folded_seq(self._view.base):
            return None
        self._tail = []
        return self._view, self._seq, self._next_id

    def _write_folded(self, view: LiveView, seq: int, next_id: int) -> HammingIndex:
        """The index file written (atomically) with the items of ``view``, which holds the records up to ``seq``."""
        merged = view.merged()
        meta = {**merged.metadata, "next_id": next_id, "log_id": self._log_id.hex(), "log_seq": seq}
        merged.save(self.path, meta)
        written = os.path.getsize(self.path)
        entry = merged.metadata.get("catalog")  # the save names the catalog it wrote beside the file
        if entry is not None:
            written += os.path.getsize(self.path.with_name(entry["file"]))
        self.bytes_written += written
        return merged

    def _finish_fold(self, merged: HammingIndex, seq: int) -> None:
        """Under the change lock, once the file holds the records up to ``seq``: the changes made since, replayed
        onto its items, become the view, and the log keeps only them."""
        tail, self._tail = self._tail or [], None
        view = LiveView(merged)
        for _, rec, _ in tail:
            view = self._changed(rec, view)
        self._view = view
        self.folds += 1
        self.last_fold_error, self._fold_failed_at = None, None
        try:
            self._write_log(_file_identity(self.path), seq, tail)
        except (OSError, DataError) as e:
            # the old log is still in place and still right beside the new file (it skips the records the file
            # holds); changes go on being appended to it, and the next fold writes a shorter one
            logger.warning("%s: the log could not be rewritten after a fold (%s); the old one stays in use",
                           log_path(self.path), getattr(e, "strerror", None) or one_line(e))

    def _log_fd_close(self) -> None:
        fd, self._log_fd = self._log_fd, None
        if fd is not None:
            os.close(fd)

    def close(self, fold: bool = True) -> None:
        """Fold what is pending (``fold``) and let go of the log and the lock."""
        if self._lock is None:
            return
        try:
            self.wait_for_fold()
            if fold and self.writable:
                self.fold()
        finally:
            self._log_fd_close()
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "LiveIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


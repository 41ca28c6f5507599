"""The ``.npz`` code file written by ``dsh encode`` and read by ``dsh eval``, ``dsh report`` and ``dsh index``:
``codes`` packed as in :mod:`dsh.codes.bits`, ``nbits``, and optionally ``labels``, ``u``, ``paths`` and
``class_names``, every array checked when loaded. Its arrays: docs/FORMATS.md ("Code file").

No torch here: anyone can write such a file with numpy alone.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError, one_line
from ..utils.fileio import atomic_write
from .bits import check_codes

# the longest code a file may claim (dsh.config's limit on --bits): past it a damaged 'nbits' would only fail later
MAX_NBITS = 4096


@dataclass
class CodeFile:
    codes: np.ndarray  # uint8[n, nbytes]
    nbits: int
    labels: np.ndarray | None = None  # int64[n] or uint8[n, C]
    u: np.ndarray | None = None  # float32[n, nbits]
    paths: np.ndarray | None = None  # str[n]
    class_names: np.ndarray | None = None  # str[C]

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def multi_label(self) -> bool:
        return self.labels is not None and self.labels.ndim == 2

    def labelled(self) -> np.ndarray:
        """``bool[n]``: the rows with a label: a class id >= 0 (``-1`` marks an unlabelled image, as ``dsh encode
        --images`` writes for images outside a class folder), or a multi-hot row with at least one label."""
        if self.labels is None:
            return np.zeros(len(self), bool)
        return self.labels.any(axis=1) if self.multi_label else self.labels >= 0

    def drop_unlabelled(self, name: str) -> tuple["CodeFile", int]:
        """The rows with a label, and how many had none: an unlabelled row (class -1, or a multi-hot row with no
        label) would count as a class of its own when codes are judged. ``name`` (the file) is in the one-line
        :class:`DataError` raised where no row has a label."""
        keep = self.labelled()
        if not keep.any():
            raise DataError(f"{name}: no row has a label (-1 marks an unlabelled image), so nothing can be judged")
        return self.subset(keep), int((~keep).sum())

    def subset(self, rows: np.ndarray) -> "CodeFile":
        """The rows selected by ``rows`` (a boolean mask or indices), every per-row array alike."""
        def pick(a):
            return None if a is None else a[rows]

        return CodeFile(self.codes[rows], self.nbits, pick(self.labels), pick(self.u), pick(self.paths),
                        self.class_names)


def save_codes(path: str | os.PathLike, cf: CodeFile) -> None:
    """Write ``cf`` to ``path`` atomically (a temporary file, then a rename)."""
    arrays: dict[str, np.ndarray] = {
        "codes": check_codes(cf.codes, cf.nbits),
        "nbits": np.int64(cf.nbits),
    }
    n = len(cf)
    for name in ("labels", "u", "paths", "class_names"):
        value = getattr(cf, name)
        if value is None:
            continue
        value = np.asarray(value)
        if name != "class_names" and value.shape[0] != n:
            raise InputError(f"{name} has {value.shape[0]} rows but codes have {n}")
        arrays[name] = value
    if "labels" in arrays:
        arrays["labels"] = arrays["labels"].astype(np.uint8 if arrays["labels"].ndim == 2 else np.int64)
    if "u" in arrays:
        arrays["u"] = arrays["u"].astype(np.float32)
    for name in ("paths", "class_names"):
        if name in arrays:
            arrays[name] = arrays[name].astype(str)
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _listed_members(zf: zipfile.ZipFile) -> int | None:
    """How many members the zip's end record says it has (``None`` where this Python's zipfile cannot say)."""
    try:
        end = zipfile._EndRecData(zf.fp)  # the record zipfile itself reads; private, but unchanged since Python 2
        return None if end is None else int(end[zipfile._ECD_ENTRIES_TOTAL])
    except (AttributeError, IndexError, TypeError, ValueError, OSError):
        return None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The ``NAME.npy`` arrays of a ``.npz`` file, each read to the end of its zip member, so that the member's
    CRC-32 is always checked: ``np.load`` stops where an array's header says the data ends, and a damaged header
    that asks for fewer bytes (a shape of 14 rows for 24, ``<U10`` for ``<U12``) would load misread values."""
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        listed = _listed_members(zf)
        if listed is not None and listed != len(zf.infolist()):
            # a damaged length in the zip's directory makes zipfile stop reading it early: arrays would vanish
            raise DataError(f"{path}: the zip directory says {listed} arrays but {len(zf.infolist())} can be read "
                            f"(a damaged file)")
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):  # not skipped: a damaged name must not hide an array
                raise DataError(f"{path}: holds {info.filename!r}, which is not a .npy array (not a code file, or "
                                f"a damaged one)")
            name = info.filename[: -len(".npy")]
            with zf.open(info) as member:  # zipfile checks the name against the member's own header here
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                if member.read(1):
                    raise DataError(f"{path}: array '{name}' holds more bytes than its header says (corrupt file)")
    return arrays


def load_codes(path: str | os.PathLike) -> CodeFile:
    """Read a code file; a missing, corrupt or inconsistent file raises a one-line :class:`DataError` naming it.

    Nothing in the file is executed (``allow_pickle=False``: an object array is refused). Every array is checked
    for the kind and shape the module docstring gives, so what loads is what :func:`save_codes` writes: the zip
    container's CRC-32 of each array refuses flipped bits, and the structure checks refuse a file that is
    readable but not a code file (``nbits`` not one integer, labels that are not class ids, ...).
    """
    path = Path(path)
    if not path.is_file():
        from .shards import find_shards

        shards = find_shards(path)
        if shards:
            return join_code_files([load_codes(p) for p in shards], str(path))
        raise DataError(f"{path}: no such code file")
    try:
        data = _read_npz(path)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: not a readable .npz code file (an array's header asks for more memory than "
                        f"there is)") from None
    except Exception as e:  # zipfile and numpy raise many kinds for a damaged file; all of them are the file's fault
        raise DataError(f"{path}: not a readable .npz code file ({e.__class__.__name__}: {one_line(e, 160)})") \
            from None
    for key in ("codes", "nbits"):
        if key not in data:
            raise DataError(f"{path}: not a dsh code file (no '{key}' array)")
    raw = data["nbits"]
    if raw.shape != () or not np.issubdtype(raw.dtype, np.integer):
        shown = np.array2string(raw.reshape(-1)[:4], separator=",") if raw.size else "[]"
        raise DataError(f"{path}: 'nbits' must be one integer, got a {raw.dtype} array of shape {list(raw.shape)} "
                        f"({shown}{'...' if raw.size > 4 else ''})")
    nbits = int(raw)
    if not 1 <= nbits <= MAX_NBITS:
        raise DataError(f"{path}: 'nbits' must be between 1 and {MAX_NBITS}, got {nbits}")
    try:
        codes = check_codes(data["codes"], nbits)
    except ValueError as e:
        raise DataError(f"{path}: {one_line(e)}") from None
    n = int(codes.shape[0])
    labels = data.get("labels")
    if labels is not None:
        if labels.ndim == 1 and not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise DataError(f"{path}: 'labels' must hold integer class ids, got dtype {labels.dtype}")
        if labels.ndim == 2 and not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise DataError(f"{path}: multi-hot 'labels' must be integers 0/1, got dtype {labels.dtype}")
        if labels.ndim not in (1, 2):
            raise DataError(f"{path}: 'labels' must be [n] class ids or [n, classes] multi-hot rows, got shape "
                            f"{list(labels.shape)}")
        if labels.ndim == 1:
            labels = labels.astype(np.int64, copy=False)
            if labels.size and labels.min() < -1:
                raise DataError(f"{path}: 'labels' holds class ids below -1 (-1 marks an unlabelled image)")
        elif labels.size and (labels.min() < 0 or labels.max() > 1):
            raise DataError(f"{path}: multi-hot 'labels' hold values other than 0 and 1")
    u = data.get("u")
    if u is not None and (u.ndim != 2 or u.shape[1:] != (nbits,) or not np.issubdtype(u.dtype, np.floating)):
        raise DataError(f"{path}: 'u' must be float[n, {nbits}], got {u.dtype}{list(u.shape)}")
    for name in ("paths", "class_names"):
        value = data.get(name)
        if value is not None and (value.ndim != 1 or value.dtype.kind not in "U"):
            raise DataError(f"{path}: '{name}' must be a 1-D array of strings, got {value.dtype}{list(value.shape)}")
    cf = CodeFile(
        codes=codes,
        nbits=nbits,
        labels=labels,
        u=u,
        paths=data.get("paths"),
        class_names=data.get("class_names"),
    )
    for name in ("labels", "u", "paths"):
        value = getattr(cf, name)
        if value is not None and value.shape[0] != n:
            raise DataError(f"{path}: '{name}' has {value.shape[0]} rows but 'codes' has {n}")
    return cf


def join_code_files(parts: list[CodeFile], name: str) -> CodeFile:
    """Code files of one collection (e.g. the shards of :mod:`dsh.codes.shards`) joined in order, as one file would be;
    parts of different code lengths, label kinds or class names are a :class:`DataError` naming ``name``."""
    first = parts[0]
    for p in parts[1:]:
        if p.nbits != first.nbits:
            raise DataError(f"{name}: its shards hold {first.nbits}- and {p.nbits}-bit codes")
        if (p.labels is None) != (first.labels is None) or p.multi_label != first.multi_label:
            raise DataError(f"{name}: its shards do not all have the same kind of labels")
        if (p.class_names is None) != (first.class_names is None) or (
                p.class_names is not None and list(p.class_names) != list(first.class_names)):
            raise DataError(f"{name}: its shards have different class names")
        for field in ("u", "paths"):
            if (getattr(p, field) is None) != (getattr(first, field) is None):
                raise DataError(f"{name}: some shards have '{field}' and some do not")

    def cat(field: str):
        values = [getattr(p, field) for p in parts]
        return None if values[0] is None else np.concatenate(values)

    return CodeFile(np.concatenate([p.codes for p in parts]), first.nbits, cat("labels"), cat("u"), cat("paths"),
                    first.class_names)

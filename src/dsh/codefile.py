"""The ``.npz`` code file written by ``dsh encode`` and read by ``dsh eval``, ``dsh report`` and ``dsh index``.

Arrays in the file:

- ``codes``: ``uint8[n, ceil(nbits/8)]``, packed as in :mod:`dsh.codes`;
- ``nbits``: ``int64`` scalar;
- ``labels``: ``int64[n]`` class ids, or ``uint8[n, n_classes]`` multi-hot rows (similar = share a label);
- ``u`` (optional): ``float32[n, nbits]``, the real outputs, written with ``--keep-u``;
- ``paths`` (optional): ``str[n]``, the image file of each row when the codes came from an image folder;
- ``class_names`` (optional): ``str[n_classes]``.

No torch here: anyone can write such a file with numpy alone.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codes import check_codes
from .errors import DataError, InputError
from .fileio import atomic_write


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

    def subset(self, rows: np.ndarray) -> "CodeFile":
        """The rows selected by ``rows`` (a boolean mask or indices), every per-row array alike."""
        pick = (lambda a: None if a is None else a[rows])
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


def load_codes(path: str | os.PathLike) -> CodeFile:
    """Read a code file; a missing, corrupt or inconsistent file raises :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such code file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz code file ({e.__class__.__name__}: {e})") from None
    for key in ("codes", "nbits"):
        if key not in data:
            raise DataError(f"{path}: not a dsh code file (no '{key}' array)")
    nbits = int(data["nbits"])
    try:
        codes = check_codes(data["codes"], nbits)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    cf = CodeFile(
        codes=codes,
        nbits=nbits,
        labels=data.get("labels"),
        u=data.get("u"),
        paths=data.get("paths"),
        class_names=data.get("class_names"),
    )
    for name in ("labels", "u", "paths"):
        value = getattr(cf, name)
        if value is not None and value.shape[0] != len(cf):
            raise DataError(f"{path}: '{name}' has {value.shape[0]} rows but 'codes' has {len(cf)}")
    return cf

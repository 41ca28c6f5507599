"""Multi-label image lists in DeepHash-pytorch's text format (as NUS-WIDE and MS-COCO users have them).

A dataset root ``DIR`` holds one list file per split, ``train.txt``, ``test.txt`` and ``database.txt`` (the
retrieval database, often a superset of train), and optionally ``classes.txt`` (one class name per line; default
``"0"`` ... ``"C-1"``). Each non-blank line of a list is ``path l1 l2 ... lC``: an image path (relative to ``DIR``,
or absolute; no spaces) and ``C`` labels of ``0`` or ``1``, the same ``C`` on every line of every list. Images
decode with :mod:`dsh.utils.imageio` like folder datasets, grey (1 channel) if the first training image is grey, else
RGB; labels become multi-hot ``uint8[N, C]`` rows. A bad line is refused with a one-line
:class:`~dsh.errors.DataError` naming the file and the line number.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..utils.imageio import decode_files, files_fingerprint
from .imageset import ImageSet

LIST_SPLITS = ("train", "test", "database")
LIST_FILES = {split: f"{split}.txt" for split in LIST_SPLITS}
CLASSES_FILE = "classes.txt"


@dataclass
class ListScan:
    """One list file, parsed and its images checked for existence, nothing decoded."""

    root: Path
    split: str
    list_file: Path
    class_names: list[str]
    files: list[str]  # as written in the list
    labels: np.ndarray  # uint8[N, C]
    stats: list[tuple[int, int]]  # (size in bytes, mtime in ns) per image
    text_digest: str  # sha256 of the list file (labels are in it, not in the images)

    def full_paths(self) -> list[str]:
        return [os.path.join(str(self.root), f) for f in self.files]

    def fingerprint(self) -> str:
        return self.text_digest + files_fingerprint(self.class_names, self.files, self.stats)


def list_file(root: Path, split: str) -> Path:
    if split not in LIST_SPLITS:
        raise DataError(f"list: no split {split!r} (a list dataset has {', '.join(LIST_SPLITS)})")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"list: no such folder {root}")
    path = root / LIST_FILES[split]
    if not path.is_file():
        raise DataError(f"list: {root} has no {LIST_FILES[split]} (expected {', '.join(LIST_FILES.values())}: "
                        f"lines of 'path l1 ... lC')")
    return path


def parse_list(path: Path, n_classes: int | None = None) -> tuple[list[str], np.ndarray]:
    """``(paths, uint8[N, C] labels)`` of one list file; ``n_classes``: the ``C`` every line must have (``None``:
    the first line's)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the list ({type(e).__name__})") from None
    files: list[str] = []
    rows: list[list[int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        name, labels = fields[0], fields[1:]
        if not labels:
            raise DataError(f"{path}:{number}: expected 'path l1 ... lC', got only {_short(line)}")
        if n_classes is None:
            n_classes = len(labels)
        if len(labels) != n_classes:
            raise DataError(f"{path}:{number}: {len(labels)} labels, expected {n_classes} (as on the first line)")
        bad = next((v for v in labels if v not in ("0", "1")), None)
        if bad is not None:
            raise DataError(f"{path}:{number}: labels must be 0 or 1, got {_short(bad)}")
        files.append(name)
        rows.append([int(v) for v in labels])
    if not files:
        raise DataError(f"{path}: the list holds no images")
    return files, np.asarray(rows, dtype=np.uint8)


def _short(s: str, n: int = 40) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def class_names_of(root: Path, n_classes: int) -> list[str]:
    """``classes.txt`` (one name per line, ``n_classes`` of them) where present, else ``"0"`` ... ``"C-1"``."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return [str(i) for i in range(n_classes)]
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the class names ({type(e).__name__})") from None
    if len(names) != n_classes:
        raise DataError(f"{path}: {len(names)} class names, but the lists have {n_classes} labels a line")
    return names


def n_classes_of(root: Path) -> int:
    """``C``: the labels on the first line of ``train.txt``."""
    return parse_list(list_file(root, "train"))[1].shape[1]


def scan_list(root: Path, split: str) -> ListScan:
    """Parse ``split``'s list (``C`` as in ``train.txt``) and check that every image exists."""
    root = Path(root)
    path = list_file(root, split)
    n_classes = n_classes_of(root) if split != "train" else None
    files, labels = parse_list(path, n_classes)
    stats = []
    for f in files:
        try:
            st = os.stat(os.path.join(str(root), f))
        except OSError:
            number = _line_of(path, f)
            raise DataError(f"{path}:{number}: no such image {os.path.join(str(root), f)}") from None
        stats.append((st.st_size, st.st_mtime_ns))
    return ListScan(root=root, split=split, list_file=path, class_names=class_names_of(root, labels.shape[1]),
                    files=files, labels=labels, stats=stats,
                    text_digest=hashlib.sha256(path.read_bytes()).hexdigest())


def _line_of(path: Path, name: str) -> int:
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.split()[:1] == [name]:
            return number
    return 0


def channels_of(root: Path) -> int:
    """1 if the first training image is grey (PIL modes ``1``, ``L``, ``I``, ``F``, ``I;16``), else 3."""
    from PIL import Image

    files, _ = parse_list(list_file(root, "train"))
    first = os.path.join(str(root), files[0])
    try:
        with Image.open(first) as im:
            mode = im.mode
    except (OSError, ValueError) as e:
        raise DataError(f"list: cannot open {first} ({type(e).__name__})") from None
    return 1 if mode in ("1", "L", "I", "F", "I;16", "LA") else 3


def read_list(scan: ListScan, image_size=None, workers: int | None = None) -> ImageSet:
    """Decode a scanned list into an :class:`ImageSet` with multi-hot labels; ``paths`` as the list writes them."""
    mode = "L" if channels_of(scan.root) == 1 else "RGB"
    images = decode_files(scan.full_paths(), image_size, mode, workers)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(scan.labels), list(scan.class_names),
                    list(scan.files), f"list/{scan.split}")

"""Class-per-folder image trees (torchvision's ImageFolder layout).

A dataset root holds ``train/<class>/*`` and ``test/<class>/*``; class ids are the sorted names of the class
folders under ``train/``. Images may sit in nested folders inside a class folder. Folder images decode to RGB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..utils.imageio import IMAGE_EXTENSIONS, decode_files, files_fingerprint, subfolders, walk_images
from .imageset import ImageSet


@dataclass
class FolderScan:
    """What a split of a folder dataset holds, without decoding anything."""

    root: Path
    split: str
    class_names: list[str]
    files: list[str]  # paths relative to root, posix style
    labels: np.ndarray  # int64[N]
    stats: list[tuple[int, int]]  # (size in bytes, mtime in ns) per file

    def fingerprint(self) -> str:
        """A digest of the class names and of every file's name, size and modification time."""
        return files_fingerprint(self.class_names, self.files, self.stats)


def class_names_of(root: Path) -> list[str]:
    """The class names of a folder dataset (the class folders under ``train/``); checks the layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder: no such folder {root}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"folder: {root} has no train/ subfolder (expected {root}/train/<class>/<image> and "
                        f"{root}/test/<class>/<image>)")
    names = subfolders(train_dir)
    if not names:
        raise DataError(f"folder: no class folders in {train_dir}")
    return names


def scan_folder(root: Path, split: str) -> FolderScan:
    """List the images of ``split`` (``train`` or ``test``) under ``root``; DataError for a bad layout."""
    root = Path(root)
    class_names = class_names_of(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"folder: {root} has no {split}/ subfolder (expected {split_dir}/<class>/<image>)")
    unknown = sorted(set(subfolders(split_dir)) - set(class_names))
    if unknown:
        raise DataError(f"folder: {split_dir} has classes that {root / 'train'} lacks: {', '.join(unknown[:5])}"
                        + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    found: list[tuple[str, int, int]] = []
    labels: list[int] = []
    for c, name in enumerate(class_names):
        d = split_dir / name
        if not d.is_dir():
            continue  # a class may be absent from the test split
        before = len(found)
        walk_images(str(d), f"{split}/{name}/", found)
        if split == "train" and len(found) == before:
            raise DataError(f"folder: class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        labels.extend([c] * (len(found) - before))
    if not found:
        raise DataError(f"folder: no images in {split_dir}")
    return FolderScan(
        root=root,
        split=split,
        class_names=class_names,
        files=[f for f, _, _ in found],
        labels=np.asarray(labels, dtype=np.int64),
        stats=[(s, m) for _, s, m in found],
    )


def read_folder(scan: FolderScan, image_size=None, workers: int | None = None) -> ImageSet:
    """Decode a scanned split (in parallel) into an :class:`ImageSet` whose ``paths`` are relative to the root."""
    root = str(scan.root)
    images = decode_files([os.path.join(root, f) for f in scan.files], image_size, "RGB", workers)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(scan.labels), list(scan.class_names),
                    list(scan.files), f"folder/{scan.split}")


def first_image(root: Path) -> Path:
    """Some image of the train split, found without listing the whole tree (for cheap shape queries)."""
    train_dir = Path(root) / "train"
    for name in class_names_of(root):
        for dirpath, dirnames, filenames in os.walk(train_dir / name):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    return Path(dirpath) / f
    raise DataError(f"folder: no images in {train_dir}")

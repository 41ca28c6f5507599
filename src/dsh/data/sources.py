"""Readers for the named datasets with fixed formats: ``digits`` (bundled with scikit-learn), ``mnist`` (IDX files)
and ``cifar10`` (python pickle batches), plus torchvision's download for the last two.

Each ``find_*`` returns the files that make up a split (their names, sizes and times key the cache); each
``read_*`` decodes them into an :class:`ImageSet`.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, one_line
from .imageset import ImageSet, stratified_subset

DIGIT_NAMES = [str(i) for i in range(10)]

# ---------------------------------------------------------------------------------------------------------------
# digits: scikit-learn's 1,797 8x8 images; no official split, so a fixed stratified 20% is the test split.

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 20160627  # fixed forever: the digits test split must not depend on any run's seed


def read_digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..255
    labels = d.target.astype(np.int64)
    test_idx = stratified_subset(labels, round(DIGITS_TEST_FRACTION * len(labels)), DIGITS_SPLIT_SEED)
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_idx] = True
    if split == "train":
        mask = ~mask
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images[mask])), torch.from_numpy(labels[mask]),
                    list(DIGIT_NAMES), None, f"digits/{split}")


# ---------------------------------------------------------------------------------------------------------------
# download (real, for users with a network; tests replace it)


def download_torchvision(dataset: str, root: Path) -> None:
    """Fetch ``dataset`` (``"mnist"`` or ``"cifar10"``) into ``root`` in torchvision's layout."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[dataset]
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(root=str(root), train=train, download=True)


def _fetch(dataset: str, label: str, root: Path, download: bool, find):
    """``find(root)`` or, where it finds nothing, download then find again; DataError when neither works."""
    found = find(root)
    if found is not None:
        return found
    if not download:
        raise DataError(f"{dataset}: no {label} files under {root} (download disabled)")
    try:
        download_torchvision(dataset, root)
    except Exception as e:  # no network, a proxy error, a full disk: all end the same way for the user
        raise DataError(f"{dataset}: no {label} files under {root} and the download failed ({one_line(e)})") from None
    found = find(root)
    if found is None:
        raise DataError(f"{dataset}: no {label} files under {root} even after downloading")
    return found


# ---------------------------------------------------------------------------------------------------------------
# mnist: IDX files, plain or .gz, in torchvision's layout <root>/MNIST/raw (the MNIST or raw folder also work)

_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _mnist_file(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def find_mnist(root: Path, split: str, download: bool = True) -> list[Path]:
    """``[images_file, labels_file]`` of ``split`` under ``root``; downloads if absent and allowed."""
    prefix = _MNIST_PREFIX[split]

    def find(r: Path) -> list[Path] | None:
        for d in (r / "MNIST" / "raw", r / "raw", r):
            files = [_mnist_file(d, f"{prefix}-images-idx3-ubyte"), _mnist_file(d, f"{prefix}-labels-idx1-ubyte")]
            if all(files):
                return files
        return None

    return _fetch("mnist", "MNIST", root, download, find)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes -> ``uint8`` array of the shape in its header."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"{path} is truncated or padded: header says {dims}, file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist(files: list[Path], split: str) -> ImageSet:
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{files[0]} and {files[1]} do not hold matching images and labels")
    return ImageSet(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)),
                    list(DIGIT_NAMES), None, f"mnist/{split}")


# ---------------------------------------------------------------------------------------------------------------
# cifar10: torchvision's python batches, <root>/cifar-10-batches-py (or that folder itself)

_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def find_cifar10(root: Path, split: str, download: bool = True) -> list[Path]:
    """``[batch files..., batches.meta]`` of ``split`` under ``root``; downloads if absent and allowed."""

    def find(r: Path) -> list[Path] | None:
        for d in (r / "cifar-10-batches-py", r):
            files = [d / name for name in _CIFAR_FILES[split] + ["batches.meta"]]
            if all(f.is_file() for f in files):
                return files
        return None

    return _fetch("cifar10", "CIFAR-10 (cifar-10-batches-py)", root, download, find)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {one_line(e)}") from None


def read_cifar10(files: list[Path], split: str) -> ImageSet:
    *batches, meta = files
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(meta).get(b"label_names", [])]
    images, labels = [], []
    for path in batches:
        b = _unpickle(path)
        try:
            data = np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(b[b"labels"], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise DataError(f"{path} is not a CIFAR-10 batch ({one_line(e)})") from None
        if lab.shape[0] != data.shape[0]:
            raise DataError(f"{path}: {data.shape[0]} images but {lab.shape[0]} labels")
        images.append(data)
        labels.append(lab)
    labels_all = np.concatenate(labels)
    if len(names) <= int(labels_all.max(initial=0)):
        raise DataError(f"{meta} names {len(names)} classes but the labels go up to {int(labels_all.max())}")
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(labels_all), names, None,
                    f"cifar10/{split}")

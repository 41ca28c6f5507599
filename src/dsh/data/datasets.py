"""Datasets by name: where their files are, their splits, and loading a split through the cache."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..utils.fileio import DataError
from ..utils.imageio import as_size, cover_size
from . import listfile, sources
from .cache import cache_dir as resolve_cache_dir
from .cache import cached, file_fingerprint
from .folder import read_folder, scan_folder
from .imageset import ImageSet, carve_val
from .names import DATASETS

SPLITS = ("train", "val", "fit", "test")
# the list dataset also has a retrieval database split (DeepHash-pytorch's database.txt)
LIST_SPLITS = SPLITS + ("database",)


def _check_name(name: str) -> str:
    key = str(name).lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    return key


def resolve_root(name: str, data_root: str | os.PathLike | None) -> Path | None:
    """The argument, else ``$DSH_DATA``; ``None`` for ``digits``, which needs no files.

    For ``mnist`` and ``cifar10`` the root is the folder that holds ``MNIST/`` or ``cifar-10-batches-py/`` (those
    folders themselves also work); for ``folder`` it is the image tree itself, the one with ``train/`` and
    ``test/``; for ``list`` the folder with ``train.txt``, ``test.txt`` and ``database.txt``
    (:mod:`dsh.data.listfile`).
    """
    if name == "digits":
        return None
    root = data_root if data_root is not None else os.environ.get("DSH_DATA") or None
    if root is None:
        raise DataError(f"dataset {name} needs --data-root or DSH_DATA")
    return Path(root).expanduser()


def load_split(
    name: str,
    split: str,
    data_root: str | os.PathLike | None = None,
    *,
    val_size: int | float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    image_size: int | tuple[int, int] | None = None,
    workers: int | None = None,
) -> ImageSet:
    """One split of a dataset, decoded: ``images`` ``uint8[N, C, H, W]``, ``labels`` ``int64[N]``.

    ``split``: ``train`` and ``test`` are the dataset's own (digits, which has none, gets a fixed stratified 20%
    test split); ``val`` is a fixed, seeded, stratified subset of ``train`` (``val_size``: a count, a fraction,
    or ``None`` for ``min(5000, 10% of train)``) for choosing models and settings; ``fit`` is ``train`` minus
    ``val``, what training sees. Never choose anything on ``test``. The ``list`` dataset (multi-label, labels
    ``uint8[N, C]`` multi-hot) also has ``database``, its retrieval database.

    ``data_root``: see :func:`resolve_root`. ``download``: fetch ``mnist`` / ``cifar10`` with torchvision when
    their files are absent. ``image_size``: ``s`` or ``(h, w)``: resize every image (cover, then centre-crop);
    folder images must otherwise share one size. ``cache_dir``: default ``$DSH_CACHE``, else ``~/.cache/dsh``.
    ``workers``: decoding processes for folder datasets (default: the usable CPUs, at most 8).
    Problems with the data raise :class:`~dsh.utils.fileio.DataError` with a one-line message naming the path.
    """
    name = _check_name(name)
    if split not in (LIST_SPLITS if name == "list" else SPLITS):
        raise DataError(f"unknown split {split!r} (choose from {', '.join(LIST_SPLITS if name == 'list' else SPLITS)})")
    base = "train" if split in ("val", "fit") else split
    s = _load_official(name, base, data_root, cache_dir, download, as_size(image_size), workers)
    return carve_val(s, split, val_size, seed, name) if split != base else s


def _load_official(name, split, data_root, cache_dir, download, size, workers) -> ImageSet:
    if name == "digits":
        return _resized(sources.read_digits(split), size)
    root = resolve_root(name, data_root)
    where = {"dataset": name, "split": split, "root": str(root.resolve())}
    if name == "folder":
        scan = scan_folder(root, split)
        where["image_size"] = list(size) if size else None
        return cached(resolve_cache_dir(cache_dir), where, scan.fingerprint(),
                      lambda: read_folder(scan, size, workers))
    if name == "list":
        lscan = listfile.scan_list(root, split)
        where["image_size"] = list(size) if size else None
        return cached(resolve_cache_dir(cache_dir), where, lscan.fingerprint(),
                      lambda: listfile.read_list(lscan, size, workers))
    find, read = {"mnist": (sources.find_mnist, sources.read_mnist),
                  "cifar10": (sources.find_cifar10, sources.read_cifar10)}[name]
    files = find(root, split, download)
    s = cached(resolve_cache_dir(cache_dir), where, file_fingerprint(files), lambda: read(files, split))
    return _resized(s, size)


def _resized(s: ImageSet, size: tuple[int, int] | None) -> ImageSet:
    if size is None or tuple(s.images.shape[2:]) == size:
        return s
    return ImageSet(resize_images(s.images, size), s.labels, s.class_names, s.paths, s.name)


def resize_images(images: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """``uint8[N, C, H, W]`` -> ``uint8[N, C, h, w]``: antialiased bilinear scaling to cover ``size``, keeping the
    aspect ratio, then a centre crop (the same geometry as folder images get)."""
    n, c, h, w = images.shape
    ch, cw = cover_size(h, w, size)
    top, left = (ch - size[0]) // 2, (cw - size[1]) // 2
    out = torch.empty((n, c) + tuple(size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        x = F.interpolate(images[start : start + chunk].float(), size=(ch, cw), mode="bilinear",
                          antialias=True, align_corners=False)
        out[start : start + chunk] = x[:, :, top : top + size[0], left : left + size[1]].round_().clamp_(0, 255)
    return out


__all__ = ["DATASETS", "SPLITS", "load_split", "resolve_root",
           "resize_images"]

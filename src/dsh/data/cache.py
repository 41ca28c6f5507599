"""The on-disk cache of decoded splits: decode once, then load in milliseconds.

An entry is three files in the cache directory, named ``<dataset>-<split>-<where>-<what>``: ``.images.npy``
(``uint8[N, C, H, W]``, memory-mapped on load), ``.labels.npy`` and ``.json`` (class names, paths, shapes).
``<where>`` digests the dataset, split, resolved root and image size; ``<what>`` digests the source files (names,
sizes, modification times), so an edited folder gets a new entry and the stale one is removed. Every file is
written atomically and the json last, so an entry with a json is complete; an entry that cannot be read back is
rebuilt, never fatal. A cache directory that cannot be written only costs the speed-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError, one_line
from ..utils.fileio import atomic_write
from .imageset import ImageSet

log = logging.getLogger("dsh.data")

# part of every entry's key: raised when decoding changes what a file's pixels are (2: images as a photo viewer
# shows them, dsh.utils.imageio.as_displayed), so no entry decoded the old way is read again
CACHE_FORMAT = 2


def cache_dir(arg: str | os.PathLike | None = None) -> Path:
    """The argument, else ``$DSH_CACHE``, else ``~/.cache/dsh``."""
    if arg is not None:
        return Path(arg).expanduser()
    env = os.environ.get("DSH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dsh"


def file_fingerprint(files: list[Path]) -> str:
    """A digest of the files' resolved names, sizes and modification times (no contents are read)."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _digest(obj: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def entry_stem(where: dict, what: str) -> tuple[str, str]:
    """``(stem, prefix)``: the entry's file stem, and the prefix that its stale versions share."""
    prefix = f"{where['dataset']}-{where['split']}-{_digest([CACHE_FORMAT, where], 10)}"
    return f"{prefix}-{_digest(what, 12)}", prefix


def load_entry(directory: Path, stem: str) -> ImageSet | None:
    """The cached split, or None if absent or unreadable (logged, then rebuilt by the caller)."""
    meta_path = directory / f"{stem}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta["format"] != CACHE_FORMAT:
            return None
        # copy-on-write map: pages load on first touch, and writes (never made) would stay private
        images = np.load(directory / f"{stem}.images.npy", mmap_mode="c", allow_pickle=False)
        labels = np.load(directory / f"{stem}.labels.npy", allow_pickle=False)
        if images.dtype != np.uint8 or list(images.shape) != meta["images_shape"]:
            raise ValueError(f"images are {images.dtype}{list(images.shape)}, json says {meta['images_shape']}")
        if list(labels.shape) != meta["labels_shape"]:
            raise ValueError(f"labels are {list(labels.shape)}, json says {meta['labels_shape']}")
        return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), list(meta["class_names"]),
                        meta["paths"], meta["name"])
    except Exception as e:  # a truncated npy, a bad json, a missing file: rebuild
        log.warning("dsh cache entry %s is unreadable (%s); decoding again", directory / stem, e)
        return None


def save_entry(directory: Path, stem: str, prefix: str, s: ImageSet, where: dict) -> None:
    """Write ``s`` atomically (json last), then remove stale entries with the same prefix."""
    meta = {
        "format": CACHE_FORMAT,
        "name": s.name,
        "where": where,
        "images_shape": list(s.images.shape),
        "labels_shape": list(s.labels.shape),
        "class_names": list(s.class_names),
        "paths": s.paths,
    }
    try:
        with atomic_write(directory / f"{stem}.images.npy") as f:
            np.save(f, s.images.numpy(), allow_pickle=False)
        with atomic_write(directory / f"{stem}.labels.npy") as f:
            np.save(f, s.labels.numpy(), allow_pickle=False)
        with atomic_write(directory / f"{stem}.json", "w") as f:
            json.dump(meta, f)
    except BaseException:
        for part in (".images.npy", ".labels.npy"):  # an entry without its json is never read: don't keep half
            with contextlib.suppress(OSError):
                (directory / f"{stem}{part}").unlink()
        raise
    for old in directory.glob(f"{prefix}-*"):
        if not old.name.startswith(stem + "."):
            with contextlib.suppress(OSError):
                old.unlink()


def cached(directory: Path, where: dict, what: str, decode: Callable[[], ImageSet]) -> ImageSet:
    """The split described by ``where`` and ``what`` from the cache, else ``decode()`` it and cache it."""
    stem, prefix = entry_stem(where, what)
    hit = load_entry(directory, stem)
    if hit is not None:
        return hit
    s = decode()
    try:
        save_entry(directory, stem, prefix, s, where)
    except (OSError, DataError) as e:  # atomic_write names the file in a DataError
        warnings.warn(f"could not write the dataset cache in {directory} ({one_line(e)}); set DSH_CACHE to a "
                      f"writable folder to avoid decoding again", stacklevel=3)
    return s

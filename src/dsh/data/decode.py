"""Decode image files into one ``uint8[N, C, H, W]`` array with PIL, in parallel worker processes.

Work is split into chunks of paths; each worker decodes a chunk into one stacked array, so only a few large
arrays cross process boundaries. Nothing here imports torch.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image

from ..fileio import DataError, one_line

# Lower-case suffixes treated as images (those of torchvision's ImageFolder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Below this many files, starting worker processes costs more than it saves.
_MIN_FILES_PER_WORKER = 256


def as_size(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``None``, ``s`` or ``(h, w)`` -> ``None`` or ``(h, w)``."""
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)):
        h, w = (int(v) for v in image_size)
    else:
        h = w = int(image_size)
    if h < 1 or w < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    return h, w


def cover_size(h: int, w: int, size: tuple[int, int]) -> tuple[int, int]:
    """The smallest ``(h', w')`` with the aspect ratio of ``(h, w)`` that covers ``size`` (then centre-cropped)."""
    scale = max(size[0] / h, size[1] / w)
    return max(size[0], round(h * scale)), max(size[1], round(w * scale))


def decode_image(path: str, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """One file -> ``uint8[H, W, C]``. With ``size``, the image is scaled to cover ``size`` (keeping its aspect
    ratio, antialiased) and centre-cropped to it. Raises DataError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            if size is not None and (im.height, im.width) != size:
                ch, cw = cover_size(im.height, im.width, size)
                if im.format == "JPEG":
                    im.draft(mode, (cw, ch))  # let libjpeg decode at a reduced scale (never below (cw, ch))
                im = im.convert(mode).resize((cw, ch), Image.BILINEAR)
                top, left = (ch - size[0]) // 2, (cw - size[1]) // 2
                im = im.crop((left, top, left + size[1], top + size[0]))
            elif im.mode != mode:
                im = im.convert(mode)
            a = np.asarray(im, dtype=np.uint8)  # decodes here if nothing above did
    except FileNotFoundError:
        raise DataError(f"no such image file {path}") from None
    except Exception as e:  # PIL raises many types for bad files: name the file, keep one line
        raise DataError(f"cannot decode image {path}: {one_line(e)}") from None
    return a[:, :, None] if a.ndim == 2 else a


def _size_error(path: str, shape: tuple, ref_path: str, ref_shape: tuple) -> DataError:
    return DataError(
        f"image {path} is {shape[1]}x{shape[0]} but {ref_path} is {ref_shape[1]}x{ref_shape[0]} (width x height); "
        f"images of different sizes need an image size to resize them to (--image-size)"
    )


def decode_chunk(paths: list[str], size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """Files -> ``uint8[n, H, W, C]``; they must decode to one shape (always so when ``size`` is given)."""
    out = None
    for i, p in enumerate(paths):
        a = decode_image(p, size, mode)
        if out is None:
            out = np.empty((len(paths),) + a.shape, dtype=np.uint8)
        elif a.shape != out.shape[1:]:
            raise _size_error(p, a.shape, paths[0], out.shape[1:])
        out[i] = a
    return out


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _pool_context():
    # fork starts workers in milliseconds and they need nothing but PIL and numpy; elsewhere use the default
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


def decode_files(
    paths: list[str],
    image_size: int | tuple[int, int] | None = None,
    mode: str = "RGB",
    workers: int | None = None,
) -> np.ndarray:
    """Decode ``paths`` -> ``uint8[N, C, H, W]`` (``mode`` ``"RGB"``: C = 3, ``"L"``: C = 1).

    ``workers``: processes to decode with (``None``: the usable CPUs, at most 8; 0 or 1: this process).
    Errors (DataError, naming the file): a missing or undecodable file; sizes that differ when no
    ``image_size`` is given.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataError("no image files to decode")
    size = as_size(image_size)
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(paths) // _MIN_FILES_PER_WORKER))
    if workers == 1:
        chunks = [decode_chunk(paths, size, mode)]
        bounds = [0]
    else:
        # a few chunks per worker balance the load; each result is one array of a few MB
        per = max(64, math.ceil(len(paths) / (workers * 4)))
        bounds = list(range(0, len(paths), per))
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            futures = [pool.submit(decode_chunk, paths[b : b + per], size, mode) for b in bounds]
            try:
                chunks = [f.result() for f in futures]  # re-raises a worker's DataError as is
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # don't decode the rest of a set that failed
                raise
    ref = chunks[0].shape[1:]
    n = len(paths)
    out = np.empty((n, ref[2], ref[0], ref[1]), dtype=np.uint8)  # (N, C, H, W)
    for b, chunk in zip(bounds, chunks):
        if chunk.shape[1:] != ref:
            raise _size_error(paths[b], chunk.shape[1:], paths[0], ref)
        out[b : b + chunk.shape[0]] = chunk.transpose(0, 3, 1, 2)
    return out

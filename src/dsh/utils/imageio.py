"""Images in, ``uint8[N, C, H, W]`` out: decoding, folder listing, and the one input policy every caller shares.

Nothing here imports torch, so the torch-free encoder (onnxruntime) and the HTTP service use it as they are.

**The input policy** (:func:`to_model_input`), for files, encoded bytes, ``PIL.Image`` objects and arrays alike:

- *As a photo viewer shows it* (:func:`as_displayed`): a file is turned upright by its EXIF orientation (all
  eight: rotations and mirrorings, in JPEG, PNG, WebP and TIFF files alike); colours with an embedded ICC profile
  are converted to sRGB (an unreadable profile is ignored); 16-bit images are scaled to 8 bits (``v / 257``,
  rounded); transparency (an alpha channel, or a palette's or a colour's transparency) is composited over white,
  :data:`BACKGROUND`; a CMYK image becomes RGB as PIL converts it; of an animated GIF or WebP, the first frame is
  taken. Formats PIL does not read are refused in one line naming the file, and HEIC or HEIF and SVG (no pixels until
  rendered) are named as such.
- *Channels*: images become the model's channel count. Colour to grey uses ITU-R 601-2 luma, exactly as PIL's
  ``convert("L")`` computes it (so a file and the same pixels as an array give the same input); grey to colour
  repeats the grey value in R, G and B.
- *Size*: an image that is not the model's ``H x W`` is scaled (bilinear, antialiased) to the smallest size with
  its own aspect ratio that covers ``H x W``, then centre-cropped to it: the same geometry that folder datasets
  get for training with ``--image-size``. With ``resize=False`` such an image is refused instead, in one line
  naming it and both sizes.
- *Arrays* must be ``uint8`` pixel values 0..255, ``[N, C, H, W]`` or ``[N, H, W, C]`` (told apart by where a
  channel axis of 1 or 3 is; ``layout=`` says it outright) or ``[N, H, W]`` grey.
- *Limits*: an image of more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`, or
  ``$DSH_MAX_PIXELS``) is refused from its header, before it is decoded, so a decompression bomb costs nothing.

Decoding many files runs in worker processes; each decodes a chunk into one stacked array, so only a few large
arrays cross process boundaries.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import io
import math
import multiprocessing
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ..errors import DataError, InputError, one_line
from .cpu import usable_cpus

# Lower-case suffixes treated as images (those of torchvision's ImageFolder, and GIF).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# What shows through transparent pixels: white, as most photo viewers and web pages show them.
BACKGROUND = (255, 255, 255)

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # orientations that turn the stored image by 90 degrees (with or without a mirroring)

# 50 megapixels: a 8,000 x 6,000 photo passes; decoded as RGB it is 150 MB, so a few workers at once stay bounded.
DEFAULT_MAX_PIXELS = 50_000_000

# Below this many files, starting worker processes costs more than it saves.
_MIN_FILES_PER_WORKER = 256


def max_pixels_setting(max_pixels: int | None = None) -> int:
    """The pixel limit in force: the argument, else ``$DSH_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    if max_pixels is not None:
        value, source = max_pixels, "max_pixels"
    elif os.environ.get("DSH_MAX_PIXELS"):
        value, source = os.environ["DSH_MAX_PIXELS"], "DSH_MAX_PIXELS"
    else:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{source} must be a whole number of pixels, got {value!r}") from None
    if value < 1:
        raise InputError(f"{source} must be >= 1, got {value}")
    return value


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


def channel_mode(channels: int) -> str:
    """PIL mode for a channel count: 1 -> ``"L"``, 3 -> ``"RGB"``."""
    if channels not in (1, 3):
        raise DataError(f"images can be decoded to 1 (grey) or 3 (RGB) channels, not {channels}")
    return "L" if channels == 1 else "RGB"


def _name_of(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _fit(im: Image.Image, size: tuple[int, int] | None, mode: str, name: str, resize: bool) -> Image.Image:
    """``im`` in ``mode`` at ``size`` (cover, then centre-crop), or refused when ``resize`` is off."""
    if size is not None and (im.height, im.width) != size:
        if not resize:
            raise InputError(f"image {name} is {im.width}x{im.height} pixels but the model takes "
                             f"{size[1]}x{size[0]} (width x height); allow resizing (--resize) to use it")
        ch, cw = cover_size(im.height, im.width, size)
        im = im.convert(mode).resize((cw, ch), Image.BILINEAR)
        top, left = (ch - size[0]) // 2, (cw - size[1]) // 2
        return im.crop((left, top, left + size[1], top + size[0]))
    return im.convert(mode) if im.mode != mode else im


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: show the image as stored, as viewers do
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _draft(im: Image.Image, size: tuple[int, int] | None, mode: str, resize: bool, orientation: int) -> None:
    """Let libjpeg decode a JPEG at a reduced scale, never below what covering ``size`` needs once upright."""
    if im.format != "JPEG" or size is None or not resize:
        return
    swap = orientation in _SWAPS_AXES
    h, w = (im.width, im.height) if swap else (im.height, im.width)  # as shown
    if (h, w) == size:
        return
    ch, cw = cover_size(h, w, size)
    im.draft(mode, (ch, cw) if swap else (cw, ch))  # (width, height) as stored


@functools.lru_cache(maxsize=32)
def _transform_to_srgb(icc: bytes, mode: str):
    """The lcms transform from the embedded profile ``icc`` to sRGB for ``mode`` pixels, or ``None`` where none is
    needed or possible: a profile that says it is sRGB (most cameras embed one; converting would only add
    rounding), one of another colour space than the pixels, or one lcms cannot read (viewers ignore those too).
    Cached: a folder of photos from one camera shares one profile."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space.strip() != ("RGB" if mode == "RGB" else "CMYK"):
            return None
        if "srgb" in (src.profile.profile_description or "").lower():
            return None
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        return ImageCms.buildTransform(src, srgb, mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return None


def _to_srgb(im: Image.Image) -> Image.Image:
    """RGB or CMYK pixels with an embedded ICC profile, converted to sRGB (``RGB``); else ``im`` as it is."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "CMYK"):
        return im
    transform = _transform_to_srgb(bytes(icc), im.mode)
    if transform is None:
        return im
    try:
        return ImageCms.applyTransform(im, transform)
    except (ImageCms.PyCMSError, ValueError):
        return im


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def as_displayed(im: Image.Image) -> Image.Image:
    """A decoded image as a photo viewer shows it (the module docstring's first point), as ``L`` (grey sources) or
    ``RGB``: upright, 8 bits, sRGB, transparency over :data:`BACKGROUND`. ``im`` is not changed."""
    orientation = _orientation(im)
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's own conversion clips these to 255 instead of scaling them: a 16-bit grey photo would come out white
        a = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        im = Image.fromarray(((a + 128) // 257).astype(np.uint8))  # 65535 -> 255, 257 * v -> v
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8))
    elif im.mode == "1":
        im = im.convert("L")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        if im.mode == "RGBA" and im.info.get("icc_profile"):
            rgb = im.convert("RGB")
            rgb.info["icc_profile"] = im.info["icc_profile"]
            rgba = Image.merge("RGBA", (*_to_srgb(rgb).split(), rgba.getchannel("A")))
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    im = _to_srgb(im)
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, P without transparency
    return im


def _unreadable_kind(source: Any) -> str | None:
    """For a file PIL cannot identify: ``"a HEIC or HEIF image"`` or ``"an SVG drawing"`` where its first bytes say
    so, else ``None``."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            head = bytes(source[:512])
        else:
            with open(source, "rb") as f:
                head = f.read(512)
    except OSError:
        return None
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                                               b"msf1", b"avci"):
        return "a HEIC or HEIF image"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in head.lower():
        return "an SVG drawing"
    return None


def decode_image(source: Any, size: tuple[int, int] | None, mode: str, *, resize: bool = True,
                 max_pixels: int | None = None) -> np.ndarray:
    """One image (a path, encoded bytes, or a ``PIL.Image``) -> ``uint8[H, W, C]`` under the input policy.

    Raises :class:`DataError` naming the image if it is missing or cannot be decoded, and :class:`InputError` if it
    is over the pixel limit or (with ``resize=False``) not ``size``.
    """
    name = _name_of(source)
    limit = max_pixels_setting(max_pixels)
    try:
        if isinstance(source, Image.Image):
            im, close = source, False
        elif isinstance(source, (bytes, bytearray, memoryview)):
            im, close = Image.open(io.BytesIO(bytes(source))), True
        elif isinstance(source, (str, os.PathLike)):
            im, close = Image.open(source), True
        else:
            raise InputError(f"cannot read an image from a {type(source).__name__} (give a path, bytes, a PIL "
                             f"image or a uint8 array)")
        try:
            if im.width * im.height > limit:
                raise InputError(f"image {name} is {im.width}x{im.height} = {im.width * im.height:,} pixels, over "
                                 f"the limit of {limit:,} (DSH_MAX_PIXELS)")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                _draft(im, size, mode, resize, _orientation(im))
                shown = as_displayed(im)  # decodes here
                a = np.asarray(_fit(shown, size, mode, name, resize), dtype=np.uint8)
        finally:
            if close:
                im.close()
    except (InputError, DataError):
        raise
    except Image.DecompressionBombError as e:  # PIL's own guard, at open, for images far past any sane size
        raise InputError(f"image {name} is over the limit of {limit:,} pixels (DSH_MAX_PIXELS): {one_line(e, 80)}"
                         ) from None
    except FileNotFoundError:
        raise DataError(f"no such image file {name}") from None
    except IsADirectoryError:
        raise DataError(f"{name} is a folder, not an image file") from None
    except UnidentifiedImageError:
        kind = _unreadable_kind(source)
        if kind:
            raise DataError(f"cannot decode image {name}: it is {kind}, which dsh does not read; convert it to JPEG "
                            f"or PNG") from None
        raise DataError(f"cannot decode image {name}: not an image format dsh reads (JPEG, PNG, WebP, TIFF, GIF, "
                        f"BMP, ...)") from None
    except Exception as e:  # PIL raises many types for bad files: name the file, keep one line
        why = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", one_line(e))  # no memory address
        raise DataError(f"cannot decode image {name}: {why}") from None
    return a[:, :, None] if a.ndim == 2 else a


def _size_error(path: str, shape: tuple, ref_path: str, ref_shape: tuple) -> DataError:
    return DataError(
        f"image {path} is {shape[1]}x{shape[0]} but {ref_path} is {ref_shape[1]}x{ref_shape[0]} (width x height); "
        f"images of different sizes need an image size to resize them to (--image-size)"
    )


def decode_chunk(sources: Sequence[Any], size: tuple[int, int] | None, mode: str, resize: bool = True,
                 max_pixels: int | None = None) -> np.ndarray:
    """Images -> ``uint8[n, H, W, C]``; they must decode to one shape (always so when ``size`` is given)."""
    out = None
    for i, s in enumerate(sources):
        a = decode_image(s, size, mode, resize=resize, max_pixels=max_pixels)
        if out is None:
            out = np.empty((len(sources),) + a.shape, dtype=np.uint8)
        elif a.shape != out.shape[1:]:
            raise _size_error(_name_of(s), a.shape, _name_of(sources[0]), out.shape[1:])
        out[i] = a
    return out


def default_workers() -> int:
    return max(1, min(8, usable_cpus()))


def pool_context():
    """fork starts workers in milliseconds and they need nothing but PIL and numpy; elsewhere the default."""
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


def decode_files(
    paths: Sequence[str | os.PathLike],
    image_size: int | tuple[int, int] | None = None,
    mode: str = "RGB",
    workers: int | None = None,
    *,
    resize: bool = True,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode ``paths`` -> ``uint8[N, C, H, W]`` (``mode`` ``"RGB"``: C = 3, ``"L"``: C = 1).

    ``workers``: processes to decode with (``None``: the usable CPUs, at most 8; 0 or 1: this process).
    Errors (naming the file): a missing or undecodable file; sizes that differ when no ``image_size`` is given.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataError("no image files to decode")
    size = as_size(image_size)
    limit = max_pixels_setting(max_pixels)  # resolved here, so workers need not read the environment
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(paths) // _MIN_FILES_PER_WORKER))
    if workers == 1:
        chunks = [decode_chunk(paths, size, mode, resize, limit)]
        bounds = [0]
    else:
        # a few chunks per worker balance the load; each result is one array of a few MB
        per = max(64, math.ceil(len(paths) / (workers * 4)))
        bounds = list(range(0, len(paths), per))
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=pool_context()) as pool:
            futures = [pool.submit(decode_chunk, paths[b : b + per], size, mode, resize, limit) for b in bounds]
            try:
                chunks = [f.result() for f in futures]  # re-raises a worker's DataError as is
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # don't decode the rest of a set that failed
                raise
    ref = chunks[0].shape[1:]
    out = np.empty((len(paths), ref[2], ref[0], ref[1]), dtype=np.uint8)  # (N, C, H, W)
    for b, chunk in zip(bounds, chunks):
        if chunk.shape[1:] != ref:
            raise _size_error(paths[b], chunk.shape[1:], paths[0], ref)
        out[b : b + chunk.shape[0]] = chunk.transpose(0, 3, 1, 2)
    return out


# ----------------------------------------------------------------------------------------------------- folders


def walk_images(d: str, rel: str, out: list[tuple[str, int, int]]) -> None:
    """Append ``(path relative to the root, size, mtime_ns)`` for every image under folder ``d`` (itself at
    ``rel``, posix style, "" for the root), recursively, in sorted order; hidden entries are skipped."""
    for e in sorted(os.scandir(d), key=lambda e: e.name):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            walk_images(e.path, f"{rel}{e.name}/", out)
        elif e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file():
            st = e.stat()
            out.append((rel + e.name, st.st_size, st.st_mtime_ns))


def subfolders(d: str | os.PathLike) -> list[str]:
    """Sorted names of the visible sub-folders of ``d``."""
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))


class ImageList:
    """The image files under a folder, listed (nothing decoded): what a folder encode or index works through.

    ``files``: paths relative to ``root``, posix style, sorted; ``labels``: ``int64[N]``, the id in
    ``class_names`` of the first folder level (``root/<name>/...``), -1 for images outside any known class folder;
    ``stats``: ``(size in bytes, mtime in ns)`` per file.
    """

    def __init__(self, root: str | os.PathLike, class_names: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"no such folder {self.root}")
        found: list[tuple[str, int, int]] = []
        walk_images(str(self.root), "", found)
        if not found:
            raise DataError(f"no images in {self.root} ({', '.join(IMAGE_EXTENSIONS)})")
        self.files = [f for f, _, _ in found]
        self.stats = [(s, m) for _, s, m in found]
        self.class_names = list(class_names) if class_names else subfolders(self.root)
        ids = {n: i for i, n in enumerate(self.class_names)}
        self.labels = np.asarray([ids.get(r.split("/")[0], -1) if "/" in r else -1 for r in self.files],
                                 dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def slice(self, start: int, stop: int) -> "ImageList":
        """The files ``[start, stop)`` of this listing (same root and class names), without listing again."""
        part = object.__new__(ImageList)
        part.root, part.class_names = self.root, self.class_names
        part.files, part.stats = self.files[start:stop], self.stats[start:stop]
        part.labels = self.labels[start:stop]
        return part

    def full_paths(self, start: int = 0, stop: int | None = None) -> list[str]:
        root = str(self.root)
        return [os.path.join(root, f) for f in self.files[start:stop]]

    def fingerprint(self) -> str:
        """A digest of every file's name, size and modification time (changes when the folder does)."""
        return files_fingerprint(self.class_names, self.files, self.stats)


def files_fingerprint(class_names: Sequence[str], files: Sequence[str], stats: Sequence[tuple[int, int]]) -> str:
    """A digest of the class names and of every file's name, size and modification time."""
    import hashlib

    h = hashlib.sha256("\n".join(class_names).encode())
    for f, (size, mtime) in zip(files, stats):
        h.update(f"\0{f}\0{size}\0{mtime}".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ input policy


def _luma(rgb: np.ndarray, axis: int) -> np.ndarray:
    """uint8 RGB -> uint8 grey along ``axis``, bit-exact with PIL's ``convert("L")`` (ITU-R 601-2 in 16-bit fixed
    point, rounded)."""
    r, g, b = (np.take(rgb, i, axis=axis).astype(np.uint32) for i in range(3))
    return np.expand_dims(((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8), axis)


def _array_layout(a: np.ndarray, layout: str) -> str:
    if layout in ("NCHW", "NHWC"):
        return layout
    if layout != "auto":
        raise InputError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}")
    first, last = a.shape[1] in (1, 3), a.shape[3] in (1, 3)
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    if first and last:
        return "NCHW"  # tiny images (e.g. 3x3): ambiguous, and NCHW is what dsh itself produces
    raise InputError(f"images of shape {list(a.shape)} have no channel axis of 1 or 3 (expected [N, C, H, W] or "
                     f"[N, H, W, C] with C = 1 or 3)")


def array_to_model_input(a: np.ndarray, input_shape: tuple[int, int, int], *, resize: bool = True,
                         layout: str = "auto") -> np.ndarray:
    """A ``uint8`` array ``[N, C, H, W]``, ``[N, H, W, C]`` or ``[N, H, W]`` -> ``uint8[N, C', H', W']`` for a model
    of ``input_shape = (C', H', W')``, under the input policy of this module."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 pixel values 0..255, got dtype {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise InputError(f"image arrays must be [N, C, H, W], [N, H, W, C] or [N, H, W], got shape {list(a.shape)}")
    if _array_layout(a, layout) == "NHWC":
        a = a.transpose(0, 3, 1, 2)
    c, h, w = (int(v) for v in input_shape)
    if a.shape[1] not in (1, 3):
        raise InputError(f"images have {a.shape[1]} channels; dsh reads 1 (grey) or 3 (RGB)")
    if a.shape[1] == 3 and c == 1:
        a = _luma(a, axis=1)
    elif a.shape[1] == 1 and c == 3:
        a = np.repeat(a, 3, axis=1)
    if a.shape[2:] != (h, w):
        if not resize:
            raise InputError(f"images are {a.shape[3]}x{a.shape[2]} pixels but the model takes {w}x{h} "
                             f"(width x height); allow resizing (--resize) to use them")
        mode = channel_mode(c)
        hwc = a.transpose(0, 2, 3, 1)
        frames = [Image.fromarray(img[:, :, 0] if c == 1 else img, mode) for img in hwc]
        a = decode_chunk(frames, (h, w), mode).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(a)


def to_model_input(
    images: Any,
    input_shape: tuple[int, int, int],
    *,
    resize: bool = True,
    layout: str = "auto",
    workers: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Anything image-like -> ``uint8[N, C, H, W]`` for a model of ``input_shape = (C, H, W)``.

    ``images``: a uint8 array (or anything ``np.asarray`` turns into one, such as a torch tensor); or one image or
    a list of images, each a file path, encoded bytes (an upload) or a ``PIL.Image``. Many files decode in
    ``workers`` processes. The policy (channels, size, limits) is the module docstring's.
    """
    c, h, w = (int(v) for v in input_shape)
    mode = channel_mode(c)
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images given")
        if all(isinstance(s, (str, os.PathLike)) for s in images):
            return decode_files(images, (h, w), mode, workers, resize=resize, max_pixels=max_pixels)
        return np.ascontiguousarray(decode_chunk(images, (h, w), mode, resize, max_pixels).transpose(0, 3, 1, 2))
    if hasattr(images, "__array__") or isinstance(images, np.ndarray):
        return array_to_model_input(np.asarray(images), (c, h, w), resize=resize, layout=layout)
    raise InputError(f"cannot read images from a {type(images).__name__} (give paths, bytes, PIL images or a "
                     f"uint8 array)")


def iter_chunks(items: Sequence[Any], size: int) -> Iterable[tuple[int, Sequence[Any]]]:
    """``(start, items[start:start + size])`` over ``items``."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]

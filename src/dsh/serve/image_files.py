"""Which files the service may send as an item's picture.

An index file is something people share, and its catalog names a path per item: the service opens such a path only
if, with every symlink resolved, it lies under one of the image roots the operator allows (the folder the index
records it was built from, and any given explicitly), and only if its first bytes say it is an image of a kind a
browser shows. Anything else is answered as a missing image, so a crafted catalog learns nothing about the server's
files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger("dsh.serve")

# PIL's format name -> the media type the answer carries (taken from the file's content, never its name)
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp",
               "TIFF": "image/tiff", "PPM": "image/x-portable-anymap"}


def recorded_image_root(metadata: dict) -> str | None:
    """The folder an index records its images under (``metadata["image_root"]``, written by
    :func:`dsh.runtime.searcher.index_folder` and :func:`~dsh.runtime.searcher.index_codes`), if any."""
    root = metadata.get("image_root")
    return root if isinstance(root, str) and root else None


class ImageFiles:
    """The image files under ``roots`` (folders; ones that do not exist are left out, with a warning)."""

    def __init__(self, roots: list[str | os.PathLike]) -> None:
        self.roots: list[Path] = []
        for root in roots:
            path = Path(root).expanduser()
            if path.is_dir():
                resolved = path.resolve()
                if resolved not in self.roots:
                    self.roots.append(resolved)
            else:
                log.warning("image root %s is not a folder: item images there are not served", root)

    def find(self, path: str | os.PathLike | None) -> tuple[Path, str] | None:
        """``(the resolved file, its media type)`` where ``path`` may be served, else ``None``."""
        if not path or not self.roots:
            return None
        try:
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
            return None
        if not resolved.is_file() or not any(resolved.is_relative_to(root) for root in self.roots):
            return None
        try:
            with Image.open(resolved) as im:  # reads the header only
                media_type = MEDIA_TYPES.get(im.format or "")
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            return None
        return (resolved, media_type) if media_type else None


# the file name ending an uploaded image is kept under, by its content
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
            "PPM": ".ppm"}


def image_suffix(data: bytes) -> str:
    """The file name ending for an image's bytes, by what its header says it is (``.img`` where a browser would
    not show it: such a file is kept, never served)."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return SUFFIXES.get(im.format or "", ".img")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return ".img"

"""Encode an image folder of any size into a code file, in bounded memory, resumable after an interruption.

:func:`encode_folder` lists the folder (nothing decoded), then encodes it part by part (``part_size`` images) with
:meth:`dsh.runtime.encoder.Encoder.iter_encode_files`. Each finished part is written at once to ``OUT.parts/``, so an
interrupted encode loses at most the part in progress and ``resume=True`` continues from the parts on disk. At the
end the parts are streamed into the ``.npz`` code file and the folder is removed (both: docs/FORMATS.md).
Memory holds the list of files, one part's codes and the decoded images in flight, never the whole collection.
No torch here (an ONNX encoder encodes a folder without it).
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codes.bits import nbytes_for
from ..errors import DataError, InputError
from ..utils.fileio import atomic_write, write_json
from ..utils.imageio import ImageList

PARTS_FORMAT = "dsh-encode-parts"
DEFAULT_PART_SIZE = 8192


@dataclass
class FolderEncoding:
    out: Path
    count: int  # images encoded into the file
    nbits: int
    resumed_parts: int  # parts found done on disk and not encoded again
    seconds: float


def parts_dir(out: str | Path) -> Path:
    """Where an encode into ``out`` keeps its finished parts until it completes."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _manifest(listing: ImageList, encoder, keep_u: bool, part_size: int) -> dict:
    return {"format": PARTS_FORMAT, "version": 1, "folder": str(listing.root.resolve()),
            "files": listing.fingerprint(), "count": len(listing), "part_size": part_size, "keep_u": keep_u,
            "nbits": encoder.nbits, "model": encoder.fingerprint, "resize": encoder.resize}


def _part_path(parts: Path, k: int) -> Path:
    return parts / f"part-{k:06d}.npz"


def _read_part(path: Path, rows: int, nbits: int, keep_u: bool) -> dict[str, np.ndarray] | None:
    """A finished part's arrays, or ``None`` when it is missing or not what this encode would write."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    codes = arrays.get("codes")
    if codes is None or codes.dtype != np.uint8 or codes.shape != (rows, nbytes_for(nbits)):
        return None
    if keep_u and (arrays.get("u") is None or arrays["u"].shape != (rows, nbits)):
        return None
    return arrays


def encode_folder(encoder, folder: str | Path, out: str | Path, *, keep_u: bool = False, resume: bool = False,
                  part_size: int = DEFAULT_PART_SIZE, progress: bool = False,
                  shard: tuple[int, int] | None = None) -> FolderEncoding:
    """Encode every image under ``folder`` (recursively, sorted) into the code file ``out``.

    Labels come from the first folder level, as ids into ``encoder.class_names`` (-1 outside a known class
    folder); ``paths`` are relative to ``folder``; ``keep_u`` also stores ``u``. Without ``resume`` an existing
    ``OUT.parts/`` from an interrupted encode is refused (one line saying to resume or remove it); with it, the
    parts must come from the same files, model and settings.

    ``shard=(rank, world)``: encode only that process's contiguous slice of the sorted files
    (:func:`dsh.codes.shards.shard_bounds`) into :func:`dsh.codes.shards.shard_path` of ``out``; the shards read
    back as one.
    """
    if isinstance(part_size, bool) or int(part_size) != part_size or part_size < 1:
        raise InputError(f"part_size must be a whole number >= 1, got {part_size!r}")
    t0 = time.perf_counter()
    out = Path(out)
    listing = ImageList(folder, encoder.class_names or None)
    if shard is not None:
        from ..codes.shards import shard_bounds, shard_path

        rank, world = shard
        a, b = shard_bounds(len(listing), rank, world)
        if a == b:
            raise DataError(f"{folder}: {len(listing)} images are too few for {world} shards")
        listing = listing.slice(a, b)
        out = shard_path(out, rank, world)
    manifest = _manifest(listing, encoder, keep_u, int(part_size))
    parts = parts_dir(out)
    manifest_path = parts / "manifest.json"
    if parts.exists():
        if not resume:
            raise DataError(f"{parts}: an interrupted encode into {out} is there; continue it with --resume, or "
                            f"remove that folder to start again")
        try:
            found = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            found = None
        if found != manifest:
            raise DataError(f"{parts}: the interrupted encode there was of other files, another model or other "
                            f"settings; remove that folder to start again")
    else:
        write_json(manifest_path, manifest)

    n, nbits = len(listing), encoder.nbits
    bounds = [(a, min(a + int(part_size), n)) for a in range(0, n, int(part_size))]
    resumed = 0
    for k, (a, b) in enumerate(bounds):
        if resume and _read_part(_part_path(parts, k), b - a, nbits, keep_u) is not None:
            resumed += 1
            continue
        u = np.empty((b - a, nbits), np.float32)
        codes = np.empty((b - a, nbytes_for(nbits)), np.uint8)
        for start, enc in encoder.iter_encode_files(listing.full_paths(a, b), progress=progress):
            u[start : start + len(enc.u)], codes[start : start + len(enc.codes)] = enc.u, enc.codes
        with atomic_write(_part_path(parts, k)) as f:
            np.savez(f, codes=codes, **({"u": u} if keep_u else {}))

    _assemble(out, parts, bounds, listing, nbits, keep_u)
    shutil.rmtree(parts, ignore_errors=True)
    return FolderEncoding(out, n, nbits, resumed, time.perf_counter() - t0)


def _assemble(out: Path, parts: Path, bounds, listing: ImageList, nbits: int, keep_u: bool) -> None:
    """Stream the parts into one ``.npz`` (stored, not compressed, as ``np.savez`` writes it), atomically."""
    n = len(listing)

    def from_parts(name: str):
        for k, (a, b) in enumerate(bounds):
            arrays = _read_part(_part_path(parts, k), b - a, nbits, keep_u)
            if arrays is None:
                raise DataError(f"{_part_path(parts, k)}: a finished part is missing or damaged; encode again "
                                f"with --resume")
            yield arrays[name]

    longest = max(len(f) for f in listing.files)
    path_chunks = (np.asarray(listing.files[a : a + 65536], dtype=f"<U{longest}") for a in range(0, n, 65536))
    with atomic_write(out) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_member(zf, "nbits", np.dtype(np.int64), (), [np.asarray(nbits, np.int64)])
        _write_member(zf, "codes", np.dtype(np.uint8), (n, nbytes_for(nbits)), from_parts("codes"))
        if keep_u:
            _write_member(zf, "u", np.dtype(np.float32), (n, nbits), from_parts("u"))
        _write_member(zf, "labels", np.dtype(np.int64), (n,), [listing.labels])
        _write_member(zf, "paths", np.dtype(f"<U{longest}"), (n,), path_chunks)
        names = np.asarray(listing.class_names, dtype=str)
        _write_member(zf, "class_names", names.dtype, names.shape, [names])


def _write_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple, chunks) -> None:
    """One ``name.npy`` member of ``shape``/``dtype`` whose rows arrive in ``chunks`` (C order)."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_2_0(
            member, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        written = 0
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            member.write(chunk.tobytes())
            written += chunk.size
        expected = int(np.prod(shape, dtype=np.int64))
        if written != expected:  # a bug, not the user's input
            raise AssertionError(f"{name}: wrote {written} values, the header says {expected}")

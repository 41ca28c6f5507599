"""Backbone features computed once and kept on disk: what training a hash head on a frozen backbone reads.

:func:`cached_features` turns ``uint8[N, C, H, W]`` images into the backbone's pooled features ``float32[N, F]``.
They are cached under ``CACHE/features/KEY/``, where KEY is a digest of the backbone (architecture, input size and
every weight), the normaliser and the images' bytes: another code length, loss or head reuses them, another
backbone or image set never does. The features are written in parts of :data:`PART_SIZE` images, each part a file of
its own written atomically, so an interrupted extraction resumes at the first missing part.

A part file holds the features, the key, its first row and a sha256 of the features; a part that is damaged or was
made for another key is refused in one line naming the file (delete it, and it is computed again).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DataError, one_line
from ..models.checkpoint import weights_fingerprint
from ..models.pretrained import PretrainedHashNet
from ..utils.fileio import atomic_write

PART_SIZE = 2048  # images per part file: ~10 MB of features at 1280-d, a few seconds of extraction on 2 cores
BATCH = 64  # images per forward pass


def feature_key(model: PretrainedHashNet, normalizer, images: torch.Tensor) -> str:
    """Hex digest naming the features of ``images`` under ``model``'s backbone and ``normalizer``."""
    h = hashlib.sha256()
    backbone = {"arch": model.arch, "input_size": model.input_size}
    h.update(weights_fingerprint(model.backbone.state_dict(), normalizer.to_dict(), backbone).encode())
    h.update(json.dumps({"shape": list(images.shape), "dtype": str(images.dtype)}).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def _part_path(folder: Path, start: int) -> Path:
    return folder / f"part-{start // PART_SIZE:05d}.npz"


def _read_part(path: Path, key: str, start: int, rows: int, width: int) -> np.ndarray:
    refuse = f"feature cache file {path} is damaged or belongs to another backbone or image set; delete it"
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, stored_key, stored_start, digest = z["features"], str(z["key"]), int(z["start"]), str(z["sha256"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{refuse} ({type(e).__name__}: {one_line(e, 80)})") from None
    if stored_key != key or stored_start != start or feats.dtype != np.float32 or feats.shape != (rows, width):
        raise DataError(refuse)
    if hashlib.sha256(feats.tobytes()).hexdigest() != digest:
        raise DataError(refuse)
    return feats


def _write_part(path: Path, key: str, start: int, feats: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.savez(f, features=feats, key=np.array(key), start=np.array(start),
                 sha256=np.array(hashlib.sha256(feats.tobytes()).hexdigest()))


@torch.no_grad()
def extract_features(model: PretrainedHashNet, images: torch.Tensor, normalizer, device: torch.device,
                     batch_size: int = BATCH, channels_last: bool = True) -> np.ndarray:
    """``uint8[N, C, H, W]`` -> ``float32[N, F]``: the backbone's pooled features, in eval mode."""
    was_training = model.training
    model.eval()
    out = np.empty((images.shape[0], model.num_features), np.float32)
    try:
        for a in range(0, images.shape[0], batch_size):
            x = normalizer(images[a:a + batch_size].to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[a:a + x.shape[0]] = model.features(x).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def cached_features(model: PretrainedHashNet, images: torch.Tensor, normalizer, *, cache: str | os.PathLike | None,
                    device: torch.device, channels_last: bool = True,
                    log: Callable[[str], None] = lambda m: None) -> torch.Tensor:
    """The backbone features ``float32[N, F]`` of ``uint8[N, C, H, W]`` ``images``, from the cache under ``cache``
    where they are there, else computed and written there part by part (``cache=None``: computed, not kept)."""
    n, width = int(images.shape[0]), model.num_features
    if cache is None:
        return torch.from_numpy(extract_features(model, images, normalizer, device, channels_last=channels_last))
    key = feature_key(model, normalizer, images)
    folder = Path(cache) / "features" / key[:32]
    parts, computed = [], 0
    for start in range(0, n, PART_SIZE):
        rows = min(PART_SIZE, n - start)
        path = _part_path(folder, start)
        if path.exists():
            parts.append(_read_part(path, key, start, rows, width))
            continue
        feats = extract_features(model, images[start:start + rows], normalizer, device, channels_last=channels_last)
        _write_part(path, key, start, feats)
        parts.append(feats)
        computed += rows
    if computed:
        log(f"backbone features of {computed:,} images computed and cached in {folder}")
    return torch.from_numpy(np.concatenate(parts) if parts else np.empty((0, width), np.float32))

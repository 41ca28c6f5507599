"""Checkpoints that load with nothing else: the model's name and arguments, the config, the normaliser.

A run folder holds ``last.pt`` (written every epoch, used by ``--resume``), ``best.pt`` (the epoch with the best
validation mAP, used by ``encode``/``search``), ``config.json`` and TensorBoard's ``tb/``. Files are written to a
temporary name and renamed, so an interrupted write never replaces a good checkpoint with a broken one.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fileio import DataError, atomic_write, one_line
from .models import create_model

FORMAT = "dsh-checkpoint"
VERSION = 1
BEST = "best.pt"
LAST = "last.pt"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (see :func:`make_payload`) atomically."""
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, f)


def resolve_checkpoint_path(run_or_file: str | os.PathLike, which: str = BEST) -> Path:
    """A run folder -> its ``best.pt`` (or ``last.pt``); a file -> itself. Errors name what is missing."""
    p = Path(run_or_file)
    if p.is_dir():
        candidate = p / which
        if not candidate.is_file():
            other = p / (LAST if which == BEST else BEST)
            if other.is_file():
                return other
            raise DataError(f"{p}: no checkpoint in this run folder (expected {which} or {other.name})")
        return candidate
    if not p.exists():
        raise DataError(f"{p}: no such run folder or checkpoint file")
    return p


def read_checkpoint(run_or_file: str | os.PathLike, which: str = BEST) -> tuple[Path, dict[str, Any]]:
    path = resolve_checkpoint_path(run_or_file, which)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable checkpoint ({one_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path}: not a dsh checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise DataError(f"{path}: checkpoint format version {ckpt['version']} is newer than this dsh ({VERSION})")
    for key in ("model_config", "nbits", "state_dict", "normalizer", "input_shape"):
        if key not in ckpt:
            raise DataError(f"{path}: checkpoint lacks '{key}'")
    return path, ckpt


@dataclass
class LoadedModel:
    """A model ready for encoding, with what is needed to feed it."""

    model: torch.nn.Module
    nbits: int
    normalizer: Any  # dsh.data.Normalizer
    input_shape: tuple[int, int, int]  # (C, H, W) the model was trained on
    class_names: list[str]
    config: dict[str, Any]
    path: Path
    epoch: int


def build_model(ckpt: dict[str, Any]) -> torch.nn.Module:
    """The architecture a checkpoint was trained with (``model.config`` of :func:`dsh.models.create_model`)."""
    return create_model(**ckpt["model_config"])


def load_model(run_or_file: str | os.PathLike, which: str = BEST) -> LoadedModel:
    """Rebuild the model of a checkpoint in eval mode on the CPU; a mismatched state raises :class:`DataError`."""
    from .data import Normalizer

    path, ckpt = read_checkpoint(run_or_file, which)
    try:
        model = build_model(ckpt)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: cannot rebuild model ({e})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        name = ckpt["model_config"].get("name")
        raise DataError(f"{path}: weights do not match model '{name}' ({one_line(e)})") from None
    model.eval()
    return LoadedModel(
        model=model,
        nbits=int(ckpt["nbits"]),
        normalizer=Normalizer.from_dict(ckpt["normalizer"]),
        input_shape=tuple(int(v) for v in ckpt["input_shape"]),
        class_names=list(ckpt.get("class_names") or []),
        config=dict(ckpt.get("config") or {}),
        path=path,
        epoch=int(ckpt.get("epoch", -1)),
    )

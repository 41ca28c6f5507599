"""Checkpoints that load with nothing else: the model's name and arguments, the config, the normaliser.

Written atomically by ``dsh train`` as ``RUN/last.pt`` and ``RUN/best.pt``; read without running code
(``weights_only``) and checked against the sha256 of their content (:func:`content_digest`) before the model is
built. What a checkpoint holds: docs/FORMATS.md ("Checkpoints").
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, ModelFileError, one_line
from ..utils.fileio import atomic_write
from .modelinfo import ModelInfo
from .registry import create_model

FORMAT = "dsh-checkpoint"
VERSION = 1
BEST = "best.pt"
LAST = "last.pt"


DIGEST = "digest"


def content_digest(obj: Any) -> str:
    """sha256 (hex) of a checkpoint's content: tensors by dtype, shape and raw bytes; dicts in key order (by repr),
    lists and tuples in order; plain values by type and repr. Equal content, equal digest, however it was saved."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{list(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}\0".encode())
        for k in sorted(obj, key=repr):
            h.update(f"K{type(k).__name__}:{k!r}\0".encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}\0".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}\0".encode())


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (see :func:`make_payload`) atomically, with its :func:`content_digest`."""
    content = {"format": FORMAT, "version": VERSION, **{k: v for k, v in payload.items() if k != DIGEST}}
    with atomic_write(path) as f:
        torch.save({**content, DIGEST: content_digest(content)}, f)


def verify_digest(path: Path, ckpt: dict[str, Any]) -> None:
    """Raise :class:`ModelFileError` where the checkpoint's content is not what its digest says (damaged or
    altered); a checkpoint without a digest (written before there was one) passes."""
    if DIGEST not in ckpt:
        return
    want = ckpt[DIGEST]
    if not isinstance(want, str) or content_digest({k: v for k, v in ckpt.items() if k != DIGEST}) != want:
        raise ModelFileError(f"{path}: checksum mismatch: the checkpoint is damaged or was altered")


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


def read_checkpoint(run_or_file: str | os.PathLike, which: str = BEST, verify: bool = True
                    ) -> tuple[Path, dict[str, Any]]:
    """Load a checkpoint's contents without ever running code from it (and, with ``verify``, check its digest).

    ``torch.load(weights_only=True)`` unpickles only tensors and plain data (dicts, lists, strings, numbers), which
    is all a dsh checkpoint holds; a file whose pickle asks for anything else (a class, a function: the way a
    crafted file runs code) is refused with a one-line :class:`ModelFileError` and nothing of it is executed.
    """
    path = resolve_checkpoint_path(run_or_file, which)
    try:
        with warnings.catch_warnings():  # a damaged file makes torch warn (an odd pickle protocol): the error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only's refusal: the pickle wants a global that is not plain data
        raise ModelFileError(f"{path}: refused: the file holds Python objects other than tensors and plain data, "
                             f"and loading them could run code ({one_line(e, 120)})") from None
    except MemoryError:
        raise ModelFileError(f"{path}: not a readable checkpoint (it asks for more memory than there is)") from None
    except Exception as e:  # torch's zip and pickle readers raise many kinds for a damaged file: all its fault
        raise ModelFileError(f"{path}: not a readable checkpoint ({one_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a dsh checkpoint")
    if not isinstance(ckpt.get("version", 0), int) or ckpt.get("version", 0) > VERSION:
        raise ModelFileError(f"{path}: checkpoint format version {ckpt.get('version')!r} is not one this dsh reads "
                             f"(up to {VERSION})")
    for key in ("model_config", "nbits", "state_dict", "normalizer", "input_shape"):
        if key not in ckpt:
            raise ModelFileError(f"{path}: checkpoint lacks '{key}'")
    if verify:
        verify_digest(path, ckpt)
    return path, ckpt


def weights_fingerprint(state_dict: dict[str, torch.Tensor], normalizer: dict, model_config: dict) -> str:
    """sha256 (hex) of an architecture, its weights and its normaliser: equal fingerprints make equal codes.

    Tensors are hashed by name, dtype, shape and raw bytes, in sorted name order, so the digest does not depend on
    how the state_dict was saved or loaded (checkpoint, safetensors) or on its memory layout.
    """
    h = hashlib.sha256(json.dumps({"model_config": model_config, "normalizer": normalizer}, sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A model ready for encoding, with what is needed to feed it."""

    model: torch.nn.Module
    nbits: int
    normalizer: Any  # dsh.models.Normalizer
    input_shape: tuple[int, int, int]  # (C, H, W) the model was trained on
    class_names: list[str]
    config: dict[str, Any]
    path: Path
    epoch: int

    def info(self) -> ModelInfo:
        """The model's description, as exported model files carry it (fingerprint included)."""
        return ModelInfo(
            nbits=self.nbits,
            input_shape=tuple(self.input_shape),
            class_names=tuple(self.class_names),
            fingerprint=weights_fingerprint(self.model.state_dict(), self.normalizer.to_dict(), self.model.config),
            model_config=dict(self.model.config),
            normalizer=self.normalizer.to_dict(),
            train_config=dict(self.config),
            epoch=self.epoch + 1,
        )


def build_model(ckpt: dict[str, Any]) -> torch.nn.Module:
    """The architecture a checkpoint was trained with (``model.config`` of :func:`dsh.models.registry.create_model`)."""
    return create_model(**ckpt["model_config"])


def load_model(run_or_file: str | os.PathLike, which: str = BEST) -> LoadedModel:
    """Rebuild the model of a checkpoint in eval mode on the CPU; a checkpoint whose parts do not fit together
    raises a one-line :class:`ModelFileError`."""
    from .normalize import Normalizer

    # the digest is checked before the model is built: damaged settings could ask for a network of any size
    path, ckpt = read_checkpoint(run_or_file, which)
    model_config = ckpt["model_config"]
    if not isinstance(model_config, dict) or not isinstance(model_config.get("name"), str):
        raise ModelFileError(f"{path}: the checkpoint's model_config is not a model description")
    try:
        model = build_model(ckpt)
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: cannot rebuild model ({one_line(e)})") from None
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: the checkpoint's state_dict is not a mapping of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not match model '{model_config['name']}' ({one_line(e)})") from None
    model.eval()
    try:
        loaded = LoadedModel(
            model=model,
            nbits=int(ckpt["nbits"]),
            normalizer=Normalizer.from_dict(ckpt["normalizer"]),
            input_shape=tuple(int(v) for v in ckpt["input_shape"]),
            class_names=[str(c) for c in ckpt.get("class_names") or []],
            config=dict(ckpt.get("config") or {}),
            path=path,
            epoch=int(ckpt.get("epoch", -1)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: malformed checkpoint field ({one_line(e)})") from None
    if len(loaded.input_shape) != 3 or loaded.nbits != model_config.get("nbits"):
        raise ModelFileError(f"{path}: the checkpoint's input_shape {list(loaded.input_shape)} or nbits "
                             f"{loaded.nbits} do not fit its model")
    return loaded

"""What a consumer of a trained model needs besides its weights: code length, input, classes, provenance.

A :class:`ModelInfo` travels inside every file dsh exports (the ONNX metadata, the safetensors header) as one JSON
object, so a model file is usable on its own, without torch and without the run folder it came from. No torch here.
Its keys: docs/FORMATS.md ("Model description").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ModelFileError

FORMAT = "dsh-model"
VERSION = 1
# the metadata key under which the JSON is stored (ONNX metadata_props, safetensors __metadata__)
METADATA_KEY = "dsh"

CODE_CONVENTION = (
    "bit i of a code is 1 where u[:, i] >= 0; codes are packed least significant bit first, bit i in byte i // 8 at "
    "position i % 8 (numpy.packbits(u >= 0, axis=1, bitorder='little')), ceil(nbits / 8) bytes, padding bits 0"
)
INPUT_CONVENTION = {"name": "images", "dtype": "uint8", "layout": "NCHW", "range": "0..255, raw pixels (the "
                    "normaliser is inside the model)"}


@dataclass(frozen=True)
class ModelInfo:
    """The description of a trained hashing model.

    - ``nbits``: code length; the model maps ``uint8[N, C, H, W]`` images to ``u`` ``float32[N, nbits]``;
    - ``input_shape``: ``(C, H, W)`` the model was trained on (see :mod:`dsh.utils.imageio` for what other images get);
    - ``class_names``: the training classes, by class id;
    - ``fingerprint``: sha256 of the architecture, the weights and the normaliser: two files with the same
      fingerprint make the same codes (an ONNX export keeps the fingerprint of the checkpoint it came from);
    - ``model_config``: what :func:`dsh.models.registry.create_model` rebuilds the architecture from;
    - ``normalizer``: ``{"mean": [...], "std": [...]}`` per channel, on the 0..1 scale;
    - ``train_config``: the run's training settings (dataset, protocol, ...), so ``--split`` works from a model
      file too; ``epoch``: the epoch the weights are from (1-based, 0 if unknown);
    - ``tta_flip``: the model's ``u`` is the mean of ``u`` of the image and of its horizontal mirror (flip
      test-time augmentation), folded into the file's graph (an ONNX export with ``tta_flip=True``); a consumer
      runs the graph as is. Its fingerprint is then :func:`tta_flip_fingerprint` of the weights' fingerprint,
      since its codes differ from theirs.
    """

    nbits: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    fingerprint: str
    model_config: dict = field(default_factory=dict)
    normalizer: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    epoch: int = 0
    tta_flip: bool = False

    def to_json(self) -> str:
        from .. import __version__

        body = asdict(self)
        body.update(input_shape=list(self.input_shape), class_names=list(self.class_names))
        return json.dumps({"format": FORMAT, "version": VERSION, "dsh_version": __version__,
                           "input": INPUT_CONVENTION, "output": {"name": "u", "dtype": "float32",
                                                                 "shape": ["N", self.nbits]},
                           "code_convention": CODE_CONVENTION, **body}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None, source: str) -> "ModelInfo":
        """Parse and check the JSON written by :meth:`to_json`; a one-line :class:`ModelFileError` naming
        ``source`` for anything that is not a dsh model description."""
        if text is None:
            raise ModelFileError(f"{source}: not a dsh model (no '{METADATA_KEY}' metadata)")
        try:
            d = json.loads(text)
        except (TypeError, ValueError):
            raise ModelFileError(f"{source}: unreadable dsh metadata (not JSON)") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelFileError(f"{source}: not a dsh model (metadata format is not {FORMAT!r})")
        if not isinstance(d.get("version"), int) or d["version"] > VERSION:
            raise ModelFileError(f"{source}: dsh model format version {d.get('version')!r} is not one this dsh "
                                 f"reads (up to {VERSION})")
        try:
            info = cls(
                nbits=_positive_int(d["nbits"]),
                input_shape=tuple(_positive_int(v) for v in d["input_shape"]),
                class_names=tuple(str(c) for c in d.get("class_names") or ()),
                fingerprint=str(d["fingerprint"]),
                model_config=dict(d.get("model_config") or {}),
                normalizer=dict(d.get("normalizer") or {}),
                train_config=dict(d.get("train_config") or {}),
                epoch=int(d.get("epoch") or 0),
                tta_flip=_bool(d.get("tta_flip", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{source}: malformed dsh metadata ({type(e).__name__}: {e})") from None
        if len(info.input_shape) != 3 or info.input_shape[0] not in (1, 3):
            raise ModelFileError(f"{source}: input_shape {list(info.input_shape)} is not (C, H, W) with C = 1 or 3")
        return info


def tta_flip_fingerprint(fingerprint: str) -> str:
    """The fingerprint of a model's codes under flip test-time augmentation: as a fingerprint, equal for equal
    codes, and different from the weights' own (whose codes differ)."""
    return hashlib.sha256(f"{fingerprint}+tta_flip".encode()).hexdigest()


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected a positive integer, got {v!r}")
    return v

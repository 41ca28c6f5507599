"""Encoding with onnxruntime, no torch: an ONNX model exported by ``dsh export`` -> ``uint8[N, C, H, W] -> u``.

The model takes raw ``uint8`` pixels (its normaliser is folded in) and returns ``u`` ``float32[N, nbits]``; the
:class:`dsh.models.modelinfo.ModelInfo` JSON sits in the ONNX metadata. Loading an ONNX file runs no code of the file's
(it is a protobuf graph of standard operators; onnxruntime runs no custom operator unless one is registered).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, one_line
from ..models.modelinfo import METADATA_KEY, ModelInfo
from ..models.sealing import ONNX_PREFIX, check_seal


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ModelFileError("ONNX models need onnxruntime: pip install 'dsh[onnx]'") from None
    return onnxruntime


def available() -> bool:
    """Whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRuntime:
    """``__call__(x)``: ``uint8[N, C, H, W]`` numpy -> ``float32[N, nbits]`` numpy, on onnxruntime's CPU provider.

    ``model``: a path or the serialised model bytes; ``threads``: onnxruntime's intra-op threads (``None``: its
    default, one per physical core)."""

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None, source: str | None = None):
        ort = _ort()
        self.source = source or (os.fspath(model) if not isinstance(model, bytes) else "<onnx bytes>")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else os.fspath(model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelFileError(f"{self.source}: not a loadable ONNX model ({one_line(e)})") from None
        try:
            inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
            for arg in (*inputs, *outputs):
                arg.name, arg.type, arg.shape  # noqa: B018  (read once: a name that is not UTF-8 fails here)
        except UnicodeDecodeError:
            raise ModelFileError(f"{self.source}: an input or output name that is not UTF-8") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{self.source}: expected one input (images) and one output (u), got "
                                 f"{len(inputs)} and {len(outputs)}")
        self.input, self.output = inputs[0], outputs[0]
        self.nbits: int | None = None  # set by check(): the width every answer must have

    def metadata(self) -> str | None:
        try:
            return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        except UnicodeDecodeError:  # onnxruntime decodes every entry as UTF-8
            raise ModelFileError(f"{self.source}: metadata that is not UTF-8") from None

    def check(self, info: ModelInfo) -> None:
        """The graph must take ``uint8[N, C, H, W]`` of ``info.input_shape`` for any ``N`` and give ``float32[N,
        nbits]``, as declared and as run on a probe batch (a graph may declare one shape and compute another)."""
        shape, want = list(self.input.shape), list(info.input_shape)
        if self.input.type != "tensor(uint8)" or len(shape) != 4 or shape[1:] != want or isinstance(shape[0], int):
            raise ModelFileError(f"{self.source}: its input is {self.input.type} {shape}, but its dsh metadata "
                                 f"says uint8 [N, {', '.join(map(str, want))}]")
        out = list(self.output.shape)
        if self.output.type != "tensor(float)" or len(out) != 2 or out[1] != info.nbits or isinstance(out[0], int):
            raise ModelFileError(f"{self.source}: its output is {self.output.type} {out}, but its dsh metadata says "
                                 f"float [N, {info.nbits}]")
        self.nbits = info.nbits
        self(np.zeros((2, *want), np.uint8))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``uint8[N, C, H, W]`` -> ``float32[N, nbits]``; a graph that answers another shape is refused."""
        try:
            u = self.session.run([self.output.name], {self.input.name: np.ascontiguousarray(x, dtype=np.uint8)})[0]
        except Exception as e:  # onnxruntime's own error types: a graph that cannot run on its declared input
            raise ModelFileError(f"{self.source}: the model fails on a batch of {x.shape} ({one_line(e)})") from None
        if self.nbits is not None and (not isinstance(u, np.ndarray) or u.shape != (x.shape[0], self.nbits)):
            raise ModelFileError(f"{self.source}: the model answered {getattr(u, 'shape', type(u).__name__)} for "
                                 f"{x.shape[0]} images, not [N, {self.nbits}]")
        return np.asarray(u, dtype=np.float32)


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> tuple[OnnxRuntime, ModelInfo]:
    """An ONNX file from ``dsh export`` -> its runtime and :class:`ModelInfo`; one-line errors for a missing file,
    a file that is not ONNX, not a dsh model, damaged (its seal, :mod:`dsh.models.sealing`), or whose graph does
    not match its metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({one_line(e)})") from None
    check_seal(data, ONNX_PREFIX, str(path))  # before onnxruntime parses anything of it
    runtime = OnnxRuntime(data, threads=threads, source=str(path))
    info = ModelInfo.from_json(runtime.metadata(), str(path))
    runtime.check(info)
    return runtime, info

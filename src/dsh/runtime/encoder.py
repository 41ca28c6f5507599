"""The one place that turns images into codes: :class:`Encoder`, used by the command line, the service and users.

>>> enc = Encoder.from_run("runs/mnist8")             # or Encoder.from_file("model.onnx"), no torch needed
>>> u, codes = enc.encode(["a.png", "b.jpg"])         # float32[2, nbits], uint8[2, ceil(nbits / 8)]
>>> enc.nbits, enc.input_shape, enc.class_names

Images may be file paths, encoded bytes, ``PIL.Image`` objects or ``uint8`` arrays; what happens to their channels
and sizes is the input policy of :mod:`dsh.utils.imageio` (resize to the trained size by default; ``resize=False``
refuses other sizes). The network runs on onnxruntime where it is installed (1.4-2.2x torch eager on 2 CPU
cores, benchmarks/speed/encode_throughput.py) and on torch otherwise; ``backend=`` chooses. Importing this module
does not import torch; only a checkpoint or a safetensors file does, when it is loaded.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from ..codes.bits import codes_from_u, nbytes_for
from ..config import trained_with_tta_flip
from ..errors import InputError
from ..models.modelinfo import ModelInfo, tta_flip_fingerprint
from ..utils.imageio import (
    channel_mode,
    decode_chunk,
    default_workers,
    iter_chunks,
    max_pixels_setting,
    pool_context,
    to_model_input,
)

BACKENDS = ("auto", "onnxruntime", "torch")
DEFAULT_BATCH_SIZE = 256


class Encoded(NamedTuple):
    """``u``: ``float32[N, nbits]``, the network's outputs; ``codes``: ``uint8[N, ceil(nbits / 8)]``, packed."""

    u: np.ndarray
    codes: np.ndarray


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _positive(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


class Encoder:
    """A trained hashing model, ready to encode images.

    Build it with :meth:`from_run` or :meth:`from_file`. ``resize``: scale images of another size to the trained
    size (default) or refuse them; ``batch_size``: images per forward pass; ``workers``: processes that decode
    image files (default: the usable CPUs, at most 8; 1 decodes in this process); ``max_pixels``: images larger
    than this are refused from their header (default: :func:`dsh.utils.imageio.max_pixels_setting`).

    ``tta_flip``: flip test-time augmentation: ``u`` is ``(u(x) + u(x[..., ::-1])) * 0.5``, the mean of the
    outputs for each image and its horizontal mirror, on every encode path and either runtime (twice the network
    time). ``None`` (default): as the model file says (an ONNX export made with ``tta_flip=True`` has it in its
    graph, and then it cannot be turned off), else as the run was trained (its ``tta_flip`` setting). With it,
    :attr:`fingerprint` is :func:`dsh.models.modelinfo.tta_flip_fingerprint` of the weights' (the codes differ from the
    plain model's).
    """

    def __init__(self, runtime, info: ModelInfo, *, source: str, resize: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, max_pixels: int | None = None,
                 tta_flip: bool | None = None):
        self.runtime = runtime
        self.info = info
        self.source = source
        self.resize = bool(resize)
        self.batch_size = _positive("batch_size", batch_size)
        self.workers = _positive("workers", workers)
        self.max_pixels = max_pixels_setting(max_pixels)  # images above this are refused from their header
        if tta_flip is not None and not isinstance(tta_flip, bool):
            raise InputError(f"tta_flip must be True, False or None, got {tta_flip!r}")
        if tta_flip is False and info.tta_flip:
            raise InputError(f"{source}: flip test-time augmentation is part of this model's graph (exported with "
                             f"tta_flip); it cannot be turned off here (export the model again without it)")
        if tta_flip is None:  # a run trained with tta_flip chose its best epoch on codes made so: encode alike
            tta_flip = trained_with_tta_flip(info, source)
        self.tta_flip = bool(info.tta_flip or tta_flip)
        self._flip_here = self.tta_flip and not info.tta_flip  # the graph does not do it itself

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run: str | os.PathLike, *, which: str = "best", backend: str = "auto",
                 threads: int | None = None, **options: Any) -> "Encoder":
        """The best (``which="last"``: the latest) checkpoint of a run folder, or a checkpoint file."""
        from ..models.checkpoint import BEST, LAST
        from .torch_runtime import load_torch

        if which not in ("best", "last"):
            raise InputError(f"which must be 'best' or 'last', got {which!r}")
        loaded, info = load_torch(run, BEST if which == "best" else LAST)
        return cls(_runtime_for(loaded, info, _check_backend(backend), _positive("threads", threads)), info,
                   source=str(loaded.path), **options)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, backend: str = "auto", threads: int | None = None,
                  **options: Any) -> "Encoder":
        """A model file: ``.onnx`` (from ``dsh export``; runs on onnxruntime, no torch), ``.safetensors`` (from
        ``dsh export``), a checkpoint (``.pt``) or a run folder."""
        backend = _check_backend(backend)
        threads = _positive("threads", threads)
        if Path(path).suffix.lower() == ".onnx":
            if backend == "torch":
                raise InputError(f"{path}: an ONNX model runs on onnxruntime, not torch (use the run or a "
                                 f".safetensors export for torch)")
            from .onnx_runtime import load_onnx

            runtime, info = load_onnx(path, threads=threads)
            return cls(runtime, info, source=str(path), **options)
        if Path(path).is_dir():
            return cls.from_run(path, backend=backend, threads=threads, **options)
        from .torch_runtime import load_torch

        loaded, info = load_torch(path)
        return cls(_runtime_for(loaded, info, backend, threads), info, source=str(path), **options)

    # -- what it is --------------------------------------------------------------------------------------------

    @property
    def nbits(self) -> int:
        return self.info.nbits

    @property
    def nbytes(self) -> int:
        """Bytes per packed code."""
        return nbytes_for(self.info.nbits)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` the model was trained on."""
        return self.info.input_shape

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    @property
    def fingerprint(self) -> str:
        """Equal for every file of the same weights (run, ONNX and safetensors exports): see :class:`ModelInfo`;
        with flip TTA, :func:`dsh.models.modelinfo.tta_flip_fingerprint` of it (as a TTA ONNX export records)."""
        return tta_flip_fingerprint(self.info.fingerprint) if self._flip_here else self.info.fingerprint

    @property
    def backend(self) -> str:
        """``"onnxruntime"`` or ``"torch"``."""
        return self.runtime.name

    def __repr__(self) -> str:
        c, h, w = self.input_shape
        tta = ", tta_flip=True" if self.tta_flip else ""
        return f"Encoder({self.source!r}, nbits={self.nbits}, input={c}x{h}x{w}, backend={self.backend!r}{tta})"

    # -- encoding ----------------------------------------------------------------------------------------------

    def prepare(self, images: Any, *, layout: str = "auto") -> np.ndarray:
        """Images -> ``uint8[N, C, H, W]`` as the model takes them (the input policy of :mod:`dsh.utils.imageio`)."""
        return to_model_input(images, self.input_shape, resize=self.resize, layout=layout, workers=self.workers,
                              max_pixels=self.max_pixels)

    def encode(self, images: Any, *, layout: str = "auto", progress: bool = False) -> Encoded:
        """Images (paths, bytes, PIL images, or a uint8 array ``[N, C, H, W]`` / ``[N, H, W, C]``) -> ``(u,
        codes)``. For more images than fit in memory, :meth:`iter_encode_files` streams."""
        return self.encode_array(self.prepare(images, layout=layout), progress=progress)

    def encode_array(self, x: np.ndarray, *, progress: bool = False) -> Encoded:
        """``uint8[N, C, H, W]`` already in the model's shape -> ``(u, codes)``, ``batch_size`` images at a time."""
        x = np.asarray(x)
        if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise InputError(f"encode_array takes uint8[N, {', '.join(map(str, self.input_shape))}], got "
                             f"{x.dtype}{list(x.shape)} (encode() converts other images)")
        u = np.empty((x.shape[0], self.nbits), np.float32)
        batches = range(0, x.shape[0], self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            # disable=None: off unless a terminal
            batches = tqdm(batches, desc="encode", unit="batch", leave=False, disable=None)
        for start in batches:
            u[start : start + self.batch_size] = self._forward(x[start : start + self.batch_size])
        return Encoded(u, codes_from_u(u))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """One batch through the runtime; with flip TTA (where the graph does not do it), the mean of the image's
        and its mirror's ``u``, computed as the exported graph computes it."""
        if not self._flip_here:
            return self.runtime(x)
        n = x.shape[0]
        both = self.runtime(np.concatenate([x, x[..., ::-1]]))  # one pass of 2n images, as the graph does
        return ((both[:n] + both[n:]) * np.float32(0.5)).astype(np.float32, copy=False)

    def iter_encode_files(self, paths: Sequence[str | os.PathLike], *, progress: bool = False
                          ) -> Iterator[tuple[int, Encoded]]:
        """Stream image files: yields ``(start, Encoded)`` for ``paths[start : start + batch_size]``, in order.

        Files decode in ``workers`` processes while the network runs; at most ``2 * workers`` batches of decoded
        images are in flight, so memory stays bounded whatever the number of files.
        """
        c, h, w = self.input_shape
        mode, size = channel_mode(c), (h, w)
        limit = self.max_pixels
        paths = [os.fspath(p) for p in paths]
        workers = self.workers or default_workers()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), desc="encode", unit="img", leave=False, disable=None)
        try:
            if workers <= 1 or len(paths) <= self.batch_size:
                for start, part in iter_chunks(paths, self.batch_size):
                    x = decode_chunk(part, size, mode, self.resize, limit).transpose(0, 3, 1, 2)
                    yield start, self._encode_decoded(x, bar)
                return
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=pool_context()) as pool:
                chunks = iter_chunks(paths, self.batch_size)
                pending: collections.deque = collections.deque()

                def submit() -> None:
                    nxt = next(chunks, None)
                    if nxt is not None:
                        pending.append((nxt[0], pool.submit(decode_chunk, nxt[1], size, mode, self.resize, limit)))

                for _ in range(2 * workers):
                    submit()
                try:
                    while pending:
                        start, future = pending.popleft()
                        x = future.result().transpose(0, 3, 1, 2)  # re-raises a worker's error as is
                        submit()
                        yield start, self._encode_decoded(x, bar)
                finally:
                    for _, future in pending:
                        future.cancel()
        finally:
            if bar is not None:
                bar.close()

    def _encode_decoded(self, x_nchw: np.ndarray, bar) -> Encoded:
        out = self.encode_array(np.ascontiguousarray(x_nchw))
        if bar is not None:
            bar.update(x_nchw.shape[0])
        return out


def _runtime_for(loaded, info: ModelInfo, backend: str, threads: int | None):
    """The fastest runtime available for a torch model: onnxruntime (exported in memory and checked against torch)
    unless ``backend="torch"`` or onnxruntime is not installed."""
    from . import onnx_runtime as runtime_onnx
    from .torch_runtime import TorchRuntime

    if backend == "torch" or (backend == "auto" and not runtime_onnx.available()):
        return TorchRuntime(loaded.model, loaded.normalizer, threads=threads)
    from .export import check_onnx_matches, onnx_bytes

    data = onnx_bytes(loaded.model, loaded.normalizer, info.input_shape)
    check_onnx_matches(data, loaded.model, loaded.normalizer, info.input_shape)
    return runtime_onnx.OnnxRuntime(data, threads=threads, source=str(loaded.path))

"""Model files for deployment: ONNX (uint8 images in, ``u`` out, runs on onnxruntime without torch) and plain
safetensors weights (no pickle), each carrying its :class:`dsh.models.modelinfo.ModelInfo`.

``dsh export --run RUN --out MODEL.onnx`` (or ``MODEL.safetensors``) calls :func:`export_model`. What each file
holds: docs/FORMATS.md ("Model files").
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..config import trained_with_tta_flip
from ..errors import InputError, ModelFileError, one_line
from ..models.modelinfo import METADATA_KEY, ModelInfo, tta_flip_fingerprint
from ..models.sealing import DIGEST_KEY, ONNX_PREFIX, PLACEHOLDER, SAFETENSORS_PREFIX, seal
from ..utils.fileio import atomic_write
from .torch_runtime import load_torch

FORMATS = ("onnx", "safetensors")
DEFAULT_OPSET = 17
# ONNX and torch compute the same float32 graph; their kernels sum in different orders, so u differs in the last
# bits (measured: <= 4e-7). An export that differs by more than this is refused rather than shipped.
MAX_EXPORT_ERROR = 1e-4


class Uint8Hasher(nn.Module):
    """A hashing network with its normaliser folded in: ``uint8[N, C, H, W]`` -> ``u`` ``float32[N, nbits]``.

    ``tta_flip``: ``u`` is ``(u(x) + u(mirror(x))) * 0.5``, ``mirror`` reversing the last axis (flip test-time
    augmentation, as :class:`dsh.runtime.Encoder` computes it with ``tta_flip=True``); the image and its mirror go
    through the network as one batch of ``2N``. ``width``: the images' width (the flip is a gather of a fixed
    reversed index, which every ONNX runtime runs)."""

    def __init__(self, model: nn.Module, normalizer, tta_flip: bool = False, width: int | None = None):
        super().__init__()
        self.model = model
        scale, shift = normalizer.uint8_affine()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())
        self.tta_flip = bool(tta_flip)
        if self.tta_flip:
            if width is None:
                raise ValueError("tta_flip needs the image width")
            self.register_buffer("mirror", torch.arange(int(width) - 1, -1, -1, dtype=torch.int64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) * self.scale + self.shift  # the normaliser, as dsh.models.Normalizer computes it
        if not self.tta_flip:
            return self.model(x).to(torch.float32)
        n = x.shape[0]
        u = self.model(torch.cat([x, torch.index_select(x, 3, self.mirror)])).to(torch.float32)
        return (u[:n] + u[n:]) * 0.5


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch's TorchScript exporter can write."""
    try:
        from torch.onnx import _constants as c

        return int(c.ONNX_MIN_OPSET), int(c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):  # another torch: the range of the versions tested
        return 7, 20


def onnx_bytes(model: nn.Module, normalizer, input_shape: tuple[int, int, int], info: ModelInfo | None = None,
               opset: int = DEFAULT_OPSET, tta_flip: bool = False) -> bytes:
    """The serialised ONNX model (dynamic batch) of ``model`` + ``normalizer``; with ``info``, that JSON is stored
    in the model's metadata (which needs the ``onnx`` package). ``tta_flip``: fold flip test-time augmentation
    into the graph (:class:`Uint8Hasher`); ``info``, if given, must say so (``info.tta_flip``)."""
    if info is not None and info.tta_flip != bool(tta_flip):
        raise ValueError(f"info.tta_flip is {info.tta_flip} but tta_flip is {tta_flip}")
    wrapper = Uint8Hasher(model, normalizer, tta_flip=tta_flip, width=input_shape[2]).eval()
    dummy = torch.zeros((2, *input_shape), dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript and writes the
        # weights to a side file by default; for these plain CNNs the old one gives one self-contained file.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=["u"], dynamic_axes={"images": {0: "N"}, "u": {0: "N"}})
        except torch.onnx.errors.OnnxExporterError as e:
            if opset == DEFAULT_OPSET:  # the default must work: a failure there is a bug
                raise
            raise InputError(f"--opset {opset}: the network cannot be written at this opset ({one_line(e, 160)})") \
                from None
    data = buf.getvalue()
    if info is None:
        return data
    try:
        import onnx
    except ImportError:
        raise ModelFileError("writing an ONNX model file needs the onnx package: pip install 'dsh[onnx]'") from None
    proto = onnx.load_from_string(data)
    proto.producer_name = "dsh"
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.checker.check_model(proto)
    return sealed_onnx(proto)


def sealed_onnx(proto) -> bytes:
    """An ONNX ``ModelProto`` serialised with its :mod:`dsh.models.sealing` entry (added, or reset if it has one)
    holding the sha256 of the result."""
    entry = next((e for e in proto.metadata_props if e.key == DIGEST_KEY), None) or proto.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, PLACEHOLDER
    return seal(proto.SerializeToString(), ONNX_PREFIX)


def sealed_safetensors(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``state`` as safetensors bytes, ``metadata`` in its header with the :mod:`dsh.models.sealing` entry."""
    from safetensors.torch import save

    return seal(save(state, metadata={**metadata, DIGEST_KEY: PLACEHOLDER}), SAFETENSORS_PREFIX)


def check_onnx_matches(data: bytes, model: nn.Module, normalizer, input_shape, n: int = 8, seed: int = 0,
                       tta_flip: bool = False) -> float:
    """Run the ONNX model and the torch model (with flip TTA if ``tta_flip``) on ``n`` random images; the largest
    ``|u|`` difference. Raises :class:`ModelFileError` past :data:`MAX_EXPORT_ERROR`."""
    from .onnx_runtime import OnnxRuntime

    x = np.random.default_rng(seed).integers(0, 256, (n, *input_shape), dtype=np.uint8)
    with torch.no_grad():
        wrapper = Uint8Hasher(model, normalizer, tta_flip=tta_flip, width=input_shape[2]).eval()
        expected = wrapper(torch.from_numpy(x)).numpy()
    got = OnnxRuntime(data, threads=1)(x)
    err = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if not err <= MAX_EXPORT_ERROR:
        raise ModelFileError(f"the ONNX export differs from the torch model by {err:.2e} in u (more than "
                             f"{MAX_EXPORT_ERROR:g}); not written")
    return err


def export_model(source: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
                 opset: int = DEFAULT_OPSET, tta_flip: bool | None = None) -> ModelInfo:
    """Write the model of ``source`` (a run folder, a checkpoint or a safetensors file) to ``out`` as ``fmt``
    (``"onnx"`` or ``"safetensors"``; default: from ``out``'s suffix), atomically. Returns what it wrote.

    ONNX: one self-contained file, ``uint8[N, C, H, W]`` input ``images``, ``float32[N, nbits]`` output ``u``, the
    :class:`ModelInfo` JSON in its metadata under ``"dsh"``; checked against torch before it is written.
    safetensors: the state_dict, with the same JSON in the header's metadata under ``"dsh"``. Both carry their
    own sha256 (:mod:`dsh.models.sealing`), checked when they are loaded.

    ``tta_flip`` (ONNX only): the graph returns the mean of ``u`` of each image and of its horizontal mirror; the
    JSON then says ``"tta_flip": true`` and carries :func:`dsh.models.modelinfo.tta_flip_fingerprint` of the weights'
    fingerprint (the codes differ from the plain model's, so an index of one refuses queries of the other).
    ``None`` (default): as the run was trained (its ``tta_flip`` setting) for ONNX; a safetensors file keeps the
    run's settings, so its encoder applies them.
    """
    out = Path(out)
    fmt = fmt or out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"{out}: cannot tell the export format from the suffix; use .onnx or .safetensors "
                         f"(or --format {'/'.join(FORMATS)})")
    low, high = opset_range()
    if fmt == "onnx" and not (isinstance(opset, int) and low <= opset <= high):
        raise InputError(f"--opset must be between {low} and {high} (what torch's ONNX exporter writes), got {opset!r}")
    if tta_flip and fmt != "onnx":
        raise InputError(f"{out}: flip TTA is folded into ONNX graphs only; a {fmt} file holds weights (encode "
                         f"it with Encoder(..., tta_flip=True))")
    loaded, info = load_torch(source)
    if tta_flip is None:
        tta_flip = fmt == "onnx" and trained_with_tta_flip(info, str(source))
    if fmt == "onnx":
        if tta_flip:
            info = dataclasses.replace(info, tta_flip=True, fingerprint=tta_flip_fingerprint(info.fingerprint))
        data = onnx_bytes(loaded.model, loaded.normalizer, info.input_shape, info, opset, tta_flip=bool(tta_flip))
        check_onnx_matches(data, loaded.model, loaded.normalizer, info.input_shape, tta_flip=bool(tta_flip))
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
        data = sealed_safetensors(state, {METADATA_KEY: info.to_json()})
    with atomic_write(out) as f:
        f.write(data)
    return info

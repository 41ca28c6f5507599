"""Model files for deployment: ONNX (uint8 images in, ``u`` out, runs on onnxruntime without torch) and plain
safetensors weights (no pickle), each carrying its :class:`dsh.modelinfo.ModelInfo`.

``dsh export --run RUN --out MODEL.onnx`` (or ``MODEL.safetensors``) calls :func:`export_model`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import InputError, ModelFileError
from .fileio import atomic_write
from .modelinfo import METADATA_KEY, ModelInfo
from .runtime_torch import load_torch

FORMATS = ("onnx", "safetensors")
DEFAULT_OPSET = 17
# ONNX and torch compute the same float32 graph; their kernels sum in different orders, so u differs in the last
# bits (measured: <= 4e-7). An export that differs by more than this is refused rather than shipped.
MAX_EXPORT_ERROR = 1e-4


class Uint8Hasher(nn.Module):
    """A hashing network with its normaliser folded in: ``uint8[N, C, H, W]`` -> ``u`` ``float32[N, nbits]``."""

    def __init__(self, model: nn.Module, normalizer):
        super().__init__()
        self.model = model
        scale, shift = normalizer.uint8_affine()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) * self.scale + self.shift  # the normaliser, as dsh.data.Normalizer computes it
        return self.model(x).to(torch.float32)


def onnx_bytes(model: nn.Module, normalizer, input_shape: tuple[int, int, int], info: ModelInfo | None = None,
               opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised ONNX model (dynamic batch) of ``model`` + ``normalizer``; with ``info``, that JSON is stored
    in the model's metadata (which needs the ``onnx`` package)."""
    wrapper = Uint8Hasher(model, normalizer).eval()
    dummy = torch.zeros((2, *input_shape), dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript and writes the
        # weights to a side file by default; for these plain CNNs the old one gives one self-contained file.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["u"], dynamic_axes={"images": {0: "N"}, "u": {0: "N"}})
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
    return proto.SerializeToString()


def check_onnx_matches(data: bytes, model: nn.Module, normalizer, input_shape, n: int = 8, seed: int = 0) -> float:
    """Run the ONNX model and the torch model on ``n`` random images; the largest ``|u|`` difference. Raises
    :class:`ModelFileError` past :data:`MAX_EXPORT_ERROR`."""
    from .runtime_onnx import OnnxRuntime

    x = np.random.default_rng(seed).integers(0, 256, (n, *input_shape), dtype=np.uint8)
    with torch.no_grad():
        expected = Uint8Hasher(model, normalizer).eval()(torch.from_numpy(x)).numpy()
    got = OnnxRuntime(data, threads=1)(x)
    err = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if not err <= MAX_EXPORT_ERROR:
        raise ModelFileError(f"the ONNX export differs from the torch model by {err:.2e} in u (more than "
                             f"{MAX_EXPORT_ERROR:g}); not written")
    return err


def export_model(source: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
                 opset: int = DEFAULT_OPSET) -> ModelInfo:
    """Write the model of ``source`` (a run folder, a checkpoint or a safetensors file) to ``out`` as ``fmt``
    (``"onnx"`` or ``"safetensors"``; default: from ``out``'s suffix), atomically. Returns what it wrote.

    ONNX: one self-contained file, ``uint8[N, C, H, W]`` input ``images``, ``float32[N, nbits]`` output ``u``, the
    :class:`ModelInfo` JSON in its metadata under ``"dsh"``; checked against torch before it is written.
    safetensors: the state_dict, with the same JSON in the header's metadata under ``"dsh"``.
    """
    out = Path(out)
    fmt = fmt or out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"{out}: cannot tell the export format from the suffix; use .onnx or .safetensors "
                         f"(or --format {'/'.join(FORMATS)})")
    loaded, info = load_torch(source)
    if fmt == "onnx":
        data = onnx_bytes(loaded.model, loaded.normalizer, info.input_shape, info, opset)
        check_onnx_matches(data, loaded.model, loaded.normalizer, info.input_shape)
    else:
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
        data = save(state, metadata={METADATA_KEY: info.to_json()})
    with atomic_write(out) as f:
        f.write(data)
    return info

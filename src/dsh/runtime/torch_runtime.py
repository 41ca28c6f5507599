"""Encoding with PyTorch: a checkpoint or a safetensors weights file -> a callable ``uint8[N, C, H, W] -> u``.

Used by :class:`dsh.runtime.Encoder` when the model runs in torch (its ``backend="torch"``, or where onnxruntime is
not installed). Loading never unpickles anything but tensors and plain data (:mod:`dsh.models.checkpoint`, safetensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError, one_line
from ..models.checkpoint import BEST, LoadedModel, load_model, weights_fingerprint
from ..models.forward import compute_u
from ..models.modelinfo import METADATA_KEY, ModelInfo
from ..models.sealing import SAFETENSORS_PREFIX, check_seal


class TorchRuntime:
    """``__call__(x)``: ``uint8[N, C, H, W]`` numpy -> ``float32[N, nbits]`` numpy, in eval mode, no autocast (so
    the figures are those of the float32 model that ONNX exports), channels_last on the CPU."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, normalizer, threads: int | None = None,
                 device: str | torch.device = "cpu"):
        if threads:
            torch.set_num_threads(int(threads))  # torch's setting is per process: the encoder owns it here
        self.device = torch.device(device)
        self.channels_last = self.device.type == "cpu"
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalizer = normalizer

    def __call__(self, x: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(x))
        return compute_u(self.model, images, self.normalizer, batch_size=max(1, images.shape[0]),
                         device=self.device, channels_last=self.channels_last)


def load_torch(source: str | os.PathLike, which: str = BEST) -> tuple[LoadedModel, ModelInfo]:
    """A run folder, a checkpoint or a ``.safetensors`` weights file -> the rebuilt model and its info."""
    if Path(source).suffix.lower() == ".safetensors":
        return load_safetensors(source)
    return load_checkpoint(source, which)


def load_checkpoint(run_or_file: str | os.PathLike, which: str = BEST) -> tuple[LoadedModel, ModelInfo]:
    """A run folder or checkpoint -> the rebuilt model and its :class:`ModelInfo`."""
    loaded = load_model(run_or_file, which)
    return loaded, loaded.info()


def _check_fits(model: torch.nn.Module, info: ModelInfo, path: Path) -> None:
    """The network must take images of ``info.input_shape`` and give ``[N, info.nbits]``, as its description says
    (what is described and what is built come from different parts of the file)."""
    try:
        with torch.no_grad():
            u = model(torch.zeros((2, *info.input_shape)))
    except (RuntimeError, ValueError) as e:
        raise ModelFileError(f"{path}: the network does not fit its description: images of {list(info.input_shape)} "
                             f"({one_line(e)})") from None
    if tuple(u.shape) != (2, info.nbits):
        raise ModelFileError(f"{path}: the network does not fit its description: it gives {list(u.shape)} for 2 "
                             f"images, not [2, {info.nbits}]")


def load_safetensors(path: str | os.PathLike) -> tuple[LoadedModel, ModelInfo]:
    """A weights file written by :func:`dsh.runtime.export.export_safetensors` -> the rebuilt model and its info.

    The file carries its own sha256 (:mod:`dsh.models.sealing`), checked before it is parsed, and its header the
    :class:`ModelInfo` JSON; the weights must hash to its fingerprint, so a file whose weights were damaged, or
    swapped and sealed again, is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from ..models.normalize import Normalizer
    from ..models.registry import create_model

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({one_line(e)})") from None
    check_seal(data, SAFETENSORS_PREFIX, str(path))  # before anything of it is parsed
    try:
        size = int.from_bytes(data[:8], "little")
        meta = (json.loads(data[8 : 8 + size]).get("__metadata__") or {}).get(METADATA_KEY)
        state = load(data)
    except (SafetensorError, ValueError, RuntimeError, AttributeError) as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({one_line(e)})") from None
    info = ModelInfo.from_json(meta, str(path))
    try:
        model = create_model(**info.model_config)
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: weights do not match the model it describes ({one_line(e)})") from None
    try:
        normalizer = Normalizer.from_dict(info.normalizer)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: malformed normaliser in its dsh metadata ({one_line(e)})") from None
    if weights_fingerprint(model.state_dict(), normalizer.to_dict(), model.config) != info.fingerprint:
        raise ModelFileError(f"{path}: the weights do not match the fingerprint in its header (damaged or altered)")
    model.eval()
    _check_fits(model, info, path)
    loaded = LoadedModel(model=model, nbits=info.nbits, normalizer=normalizer, input_shape=info.input_shape,
                         class_names=list(info.class_names), config=dict(info.train_config), path=path,
                         epoch=info.epoch - 1)
    return loaded, info

"""Per-channel normalisation of uint8 batches, fitted on the training images and stored in checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# A constant channel would have std 0: floor it at one grey level so normalising never divides by zero.
_MIN_STD = 1.0 / 255.0


@dataclass
class Normalizer:
    """``x -> (x / 255 - mean) / std`` per channel; ``mean`` and ``std`` are on the 0..1 scale."""

    mean: list[float]
    std: list[float]
    _consts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.mean = [float(v) for v in self.mean]
        self.std = [max(float(v), _MIN_STD) for v in self.std]
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {self.mean} and {self.std}")

    @classmethod
    def fit(cls, images: torch.Tensor, chunk: int = 4096) -> "Normalizer":
        """Per-channel mean and std of ``uint8[N, C, H, W]`` images (chunked: no float copy of the whole set)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"fit needs uint8[N, C, H, W] images with N > 0, got {images.dtype}{list(images.shape)}")
        c = images.shape[1]
        s = torch.zeros(c, dtype=torch.float64)
        ss = torch.zeros(c, dtype=torch.float64)
        for start in range(0, images.shape[0], chunk):
            x = images[start : start + chunk].to(torch.float32).div_(255.0)
            s += x.sum(dim=(0, 2, 3), dtype=torch.float64)
            ss += x.square_().sum(dim=(0, 2, 3), dtype=torch.float64)
        n = images.shape[0] * images.shape[2] * images.shape[3]
        mean = s / n
        std = (ss / n - mean.square()).clamp_min(0).sqrt()
        return cls(mean.tolist(), std.tolist())

    @classmethod
    def identity(cls, channels: int) -> "Normalizer":
        """Only scales to 0..1."""
        return cls([0.0] * channels, [1.0] * channels)

    def _scale_shift(self, device: torch.device, from_uint8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, from_uint8)
        if key not in self._consts:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            scale = 1.0 / (std * 255.0) if from_uint8 else 1.0 / std
            shape = (1, len(self.mean), 1, 1)
            shift = -mean / std
            self._consts[key] = (scale.float().reshape(shape).to(device), shift.float().reshape(shape).to(device))
        return self._consts[key]

    def uint8_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)``, each ``float32[1, C, 1, 1]`` on the CPU, such that the normalised image is
        ``uint8_pixels * scale + shift``: the exact constants :meth:`__call__` uses (an exported model folds them
        in, so it computes the same float32 values)."""
        return self._scale_shift(torch.device("cpu"), True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``uint8[B, C, H, W]`` (0..255) or float (0..1) -> normalised ``float32[B, C, H, W]``, on ``x``'s device
        and in its memory format (channels_last stays channels_last)."""
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise ValueError(f"expected [B, {len(self.mean)}, H, W] images, got {list(x.shape)}")
        scale, shift = self._scale_shift(x.device, x.dtype == torch.uint8)
        return x.to(torch.float32).mul_(scale).add_(shift) if x.dtype == torch.uint8 else x.float() * scale + shift

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(list(d["mean"]), list(d["std"]))

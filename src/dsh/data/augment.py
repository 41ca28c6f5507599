"""Batch augmentation on uint8 tensors: random translation (pad, then crop) and horizontal flips.

A whole batch is augmented by one gather: every output pixel reads its source pixel at a per-image row and
column offset, with the flip folded into the column index. No per-image Python, and the same code runs on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

PAD_MODES = ("reflect", "zeros")


@dataclass
class Augment:
    """Random crops of ``crop_padding`` pixels in each direction, and random horizontal flips with ``flip``.

    ``pad_mode``: what the shifted-in border shows: ``"reflect"`` (mirrored edge, as in cifar10-airbench) or
    ``"zeros"`` (black, right for digits on a black background).
    """

    crop_padding: int = 0
    flip: bool = False
    pad_mode: str = "reflect"

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise InputError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def sample(self, n: int, generator: torch.Generator | None = None):
        """Random ``(dy, dx, flips)`` for ``n`` images: ``int64[n]`` offsets in ``[-p, p]`` and ``bool[n]``,
        drawn on the CPU (so a seed gives the same augmentation on any device)."""
        p = self.crop_padding
        dy = torch.randint(-p, p + 1, (n,), generator=generator)
        dx = torch.randint(-p, p + 1, (n,), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return dy, dx, flips

    def apply(self, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """The augmentation with given offsets: output pixel ``(i, j)`` of image ``b`` is pixel
        ``(i + dy[b], j' + dx[b])`` of the padded input, where ``j' = W - 1 - j`` if ``flips[b]`` else ``j``.

        ``x``: ``[B, C, H, W]`` of any dtype; returns the same shape and dtype, contiguous.
        """
        b, c, h, w = x.shape
        p = self.crop_padding
        if p == 0 and not bool(flips.any()):
            return x
        if p >= min(h, w) and self.pad_mode == "reflect":
            raise InputError(f"reflect padding of {p} needs images larger than {p} pixels, got {h}x{w}")
        dev = x.device
        dy, dx, flips = dy.to(dev), dx.to(dev), flips.to(dev)
        if p > 0:
            x = F.pad(x, (p, p, p, p), mode="reflect" if self.pad_mode == "reflect" else "constant")
        hp, wp = h + 2 * p, w + 2 * p
        cols = torch.arange(w, device=dev)
        cols = torch.where(flips[:, None], w - 1 - cols, cols) + (dx[:, None] + p)  # (B, W)
        rows = torch.arange(h, device=dev) + (dy[:, None] + p)  # (B, H)
        index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
        return torch.gather(x.reshape(b, c, hp * wp), 2, index).reshape(b, c, h, w)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch ``[B, C, H, W]`` (uint8 in the loader); dtype and shape are kept."""
        if not self.active:
            return x
        return self.apply(x, *self.sample(x.shape[0], generator))


# Digits are not mirror-symmetric (a flipped 2 is no 2): small shifts only, over a black border.
_DEFAULTS = {
    "digits": Augment(crop_padding=1, flip=False, pad_mode="zeros"),
    "mnist": Augment(crop_padding=2, flip=False, pad_mode="zeros"),
    "cifar10": Augment(crop_padding=4, flip=True, pad_mode="reflect"),
    "folder": Augment(crop_padding=4, flip=True, pad_mode="reflect"),
}


def default_augment(dataset: str) -> Augment:
    """The usual augmentation for a dataset: digits 1 px and MNIST 2 px shifts, no flips; CIFAR-10 and image
    folders 4 px shifts and flips. Unknown names get no augmentation."""
    d = _DEFAULTS.get(str(dataset).lower())
    return Augment() if d is None else Augment(d.crop_padding, d.flip, d.pad_mode)

"""Turn images into real outputs ``u`` and packed codes with a trained model."""

from __future__ import annotations

import numpy as np
import torch

from ..codes.bits import codes_from_u


@torch.no_grad()
def compute_u(
    model: torch.nn.Module,
    images: torch.Tensor,
    normalizer,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    progress: bool = False,
    tta_flip: bool = False,
) -> np.ndarray:
    """``uint8[N, C, H, W]`` images -> ``float32[N, nbits]`` outputs ``u``, in eval mode, batch by batch;
    ``tta_flip``: the mean of ``u`` of each image and of its horizontal mirror (as :class:`dsh.runtime.Encoder`)."""
    was_training = model.training
    model.eval()
    out = []
    batches = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encode", unit="batch", leave=False, disable=None)  # None: off unless a terminal
    try:
        for start in batches:
            x = normalizer(images[start : start + batch_size].to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            u = model(x).float()
            if tta_flip:
                u = (u + model(torch.flip(x, dims=(3,))).float()) * 0.5
            out.append(u.cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def encode_images(model, images, normalizer, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """``uint8[N, C, H, W]`` -> (``u`` float32[N, nbits], ``codes`` uint8[N, ceil(nbits/8)])."""
    u = compute_u(model, images, normalizer, **kwargs)
    return u, codes_from_u(u)

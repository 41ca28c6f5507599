"""What the training loop does differently for a pretrained backbone (:class:`dsh.models.pretrained.PretrainedHashNet`).

- The images are normalised as the backbone's weights expect (:func:`input_normalizer`), not with statistics
  fitted on the training images.
- The model starts from ImageNet weights unless told otherwise (:func:`backbone_options`).
- The backbone's features of the training and validation images are computed once and cached
  (:mod:`dsh.train.features`). With ``tune=head`` the run trains the head on them (:class:`FeatureBatches`,
  validation on cached features too): seconds for thousands of images. With ``top`` or ``all`` the head is first
  fitted on them for ``head_epochs`` (:func:`dsh.train.head.fit_head`), then the loop fine-tunes from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..codes.bits import codes_from_u
from ..config import TrainConfig
from ..data import cache_dir
from ..errors import ConfigError
from ..models.normalize import Normalizer
from ..models.pretrained import DEFAULT_TIMM_ARCH, PretrainedHashNet, input_normalization, is_pretrained
from .features import cached_features
from .head import fit_head, halves_map


def backbone_options(cfg: TrainConfig, new_run: bool) -> dict:
    """The starting weights a new run of a pretrained model loads (default ImageNet's; ``none``: random); a resumed
    run loads its checkpoint instead, so it needs no weights file or package."""
    if not is_pretrained(cfg.model) or not new_run or cfg.weights == "none":
        return {}
    return {"weights": cfg.weights or "imagenet"}


def input_normalizer(cfg: TrainConfig, images: torch.Tensor) -> Normalizer:
    """The normaliser of a new run: the backbone's own mean and std for a pretrained model (its first channel's for
    grey images), else per-channel statistics fitted on ``images`` ``uint8[N, C, H, W]``."""
    if not is_pretrained(cfg.model):
        return Normalizer.fit(images)
    mean, std = input_normalization(cfg.model, cfg.arch or DEFAULT_TIMM_ARCH)
    channels = int(images.shape[1])
    return Normalizer(list(mean[:channels]), list(std[:channels]))


class FeatureBatches:
    """Shuffled batches ``(float32[B, F] features, labels)`` of cached features, ``drop_last``, the order drawn from
    ``generator`` (so a saved generator state resumes it, as with image batches)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                 device: torch.device) -> None:
        self.features, self.labels = features.to(device), labels.to(device)
        self.batch_size, self.generator = int(batch_size), generator

    def __len__(self) -> int:
        return self.features.shape[0] // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.features.shape[0], generator=self.generator).to(self.features.device)
        for s in range(len(self)):
            idx = order[s * self.batch_size:(s + 1) * self.batch_size]
            yield self.features[idx], self.labels[idx]


@dataclass
class CachedValidation:
    """The validation images' backbone features (and their mirrors' with flip TTA), so that a head-only run
    validates in milliseconds."""

    features: torch.Tensor  # float32[n_val, F]
    mirrored: torch.Tensor | None  # float32[n_val, F], or None without flip TTA

    def score(self, model: PretrainedHashNet, labels: np.ndarray, nbits: int) -> tuple[float, np.ndarray]:
        """``(halves mAP, u float32[n_val, nbits])`` of ``model``'s head on the cached features."""
        was_training = model.training
        model.eval()
        with torch.no_grad():
            u = model.head(self.features)
            if self.mirrored is not None:
                u = (u + model.head(self.mirrored)) * 0.5
        model.train(was_training)
        u = u.float().cpu().numpy()
        return halves_map(codes_from_u(u), labels, nbits), u


@dataclass
class BackboneStart:
    """What :func:`prepare` hands the loop: for ``tune=head`` the feature batches, the module each step trains (the
    head) and the cached validation; for ``top`` / ``all`` nothing (the head has been warm-started in place)."""

    batches: FeatureBatches | None = None
    step_module: torch.nn.Module | None = None
    validation: CachedValidation | None = None


def prepare(cfg: TrainConfig, model: PretrainedHashNet, fit, val, normalizer: Normalizer, generator: torch.Generator,
            device: torch.device, world_size: int, log: Callable[[str], None], new_run: bool) -> BackboneStart:
    """Cache the backbone's features of ``fit`` and ``val`` (:class:`dsh.data.ImageSet`) and start the run:
    head-only batches for ``tune=head``, else, for a ``new_run``, the head fitted on the features for
    ``cfg.head_epochs`` (a resumed run goes on from its checkpoint)."""
    if model.tune == "head" and world_size > 1:
        raise ConfigError("tune (--tune) head trains on cached features in seconds: run it in one process "
                          "(no --nproc / torchrun)")
    cache = cache_dir()  # beside the decoded datasets: $DSH_CACHE, else ~/.cache/dsh

    def features(images: torch.Tensor) -> torch.Tensor:
        return cached_features(model, images, normalizer, cache=cache, device=device,
                               channels_last=cfg.channels_last, log=log).to(device)

    if model.tune != "head" and not (new_run and cfg.head_epochs):
        return BackboneStart()
    fit_features, val_features = features(fit.images), features(val.images)
    if model.tune == "head":
        mirrored = features(val.images.flip(-1)) if cfg.tta_flip else None
        return BackboneStart(FeatureBatches(fit_features, fit.labels, cfg.batch_size, generator, device), model.head,
                             CachedValidation(val_features, mirrored))
    fit_head(model.head, fit_features, fit.labels.to(device), val_features, val.labels.to(device),
             nbits=cfg.nbits, epochs=cfg.head_epochs, batch_size=cfg.batch_size, margin=cfg.margin,
             alpha=cfg.alpha, seed=cfg.seed, log=log)
    return BackboneStart()


@torch.no_grad()
def encode_on_cached_features(model: PretrainedHashNet, normalizer: Normalizer, images: torch.Tensor, *,
                              tta_flip: bool, log: Callable[[str], None] = lambda m: None
                              ) -> tuple[np.ndarray, np.ndarray]:
    """``u`` ``float32[N, nbits]`` and codes ``uint8[N, ceil(nbits/8)]`` of ``uint8[N, C, H, W]`` images under a
    network whose backbone is frozen (``tune=head``): the backbone's features come from the feature cache (computed
    and kept where absent), so every later code length or head on the same images costs the head alone. The codes
    are the whole network's (up to float rounding); ``tta_flip`` averages ``u`` over each image and its mirror, as
    :class:`dsh.runtime.Encoder` does."""
    if model.tune != "head":
        raise ConfigError(f"cached features encode only a network whose backbone did not train (tune=head), "
                          f"not tune={model.tune}")
    model.eval()
    device = next(model.parameters()).device

    def u_of(x: torch.Tensor) -> torch.Tensor:
        return model.head(cached_features(model, x, normalizer, cache=cache_dir(), device=device, log=log).to(device))

    u = u_of(images)
    if tta_flip:
        u = (u + u_of(images.flip(-1))) * 0.5
    u = u.float().cpu().numpy()
    return u, codes_from_u(u)

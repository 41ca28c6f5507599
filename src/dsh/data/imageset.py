"""One decoded split of a dataset, and the seeded, stratified carving of a validation subset from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError


@dataclass
class ImageSet:
    """One split of a dataset, decoded.

    - ``images``: ``uint8[N, C, H, W]``, raw pixel values 0..255 (normalise per batch, not here);
    - ``labels``: ``int64[N]`` class ids into ``class_names``, or ``uint8[N, n_classes]`` multi-hot rows;
    - ``class_names``: one name per class id;
    - ``paths``: for images that came from files, each image's path (relative to the dataset root), else ``None``;
    - ``name``: what this is, for messages, e.g. ``"mnist/fit"``.

    ``images`` may be backed by a memory-mapped cache file (copy-on-write); index it freely.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    paths: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8[N, C, H, W], got {self.images.dtype}{list(self.images.shape)}")
        n = self.images.shape[0]
        if self.labels.shape[0] != n:
            raise ValueError(f"{n} images but {self.labels.shape[0]} labels")
        if self.labels.ndim == 1 and self.labels.dtype != torch.int64:
            raise ValueError(f"class-id labels must be int64, got {self.labels.dtype}")
        if self.labels.ndim == 2 and self.labels.dtype != torch.uint8:
            raise ValueError(f"multi-hot labels must be uint8, got {self.labels.dtype}")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"{n} images but {len(self.paths)} paths")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def subset(self, indices, name: str | None = None) -> "ImageSet":
        """The images at ``indices`` (any int sequence), in that order, as a new (copied) set."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
            name=self.name if name is None else name,
        )


def resolve_val_size(val_size: int | float | None, n_train: int) -> int:
    """How many training images to hold out for validation.

    ``None``: ``min(5000, n_train // 10)``; a float in (0, 1): that share of ``n_train``; an int: that many.
    """
    if val_size is None:
        return min(5000, n_train // 10)
    if isinstance(val_size, float) and 0 < val_size < 1:
        k = round(val_size * n_train)
    elif float(val_size) == int(val_size):
        k = int(val_size)
    else:
        raise DataError(f"val_size must be a count or a fraction in (0, 1), got {val_size}")
    if not 0 <= k < n_train:
        raise DataError(f"val_size {val_size} must leave some of the {n_train} training images for fitting")
    return k


def stratified_subset(labels: np.ndarray | torch.Tensor, size: int, seed: int) -> np.ndarray:
    """A fixed random subset of ``size`` indices (sorted ascending), the same for the same labels and seed.

    For class-id labels the subset is stratified: each class contributes in proportion to its size (largest
    remainders, ties broken at random), so a 10% subset of a balanced set holds 10% of every class. Multi-hot
    labels get a plain random subset.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 <= size <= n:
        raise ValueError(f"cannot take {size} of {n} items")
    order = np.random.default_rng(seed).permutation(n)  # random tie-breaking, deterministic for the seed
    if labels.ndim != 1:
        return np.sort(order[:size])
    lab = labels[order].astype(np.int64)
    counts = np.bincount(lab)
    starts = np.cumsum(counts) - counts
    by_class = np.argsort(lab, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - starts[lab[by_class]]  # position of each item within its class, 0..n_c-1
    # Item r of a class of n_c sits at (r + 0.5) / n_c in (0, 1): the `size` smallest keys take the same share of
    # every class, up to one item.
    key = (rank + 0.5) / counts[lab]
    return np.sort(order[np.argsort(key, kind="stable")[:size]])


def carve_val(train: ImageSet, split: str, val_size: int | float | None, seed: int, dataset: str) -> ImageSet:
    """``val`` (a seeded stratified subset of ``train``) or ``fit`` (``train`` minus ``val``)."""
    k = resolve_val_size(val_size, len(train))
    val_idx = stratified_subset(train.labels.numpy(), k, seed)
    if split == "val":
        return train.subset(val_idx, name=f"{dataset}/val")
    keep = np.ones(len(train), dtype=bool)
    keep[val_idx] = False
    return train.subset(np.flatnonzero(keep), name=f"{dataset}/fit")

"""Batches from an in-memory :class:`ImageSet`: index the uint8 images, augment, normalise, on any device.

No worker processes and no per-image Python: per batch, one gather of uint8 rows, one augmentation gather and one
fused scale-and-shift. The order of images (and the augmentation) comes from one ``torch.Generator``, so a seed
fixes every epoch, and saving the generator's state is enough to resume mid-run.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .augment import Augment
from .imageset import ImageSet

SAMPLERS = ("random", "balanced")


def balanced_batches(labels: torch.Tensor, n_batches: int, p: int, k: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``int64[n_batches, p * k]`` indices: each row is ``p`` distinct classes x ``k`` images of each, grouped
    (row ``[c0 c0 .. c0 c1 c1 ..]``).

    Classes are drawn uniformly without replacement per batch. Each class's images are shuffled once and then
    dealt out ``k`` at a time in that order, wrapping around, so within an epoch every image of a class is used
    about equally often and a batch repeats an image only when its class has fewer than ``k``.
    """
    labels = labels.cpu()
    n = labels.shape[0]
    counts = torch.bincount(labels)
    present = torch.nonzero(counts).flatten()
    if p > present.numel():
        raise ValueError(f"{p} classes per batch but only {present.numel()} classes have images")
    starts = torch.cumsum(counts, 0) - counts
    perm = torch.randperm(n, generator=generator)
    by_class = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, shuffled within each class
    pick = torch.rand(n_batches, present.numel(), generator=generator).argsort(dim=1)[:, :p]
    chosen = present[pick].flatten()  # (n_batches * p,) class of each group
    # how many times each class was chosen before this group: the position of its next k images
    order = torch.argsort(chosen, stable=True)
    sel_counts = torch.bincount(chosen, minlength=counts.numel())
    occurrence = torch.empty_like(chosen)
    occurrence[order] = torch.arange(chosen.numel()) - (torch.cumsum(sel_counts, 0) - sel_counts)[chosen[order]]
    pos = (occurrence[:, None] * k + torch.arange(k)) % counts[chosen][:, None]  # (n_batches * p, k)
    return by_class[starts[chosen][:, None] + pos].reshape(n_batches, p * k)


class BatchLoader:
    """Iterate ``(x, y)`` over ``data``: ``x`` ``float32[B, C, H, W]`` normalised (channels_last if asked),
    ``y`` the labels of the batch (``int64[B]``, or ``uint8[B, n_classes]`` multi-hot rows), both on ``device``.

    - ``sampler="random"``: a shuffled pass over the set (in order with ``shuffle=False``); the last short batch
      is kept unless ``drop_last``.
    - ``sampler="balanced"``: every batch holds P classes x K images (:func:`balanced_batches`), so a pairwise
      loss sees similar pairs in every batch. K = ``images_per_class`` (default: ``batch_size`` shared by
      ``min(n_classes, batch_size // 4)`` classes), P = ``min(n_classes, batch_size // K)``; the batch is P * K
      (CIFAR-10 at 256: 10 x 25 = 250). ``len(data) // (P * K)`` batches make an epoch.

    ``augment`` runs on the uint8 batch (on ``device``), then ``normalizer``, a callable ``uint8[B, C, H, W] ->
    float32[B, C, H, W]`` such as :class:`dsh.models.Normalizer` (default: scale to 0..1).
    ``generator``: a CPU ``torch.Generator``, the source of all randomness (default: one seeded with ``seed``);
    each pass draws from it, so saving its state is enough to resume.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int = 256,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: Augment | None = None,
        normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sampler: str = "random",
        images_per_class: int | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if len(data) == 0:
            raise ValueError(f"{data.name or 'the data set'} is empty")
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.active else None
        self.normalizer = normalizer if normalizer is not None else _scale_to_unit
        self.sampler = sampler
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.channels_last = channels_last
        if sampler == "balanced":
            if data.multi_label:
                raise ValueError("the balanced sampler needs class-id labels, not multi-hot rows")
            n_classes = int(torch.unique(data.labels).numel())
            k = images_per_class or max(2, self.batch_size // max(1, min(n_classes, self.batch_size // 4)))
            self.k = int(k)
            self.p = min(n_classes, self.batch_size // self.k)
            if self.p < 2:
                raise ValueError(f"a balanced batch of {self.batch_size} with {self.k} images per class holds "
                                 f"{self.p} class(es); it needs at least 2 (a larger batch or fewer per class)")

    def __len__(self) -> int:
        n = len(self.data)
        if self.sampler == "balanced":
            return max(1, n // (self.p * self.k))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch_indices(self) -> list[torch.Tensor]:
        """The index tensors of one pass (draws from the generator)."""
        if self.sampler == "balanced":
            return list(balanced_batches(self.data.labels, len(self), self.p, self.k, self.generator))
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return list(order[: len(self) * self.batch_size].split(self.batch_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.data.images, self.data.labels
        for idx in self.batch_indices():
            x = images[idx].to(self.device, non_blocking=True)  # uint8 (B, C, H, W): 4x fewer bytes to move
            if self.augment is not None:
                x = self.augment(x, self.generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield self.normalizer(x), labels[idx].to(self.device, non_blocking=True)


def _scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels -> ``float32`` on the 0..1 scale (the same float32 constant an identity normaliser uses)."""
    return x.to(torch.float32).mul_(1.0 / 255.0)

"""Which images a run trains on and which it encodes: a dataset's own splits, or the parts of a named protocol.

Without a protocol the parts are the dataset's splits (``train``, ``test``, and ``val`` / ``fit`` carved from
``train``). With one (:mod:`dsh.protocols`, e.g. DeepHash-pytorch's ``cifar10``: 1,000 queries, 5,000 training
images, 54,000 database images sampled from train + test), the parts are ``query``, ``database`` and ``train``,
and ``val`` / ``fit`` are carved from the protocol's ``train`` part the same way.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .data import ImageSet, load_split
from .data.imageset import carve_val
from .fileio import DataError
from .protocols import get_protocol, make_split, to_source

PROTOCOL_PARTS = ("query", "database", "train", "val", "fit")


def load_part(
    dataset: str,
    part: str,
    *,
    protocol: str | None = None,
    protocol_seed: int = 0,
    data_root: str | os.PathLike | None = None,
    val_size: int | float | None = None,
    seed: int = 0,
    download: bool = True,
    image_size: int | None = None,
) -> ImageSet:
    """One part as an :class:`~dsh.data.ImageSet` (``uint8[N, C, H, W]`` images, ``int64[N]`` labels)."""
    common = dict(data_root=data_root, download=download, image_size=image_size)
    if protocol is None:
        if part in ("query", "database"):
            raise DataError(f"split {part!r} needs a protocol (--protocol NAME); without one use train/test")
        return load_split(dataset, part, val_size=val_size, seed=seed, **common)
    if part not in PROTOCOL_PARTS:
        raise DataError(f"protocol {protocol!r} has parts {', '.join(PROTOCOL_PARTS)}, not {part!r}")
    train = load_split(dataset, "train", **common)
    test = load_split(dataset, "test", **common)
    split = make_split(protocol, train.labels.numpy(), test.labels.numpy(), seed=protocol_seed)
    source = "train" if part in ("val", "fit") else part
    chosen = _gather(train, test, split[source], f"{dataset}/{protocol}/{source}")
    if part in ("val", "fit"):
        return carve_val(chosen, part, val_size, seed, f"{dataset}/{protocol}")
    return chosen


def protocol_topk(protocol: str | None) -> int | None:
    """The cut-off of a protocol's mAP (``None``: mAP@all, also without a protocol)."""
    return None if protocol is None else get_protocol(protocol).topk


def _gather(train: ImageSet, test: ImageSet, indices: np.ndarray, name: str) -> ImageSet:
    """Rows ``indices`` (sorted, into ``[train; test]``) as one set: the training rows first, as in the index."""
    indices = np.asarray(indices, dtype=np.int64)
    if train.shape != test.shape:
        raise DataError(f"{name}: train images are {train.shape} but test images are {test.shape}")
    is_test, local = to_source(indices, len(train))
    a, b = train.subset(local[~is_test]), test.subset(local[is_test])
    paths = None if a.paths is None or b.paths is None else a.paths + b.paths
    return ImageSet(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), list(train.class_names),
                    paths, name)

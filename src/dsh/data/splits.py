"""Which images a run trains on and which it encodes: a dataset's own splits, or the parts of a named protocol.

Without a protocol the parts are the dataset's splits (``train``, ``test``, and ``val`` / ``fit`` carved from
``train``). With one (:mod:`dsh.data.protocols`, e.g. DeepHash-pytorch's ``cifar10``: 1,000 queries, 5,000 training
images, 54,000 database images sampled from train + test), the parts are ``query``, ``database`` and ``train``,
and ``val`` / ``fit`` are carved from the protocol's ``train`` part the same way. A ``list`` dataset (multi-label,
:mod:`dsh.data.listfile`) also has its own ``database`` part without a protocol (its ``database.txt``).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import DataError
from . import ImageSet, load_split
from .imageset import carve_val
from .protocols import get_protocol, make_split, to_source

PROTOCOL_PARTS = ("query", "database", "train", "val", "fit")


def load_part(dataset: str, part: str, **options) -> ImageSet:
    """One part as an :class:`~dsh.data.ImageSet` (``uint8[N, C, H, W]`` images, ``int64[N]`` labels); the
    options are :func:`load_parts`'."""
    return load_parts(dataset, (part,), **options)[0]


def load_parts(
    dataset: str,
    parts: tuple[str, ...] | list[str],
    *,
    protocol: str | None = None,
    protocol_seed: int = 0,
    data_root: str | os.PathLike | None = None,
    val_size: int | float | None = None,
    seed: int = 0,
    download: bool = True,
    image_size: int | None = None,
) -> list[ImageSet]:
    """Several parts, in the order asked, each as :func:`load_part` gives it. The dataset's own splits are read
    (and a protocol sampled) once for all of them: a run's ``fit`` and ``val``, or a protocol's ``query`` and
    ``database``, come from one load of ``train`` and ``test``."""
    common = dict(data_root=data_root, download=download, image_size=image_size)
    for part in parts:
        own_database = part == "database" and str(dataset).lower() == "list"  # a list dataset has its own
        if protocol is None and part in ("query", "database") and not own_database:
            raise DataError(f"split {part!r} needs a protocol (--protocol NAME); without one use train/test")
        if protocol is not None and part not in PROTOCOL_PARTS:
            raise DataError(f"protocol {protocol!r} has parts {', '.join(PROTOCOL_PARTS)}, not {part!r}")
    official: dict[str, ImageSet] = {}

    def read(split: str) -> ImageSet:
        if split not in official:
            official[split] = load_split(dataset, split, **common)
        return official[split]

    if protocol is None:
        # load_split has checked the name; carve_val names its subsets by the lower-case key, as load_split does
        return [carve_val(read("train"), part, val_size, seed, str(dataset).lower()) if part in ("val", "fit")
                else read(part) for part in parts]
    train, test = read("train"), read("test")
    split = make_split(protocol, train.labels.numpy(), test.labels.numpy(), seed=protocol_seed)
    out = []
    for part in parts:
        source = "train" if part in ("val", "fit") else part
        chosen = _gather(train, test, split.part(source), f"{dataset}/{protocol}/{source}")
        out.append(carve_val(chosen, part, val_size, seed, f"{dataset}/{protocol}") if part in ("val", "fit")
                   else chosen)
    return out


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

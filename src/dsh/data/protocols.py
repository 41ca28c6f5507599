"""Named retrieval protocols: which images are queries, which train the model, which form the database.

Results in the field are only comparable under the same split, so each split users compare against has a name here
(``dsh-paper``, ``cifar10``, ``cifar10-1``, ``cifar10-2``), and :func:`make_split` builds it from the labels of a
dataset's own train and test sets with a fixed seed.

**Index convention.** Every index returned refers to the concatenation ``[train; test]`` of the dataset's two
sets: ``i < n_train`` is training item ``i``, ``i >= n_train`` is test item ``i - n_train``. :func:`to_source`
maps indices back to ``(is_test, index within its set)``, and :func:`gather` takes the rows of any array pair
(images, labels) without building the concatenation. Each index array is sorted ascending, so the database keeps the
dataset's own order (which only matters for metrics computed with ``ties="position"``, see :mod:`dsh.eval.metrics`).

**Sampling.** Protocols that sample do it per class, from the pool of all ``n_train + n_test`` items, with
``numpy.random.default_rng(seed)``: classes are visited in increasing id order, each class's pool indices are
permuted once, the first ``query_per_class`` become queries and the next ``train_per_class`` training items. The
sizes are per class, so any single-label dataset works; a class with too few items is an error naming it. On
CIFAR-10 (10 classes of 6,000) the sizes are those of DeepHash-pytorch, although its exact draws (made with a
different generator) are not reproduced.

No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "register_protocol",
    "get_protocol",
    "Split",
    "make_split",
    "to_source",
    "gather",
]


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    # "split": query = the test set, train = database = the training set (nothing sampled);
    # "sample": query and train sampled per class from the pool [train; test]
    kind: str
    query_per_class: int | None = None  # kind == "sample" only
    train_per_class: int | None = None  # kind == "sample" only
    # kind == "sample": "rest" = the pool minus query minus train; "all_but_query" = the pool minus query
    database: str = "rest"
    topk: int | None = None  # the cut-off of the protocol's mAP; None = mAP@all

    def __post_init__(self) -> None:
        if self.kind not in ("split", "sample"):
            raise ValueError(f"protocol {self.name!r}: kind must be 'split' or 'sample', got {self.kind!r}")
        if self.kind == "sample":
            if not (self.query_per_class and self.query_per_class > 0 and self.train_per_class
                    and self.train_per_class > 0):  # fmt: skip
                raise ValueError(f"protocol {self.name!r}: sampling needs positive query/train counts per class")
            if self.database not in ("rest", "all_but_query"):
                raise ValueError(f"protocol {self.name!r}: database must be 'rest' or 'all_but_query'")
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"protocol {self.name!r}: topk must be >= 1 or None")


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Add a protocol to the registry (a name can be registered once)."""
    if protocol.name in PROTOCOLS:
        raise ValueError(f"protocol {protocol.name!r} is already registered")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise DataError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}") from None


register_protocol(
    Protocol(
        name="dsh-paper",
        description=(
            "DSH paper (Liu et al., CVPR 2016): query = the test set (10,000 on CIFAR-10), train = database = the "
            "training set (50,000), mAP@all. The same split as cifar10-2."
        ),
        kind="split",
    )
)
register_protocol(
    Protocol(
        name="cifar10",
        description=(
            "DeepHash-pytorch 'cifar10': pool = train + test (60,000); query = 100 per class (1,000), train = 500 "
            "per class (5,000), database = the rest (54,000); mAP@54000, which is mAP@all on CIFAR-10."
        ),
        kind="sample",
        query_per_class=100,
        train_per_class=500,
        database="rest",
        topk=54000,
    )
)
register_protocol(
    Protocol(
        name="cifar10-1",
        description=(
            "DeepHash-pytorch 'cifar10-1': pool = train + test (60,000); query = 100 per class (1,000), train = "
            "500 per class (5,000), database = everything but the queries (59,000, train included); mAP@all."
        ),
        kind="sample",
        query_per_class=100,
        train_per_class=500,
        database="all_but_query",
    )
)
register_protocol(
    Protocol(
        name="cifar10-2",
        description=(
            "DeepHash-pytorch 'cifar10-2': query = the test set (10,000), train = database = the training set "
            "(50,000); mAP@all."
        ),
        kind="split",
    )
)


def _class_ids(labels, name: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(
            f"{name} must be single-label class ids int[n] (protocols sample per class), got "
            f"{'dtype ' + str(a.dtype) if a.ndim == 1 else 'shape ' + str(a.shape)}"
        )
    return a.astype(np.int64)


@dataclass(frozen=True)
class Split:
    """A protocol built over one dataset: three sorted ``int64`` index arrays into ``[train; test]``."""

    protocol: str
    seed: int
    n_train: int  # the sizes of the dataset's own train and test sets, so the split can be checked or rebuilt
    n_test: int
    query: np.ndarray  # int64[n_query]
    train: np.ndarray  # int64[n_train_used]: the images that train the model
    database: np.ndarray  # int64[n_database]
    topk: int | None  # the cut-off of the protocol's mAP (None = mAP@all), for dsh.eval.metrics.evaluate

    PARTS = ("query", "train", "database")

    def part(self, name: str) -> np.ndarray:
        """The indices of part ``name`` (one of :attr:`PARTS`)."""
        if name not in self.PARTS:
            raise ValueError(f"unknown part {name!r} of protocol {self.protocol!r}; known: {', '.join(self.PARTS)}")
        return getattr(self, name)


def make_split(name: str, train_labels, test_labels, seed: int = 0) -> Split:
    """Build protocol ``name`` over a dataset's train and test labels (single-label class ids).

    The same ``(name, labels, seed)`` always gives the same :class:`Split`; ``seed`` is unused by protocols that
    do not sample.
    """
    p = get_protocol(name)
    tr = _class_ids(train_labels, "train_labels")
    te = _class_ids(test_labels, "test_labels")
    n_train, n_test = len(tr), len(te)
    if n_train == 0 or n_test == 0:
        raise DataError(f"protocol {name!r} needs non-empty train and test sets, got {n_train} and {n_test}")
    if p.kind == "split":
        train = np.arange(n_train, dtype=np.int64)
        query = np.arange(n_train, n_train + n_test, dtype=np.int64)
        database = train.copy()
    else:
        pool = np.concatenate([tr, te])
        rng = np.random.default_rng(seed)
        need = p.query_per_class + p.train_per_class
        queries, trains = [], []
        for c in np.unique(pool):
            members = np.flatnonzero(pool == c)
            if len(members) < need:
                raise DataError(
                    f"protocol {name!r}: class {c} has {len(members)} items in train + test, but the protocol "
                    f"takes {need} per class ({p.query_per_class} query + {p.train_per_class} train)"
                )
            perm = rng.permutation(members)
            queries.append(perm[: p.query_per_class])
            trains.append(perm[p.query_per_class : need])
        query = np.sort(np.concatenate(queries))
        train = np.sort(np.concatenate(trains))
        taken = np.zeros(len(pool), dtype=bool)
        taken[query] = True
        if p.database == "rest":
            taken[train] = True
        database = np.flatnonzero(~taken)
    return Split(p.name, int(seed), n_train, n_test, query.astype(np.int64), train.astype(np.int64),
                 database.astype(np.int64), p.topk)


def to_source(indices, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``[train; test]`` -> ``(is_test bool[k], index within its own set int64[k])``."""
    idx = np.asarray(indices, dtype=np.int64)
    is_test = idx >= n_train
    return is_test, np.where(is_test, idx - n_train, idx)


def gather(indices, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Rows ``indices`` of ``[train; test]`` (in the order of ``indices``) without concatenating the two arrays."""
    train, test = np.asarray(train), np.asarray(test)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(train) + len(test)):
        raise IndexError(f"indices must be in 0..{len(train) + len(test) - 1}")
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"train and test rows differ in shape: {train.shape[1:]} vs {test.shape[1:]}")
    is_test, local = to_source(idx, len(train))
    out = np.empty((len(idx),) + train.shape[1:], dtype=np.result_type(train, test))
    out[~is_test] = train[local[~is_test]]
    out[is_test] = test[local[is_test]]
    return out

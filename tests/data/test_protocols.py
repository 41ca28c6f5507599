"""Named splits: exact sizes, disjointness, stratification, determinism, errors, and the index mapping."""

from __future__ import annotations

import numpy as np
import pytest

from dsh.data.protocols import PROTOCOLS, Protocol, gather, get_protocol, make_split, to_source
from dsh.errors import DataError


def cifar_like_labels(seed: int = 0, n_classes: int = 10, train_per_class: int = 5000, test_per_class: int = 1000):
    """Labels shaped like CIFAR-10 (5,000 train + 1,000 test per class), shuffled so positions mean nothing."""
    rng = np.random.default_rng(seed)
    train = rng.permutation(np.repeat(np.arange(n_classes), train_per_class))
    test = rng.permutation(np.repeat(np.arange(n_classes), test_per_class))
    return train, test


TRAIN, TEST = cifar_like_labels()
POOL = np.concatenate([TRAIN, TEST])
N_TRAIN, N_ALL = len(TRAIN), len(POOL)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_contract(name):
    # every registered protocol: sorted unique in-range indices, queries never in the database, deterministic
    s = make_split(name, TRAIN, TEST, seed=0)
    assert s.protocol == name and s.n_train == N_TRAIN and s.n_test == len(TEST)
    for part in ("query", "train", "database"):
        idx = s.part(part)
        assert idx.dtype == np.int64 and len(idx) > 0
        assert np.all(np.diff(idx) > 0), f"{part} not sorted / unique"
        assert 0 <= idx[0] and idx[-1] < N_ALL
    assert not np.intersect1d(s.query, s.database).size
    assert all(s.part(part) is getattr(s, part) for part in s.PARTS)
    with pytest.raises(ValueError, match="unknown part 'test'"):
        s.part("test")
    again = make_split(name, TRAIN, TEST, seed=0)
    for part in ("query", "train", "database"):
        np.testing.assert_array_equal(s.part(part), again.part(part))
    assert isinstance(get_protocol(name), Protocol) and get_protocol(name).description


@pytest.mark.parametrize("name", ["dsh-paper", "cifar10-2"])
def test_fixed_split_protocols(name):
    s = make_split(name, TRAIN, TEST)
    np.testing.assert_array_equal(s.query, np.arange(N_TRAIN, N_ALL))  # the 10,000 test images
    np.testing.assert_array_equal(s.database, np.arange(N_TRAIN))  # the 50,000 training images
    np.testing.assert_array_equal(s.train, np.arange(N_TRAIN))
    assert s.topk is None
    # nothing is sampled: the seed changes nothing
    np.testing.assert_array_equal(make_split(name, TRAIN, TEST, seed=5).query, s.query)


def test_deephash_cifar10():
    s = make_split("cifar10", TRAIN, TEST)
    q, tr, db = s.query, s.train, s.database
    assert (len(q), len(tr), len(db)) == (1000, 5000, 54000)
    assert s.topk == 54000
    # pairwise disjoint, together the whole pool
    assert not np.intersect1d(q, tr).size and not np.intersect1d(q, db).size and not np.intersect1d(tr, db).size
    np.testing.assert_array_equal(np.sort(np.concatenate([q, tr, db])), np.arange(N_ALL))
    # stratified
    np.testing.assert_array_equal(np.bincount(POOL[q]), [100] * 10)
    np.testing.assert_array_equal(np.bincount(POOL[tr]), [500] * 10)
    np.testing.assert_array_equal(np.bincount(POOL[db]), [5400] * 10)
    # drawn from train and test alike
    assert (q >= N_TRAIN).any() and (q < N_TRAIN).any()


def test_deephash_cifar10_1():
    s = make_split("cifar10-1", TRAIN, TEST)
    q, tr, db = s.query, s.train, s.database
    assert (len(q), len(tr), len(db)) == (1000, 5000, 59000)
    assert s.topk is None
    assert not np.intersect1d(q, tr).size
    assert np.isin(tr, db).all()  # the database includes the training images
    np.testing.assert_array_equal(np.sort(np.concatenate([q, db])), np.arange(N_ALL))
    np.testing.assert_array_equal(np.bincount(POOL[q]), [100] * 10)
    np.testing.assert_array_equal(np.bincount(POOL[tr]), [500] * 10)


@pytest.mark.parametrize("name", ["cifar10", "cifar10-1"])
def test_seed_changes_the_sample(name):
    a, b = make_split(name, TRAIN, TEST, seed=0), make_split(name, TRAIN, TEST, seed=1)
    assert not np.array_equal(a.query, b.query)
    assert not np.array_equal(a.train, b.train)
    assert b.seed == 1
    # same query/train as DeepHash's cifar10 for the same seed: the two protocols draw identically
    c = make_split("cifar10" if name == "cifar10-1" else "cifar10-1", TRAIN, TEST, seed=0)
    np.testing.assert_array_equal(a.query, c.query)


def test_other_class_counts():
    train, test = cifar_like_labels(n_classes=3, train_per_class=550, test_per_class=100)
    s = make_split("cifar10", train, test, seed=2)
    assert (len(s.query), len(s.train), len(s.database)) == (300, 1500, 3 * 650 - 1800)
    pool = np.concatenate([train, test])
    np.testing.assert_array_equal(np.bincount(pool[s.query]), [100] * 3)


def test_too_few_items_in_a_class():
    # class 3 keeps no training item and 600 test items: exactly enough for 100 query + 500 train
    train = np.delete(TRAIN, np.flatnonzero(TRAIN == 3))
    test = np.delete(TEST, np.flatnonzero(TEST == 3)[:400])
    s = make_split("cifar10", train, test)
    assert np.isin(np.flatnonzero(np.concatenate([train, test]) == 3), np.concatenate([s.query, s.train])).all()
    # fewer is an error naming the class
    test = np.delete(test, np.flatnonzero(test == 3)[:50])
    with pytest.raises(DataError, match=r"class 3 has 550 items in train \+ test.*takes 600 per class"):
        make_split("cifar10", train, test)


def test_bad_inputs():
    with pytest.raises(DataError, match="unknown protocol 'nope'; known: cifar10, cifar10-1"):
        make_split("nope", TRAIN, TEST)
    with pytest.raises(DataError, match="single-label"):
        make_split("cifar10", np.eye(10, dtype=np.uint8)[TRAIN], TEST)
    with pytest.raises(DataError, match="single-label"):
        make_split("dsh-paper", TRAIN.astype(float), TEST)
    with pytest.raises(DataError, match="non-empty"):
        make_split("dsh-paper", TRAIN, TEST[:0])
    with pytest.raises(ValueError, match="already registered"):
        from dsh.data.protocols import register_protocol

        register_protocol(PROTOCOLS["cifar10"])


def test_index_mapping_back_to_train_and_test():
    s = make_split("cifar10", TRAIN, TEST, seed=3)
    is_test, local = to_source(s.query, N_TRAIN)
    assert is_test.any() and (~is_test).any()
    labels = np.empty(len(local), dtype=np.int64)
    labels[is_test], labels[~is_test] = TEST[local[is_test]], TRAIN[local[~is_test]]
    np.testing.assert_array_equal(labels, POOL[s.query])
    # gather takes rows of any pair of arrays in index order, here fake "images" that remember their position
    train_images = np.stack([np.arange(N_TRAIN), np.zeros(N_TRAIN, int)], axis=1)
    test_images = np.stack([np.arange(len(TEST)), np.ones(len(TEST), int)], axis=1)
    rows = gather(s.database, train_images, test_images)
    assert rows.shape == (54000, 2)
    np.testing.assert_array_equal(rows[:, 1] == 1, s.database >= N_TRAIN)
    np.testing.assert_array_equal(rows[:, 0], to_source(s.database, N_TRAIN)[1])
    np.testing.assert_array_equal(gather(s.query, TRAIN, TEST), POOL[s.query])
    with pytest.raises(IndexError):
        gather([N_ALL], TRAIN, TEST)

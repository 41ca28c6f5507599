"""Protocol parts as image sets: the right images, in the protocol's sizes, and the run's protocol followed."""

import numpy as np
import pytest
import torch

import dsh.data.splits
from dsh.data import load_split
from dsh.data.protocols import make_split
from dsh.data.splits import load_part, load_parts, protocol_topk
from dsh.errors import DataError


def test_without_protocol_the_dataset_splits():
    assert len(load_part("digits", "test")) == len(load_split("digits", "test"))
    with pytest.raises(DataError, match="needs a protocol"):
        load_part("digits", "query")


def test_split_protocol_on_digits():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    q = load_part("digits", "query", protocol="dsh-paper")
    db = load_part("digits", "database", protocol="dsh-paper")
    assert torch.equal(q.images, test.images) and torch.equal(db.images, train.images)
    fit = load_part("digits", "fit", protocol="dsh-paper")
    val = load_part("digits", "val", protocol="dsh-paper")
    assert len(fit) + len(val) == len(train)
    assert protocol_topk("dsh-paper") is None and protocol_topk("cifar10") == 54000 and protocol_topk(None) is None


@pytest.mark.parametrize("protocol, parts", [(None, ("fit", "val", "test")),
                                             ("dsh-paper", ("query", "database", "fit", "val"))])
def test_parts_together_equal_parts_alone_and_read_each_split_once(monkeypatch, protocol, parts):
    alone = [load_part("digits", p, protocol=protocol) for p in parts]
    reads = []
    real = dsh.data.splits.load_split
    monkeypatch.setattr(dsh.data.splits, "load_split",
                        lambda name, split, **kw: reads.append(split) or real(name, split, **kw))
    together = load_parts("digits", parts, protocol=protocol)
    assert sorted(reads) == sorted(set(reads))  # train and test read at most once each
    for a, b in zip(alone, together):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.name == b.name


def test_sampled_protocol_too_few_images_is_a_clear_error():
    with pytest.raises(DataError, match="class"):
        load_part("digits", "query", protocol="cifar10")


def test_sampled_protocol_on_mnist(shared_data):
    train = load_split("mnist", "train", data_root=shared_data, download=False)
    test = load_split("mnist", "test", data_root=shared_data, download=False)
    split = make_split("cifar10", train.labels.numpy(), test.labels.numpy(), seed=0)
    pool_images = torch.cat([train.images, test.images])
    pool_labels = torch.cat([train.labels, test.labels])
    for part, size in (("query", 1000), ("train", 5000), ("database", 70000 - 6000)):
        s = load_part("mnist", part, protocol="cifar10", data_root=shared_data, download=False)
        assert len(s) == size
        # the same images, in the order of the protocol's sorted indices into [train; test]
        assert torch.equal(s.images, pool_images[split.part(part)])
        assert torch.equal(s.labels, pool_labels[split.part(part)])
    q = load_part("mnist", "query", protocol="cifar10", data_root=shared_data, download=False)
    assert np.bincount(q.labels.numpy()).tolist() == [100] * 10
    fit = load_part("mnist", "fit", protocol="cifar10", data_root=shared_data, download=False)
    assert len(fit) == 4500  # 5,000 training images minus a 10% validation split

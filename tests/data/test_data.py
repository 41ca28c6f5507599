"""dsh.data: splits, cache, errors, and the batch pipeline checked against slow per-image references."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dsh.data.folder as folder_mod
import dsh.data.sources as sources_mod
from dsh.data import (
    Augment,
    BatchLoader,
    balanced_batches,
    default_augment,
    load_split,
    stratified_subset,
)
from dsh.errors import DataError
from dsh.models import Normalizer
from dsh.utils.imageio import ImageList, decode_files, to_model_input

TINY_CLASSES = ["ant", "bee", "cat"]  # the classes of the tiny_image_tree fixture


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache folder and no DSH_DATA from the environment."""
    monkeypatch.setenv("DSH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DSH_DATA", raising=False)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------------------------
# splits


def test_digits_splits_shapes_and_partition():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    val, fit = load_split("digits", "val"), load_split("digits", "fit")
    for s in (train, test, val, fit):
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (1, 8, 8)
        assert s.labels.dtype == torch.int64 and s.labels.shape == (len(s),)
        assert s.class_names == [str(i) for i in range(10)] and s.paths is None
    assert len(train) + len(test) == 1797 and len(test) == round(0.2 * 1797)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert len(val) == len(train) // 10 and len(fit) + len(val) == len(train)
    # fit and val are disjoint and their union is train: match rows of (image bytes, label)
    def rows(s):
        return [bytes(x.numpy().tobytes()) + bytes([int(y)]) for x, y in zip(s.images, s.labels)]

    assert sorted(rows(fit) + rows(val)) == sorted(rows(train))
    # every class is in the test split, in proportion
    assert torch.bincount(test.labels).min() >= 35


def test_val_split_is_seeded_stratified_and_sized():
    a, b = load_split("digits", "val", seed=3), load_split("digits", "val", seed=3)
    c = load_split("digits", "val", seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert len(load_split("digits", "val", val_size=100)) == 100
    assert len(load_split("digits", "val", val_size=0.25)) == round(0.25 * len(load_split("digits", "train")))
    assert len(load_split("digits", "fit", val_size=0)) == len(load_split("digits", "train"))
    with pytest.raises(DataError, match="val_size"):
        load_split("digits", "val", val_size=10**6)

    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    idx = stratified_subset(labels, 40, seed=1)
    assert len(idx) == 40 and len(set(idx.tolist())) == 40 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [20, 10, 6, 4]
    assert np.array_equal(idx, stratified_subset(labels, 40, seed=1))


def test_unknown_names_and_missing_data_root():
    with pytest.raises(DataError, match="unknown dataset"):
        load_split("nope", "train")
    with pytest.raises(DataError, match="unknown split"):
        load_split("digits", "query")
    for name in ("mnist", "cifar10", "folder"):
        with pytest.raises(DataError) as e:
            load_split(name, "train")
        assert one_line_error(e) == f"dataset {name} needs --data-root or DSH_DATA"


# ---------------------------------------------------------------------------------------------------------------
# augmentation and normalisation


def reference_augment(x: torch.Tensor, p: int, pad_mode: str, dy, dx, flips) -> torch.Tensor:
    """One image at a time: pad, slice the window at the offset, mirror it."""
    out = []
    h, w = x.shape[2:]
    for i in range(x.shape[0]):
        img = x[i : i + 1].float()
        img = F.pad(img, (p,) * 4, mode="reflect" if pad_mode == "reflect" else "constant")[0]
        win = img[:, p + int(dy[i]) : p + int(dy[i]) + h, p + int(dx[i]) : p + int(dx[i]) + w]
        out.append(win.flip(-1) if bool(flips[i]) else win)
    return torch.stack(out).to(x.dtype)


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
@pytest.mark.parametrize("p,flip", [(4, True), (2, False), (0, True)])
def test_augment_matches_per_image_reference(p, flip, pad_mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 9, 7), dtype=torch.uint8, generator=g)
    aug = Augment(crop_padding=p, flip=flip, pad_mode=pad_mode)
    dy, dx, flips = aug.sample(16, torch.Generator().manual_seed(1))
    assert dy.abs().max() <= p and dx.abs().max() <= p and (flips.any() == flip)
    y = aug.apply(x, dy, dx, flips)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert torch.equal(y, reference_augment(x, p, pad_mode, dy, dx, flips))
    # __call__ draws exactly those offsets from the same generator state
    assert torch.equal(aug(x, torch.Generator().manual_seed(1)), y)
    # other dtypes pass through unchanged in type
    assert aug.apply(x.float(), dy, dx, flips).dtype == torch.float32


def test_augment_flip_and_shift_by_hand():
    x = torch.arange(12, dtype=torch.uint8).reshape(1, 1, 3, 4)
    zero = torch.zeros(1, dtype=torch.int64)
    flipped = Augment(flip=True).apply(x, zero, zero, torch.ones(1, dtype=torch.bool))
    assert flipped[0, 0, 0].tolist() == [3, 2, 1, 0]
    shifted = Augment(crop_padding=1, pad_mode="zeros").apply(x, zero + 1, zero, torch.zeros(1, dtype=torch.bool))
    assert shifted[0, 0].tolist() == [[4, 5, 6, 7], [8, 9, 10, 11], [0, 0, 0, 0]]
    assert default_augment("mnist") == Augment(2, False, "zeros")
    assert default_augment("cifar10").flip and default_augment("folder").crop_padding == 4
    assert not default_augment("digits").flip


def test_normalizer_fit_round_trip_and_dict():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 5, 6), dtype=torch.uint8, generator=g)
    norm = Normalizer.fit(images, chunk=7)
    ref = images.double() / 255
    assert np.allclose(norm.mean, ref.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(norm.std, ref.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-6)
    x = norm(images)
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.allclose(norm(images.float() / 255), x, atol=1e-5)  # float input on the 0..1 scale
    again = Normalizer.from_dict(norm.to_dict())
    assert again == norm and torch.equal(again(images), x)
    cl = images.contiguous(memory_format=torch.channels_last)
    assert norm(cl).is_contiguous(memory_format=torch.channels_last)
    assert Normalizer.fit(torch.full((2, 1, 2, 2), 7, dtype=torch.uint8)).std[0] > 0  # constant channel


# ---------------------------------------------------------------------------------------------------------------
# the batch loader


def labelled_images(n: int, n_classes: int):
    from dsh.data import ImageSet

    images = torch.arange(n, dtype=torch.int64).reshape(n, 1, 1, 1).expand(n, 1, 2, 2) % 256
    return ImageSet(images.to(torch.uint8).contiguous(), torch.arange(n) % n_classes,
                    [str(c) for c in range(n_classes)], None, "toy")


def test_loader_random_pass_is_a_seeded_permutation():
    data = labelled_images(250, 5)
    loader = BatchLoader(data, batch_size=64, seed=7)
    assert len(loader) == 4 and len(BatchLoader(data, 64, drop_last=True)) == 3
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 2, 2)
        ids = (x[:, 0, 0, 0] * 255).round().long()  # identity normaliser: the pixel is the image's number
        assert torch.equal(y, data.labels[ids])
        seen += ids.tolist()
    assert sorted(seen) == list(range(250)) and seen != list(range(250))
    first = [y.tolist() for _, y in BatchLoader(data, 64, seed=7)]
    assert first == [y.tolist() for _, y in BatchLoader(data, 64, seed=7)]
    assert first != [y.tolist() for _, y in BatchLoader(data, 64, seed=8)]
    ordered = torch.cat([y for _, y in BatchLoader(data, 64, shuffle=False)])
    assert torch.equal(ordered, data.labels)


def test_loader_augments_and_normalises_like_the_parts():
    data = load_split("digits", "fit")
    norm = Normalizer.fit(data.images)
    aug = default_augment("digits")
    loader = BatchLoader(data, 32, shuffle=False, augment=aug, normalizer=norm, channels_last=True,
                         generator=torch.Generator().manual_seed(5))
    x, y = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(5)  # an in-order pass draws only the augmentation from it
    expected = norm(aug(data.images[:32], g))
    assert torch.allclose(x, expected) and torch.equal(y, data.labels[:32])


def test_balanced_batches_have_p_classes_by_k_images():
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 12 + [3] * 9 + [4] * 3)
    g = torch.Generator().manual_seed(0)
    batches = balanced_batches(labels, n_batches=20, p=4, k=3, generator=g)
    assert batches.shape == (20, 12)
    for row in batches:
        groups = labels[row].reshape(4, 3)
        assert (groups == groups[:, :1]).all()  # K images of one class per group
        assert len(set(groups[:, 0].tolist())) == 4  # P distinct classes
        for grp in row.reshape(4, 3):
            assert len(set(grp.tolist())) == 3  # no class here has fewer than K images: no repeats
    # images of a class are dealt evenly: class 4 (3 images) shows each of its images equally often
    counts = torch.bincount(batches.flatten(), minlength=len(labels))[labels == 4]
    assert counts.min() == counts.max()

    data = load_split("digits", "fit")
    loader = BatchLoader(data, 40, sampler="balanced", seed=1)
    assert (loader.p, loader.k) == (10, 4) and len(loader) == len(data) // 40
    x, y = next(iter(loader))
    assert x.shape[0] == 40 and (y.reshape(10, 4) == y.reshape(10, 4)[:, :1]).all()
    assert len(set(y.tolist())) == 10
    with pytest.raises(ValueError, match="at least 2"):
        BatchLoader(data, 8, sampler="balanced", images_per_class=8)


# ---------------------------------------------------------------------------------------------------------------
# image folders


def test_folder_dataset_loads_with_paths_and_classes(tiny_image_tree):
    train = load_split("folder", "train", tiny_image_tree)
    test = load_split("folder", "test", tiny_image_tree)
    assert train.images.shape == (12, 3, 6, 8) and test.images.shape == (6, 3, 6, 8)
    assert train.class_names == list(TINY_CLASSES) and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert train.paths[5] == "train/bee/01.png" and test.paths[0] == "test/ant/00.png"
    # pixel (0, 0) holds (class, split, number): the decoded image is the file named in paths
    for s, split_id in ((train, 0), (test, 1)):
        for img, label, path in zip(s.images, s.labels, s.paths):
            assert img[:, 0, 0].tolist() == [int(label), split_id, int(path[-6:-4])]
    assert load_split("folder", "test", tiny_image_tree, image_size=5).images.shape[1:] == (3, 5, 5)
    val = load_split("folder", "val", tiny_image_tree, val_size=3)
    assert len(val) == 3 and sorted(val.labels.tolist()) == [0, 1, 2] and all(p.startswith("train/") for p in
                                                                                 val.paths)
    resized = load_split("folder", "train", tiny_image_tree, image_size=(4, 4))
    assert resized.images.shape == (12, 3, 4, 4)


def test_folder_cache_hit_invalidation_and_corruption(tiny_image_tree, tmp_path, monkeypatch, caplog):
    decodes = []
    real = folder_mod.decode_files
    monkeypatch.setattr(folder_mod, "decode_files", lambda *a, **k: decodes.append(1) or real(*a, **k))
    first = load_split("folder", "train", tiny_image_tree)
    second = load_split("folder", "train", tiny_image_tree)
    assert len(decodes) == 1, "the second load must come from the cache"
    assert torch.equal(first.images, second.images) and second.paths == first.paths
    cache = tmp_path / "cache"
    assert len(list(cache.glob("folder-train-*.json"))) == 1

    # a changed file changes the fingerprint: decoded again, the stale entry removed
    changed = tiny_image_tree / "train" / "bee" / "02.png"
    a = np.full((6, 8, 3), 250, dtype=np.uint8)
    Image.fromarray(a).save(changed)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    third = load_split("folder", "train", tiny_image_tree)
    assert len(decodes) == 2 and int(third.images[6, 0, 0, 0]) == 250
    assert len(list(cache.glob("folder-train-*.json"))) == 1

    # a truncated cache file is rebuilt, not fatal
    npy = next(cache.glob("folder-train-*.images.npy"))
    npy.write_bytes(npy.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="dsh.data"):
        fourth = load_split("folder", "train", tiny_image_tree)
    assert len(decodes) == 3 and torch.equal(fourth.images, third.images)
    assert "unreadable" in caplog.text
    load_split("folder", "train", tiny_image_tree)
    assert len(decodes) == 3


def test_folder_errors_name_the_path(tmp_path, image_tree_writer):
    def err(root, split="train", **kw) -> str:
        with pytest.raises(DataError) as e:
            load_split("folder", split, root, **kw)
        return one_line_error(e)

    missing = tmp_path / "nowhere"
    assert str(missing) in err(missing)

    root = image_tree_writer(tmp_path / "t")
    (root / "train" / "dog").mkdir()
    msg = err(root)
    assert "dog" in msg and "no images" in msg
    (root / "train" / "dog").rmdir()

    (root / "test" / "emu").mkdir()
    assert "emu" in err(root, "test") and "lacks" in err(root, "test")
    (root / "test" / "emu").rmdir()

    bad = root / "train" / "cat" / "99.jpg"
    bad.write_bytes(b"this is not a jpeg")
    assert str(bad) in err(root) and "cannot decode" in err(root)
    bad.unlink()

    odd = root / "train" / "ant" / "big.png"
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(odd)
    assert str(odd) in err(root) and "--image-size" in err(root)
    assert load_split("folder", "train", root, image_size=6).images.shape == (13, 3, 6, 6)
    odd.unlink()

    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    assert "no class folders" in err(empty) and str(empty) in err(empty)
    for c in TINY_CLASSES:
        (empty / "train" / c).mkdir()
    assert str(empty / "train" / "ant") in err(empty)
    assert "no images" in err(empty, "test") and str(empty / "test") in err(empty, "test")

    no_test = tmp_path / "no_test"
    image_tree_writer(no_test)
    for f in (no_test / "test").rglob("*.png"):
        f.unlink()
    for d in (no_test / "test").iterdir():
        d.rmdir()
    (no_test / "test").rmdir()
    assert "no test/ subfolder" in err(no_test, "test")


def test_parallel_decode_and_worker_errors(tmp_path):
    paths = []
    for i in range(520):  # enough for two worker processes
        p = tmp_path / f"{i:03d}.png"
        Image.fromarray(np.full((3, 4), i % 256, dtype=np.uint8)).save(p)
        paths.append(p)
    images = decode_files(paths, mode="L", workers=2)
    assert images.shape == (520, 1, 3, 4) and images[:, 0, 0, 0].tolist() == [i % 256 for i in range(520)]
    rgb = to_model_input(paths[:3], (3, 2, 2))
    assert rgb.shape == (3, 3, 2, 2) and rgb.dtype == np.uint8 and int(rgb[2, 1, 1, 1]) == 2
    paths[400].write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=str(paths[400])):
        decode_files(paths, mode="L", workers=2)
    with pytest.raises(DataError, match="no such image file"):
        to_model_input([tmp_path / "missing.png"], (3, 2, 2))


def test_image_list_labels_from_subfolders(tiny_image_tree):
    listing = ImageList(tiny_image_tree / "test", class_names=["bee", "ant"])
    images = to_model_input(listing.full_paths(), (1, 3, 3))
    assert images.shape == (6, 1, 3, 3) and listing.class_names == ["bee", "ant"]
    assert listing.labels.tolist() == [1, 1, 0, 0, -1, -1] and listing.files[0] == "ant/00.png"


# ---------------------------------------------------------------------------------------------------------------
# mnist and cifar10 files (no network: downloads are disabled or replaced)


def test_mnist_missing_files_and_failed_download(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_split("mnist", "train", tmp_path, download=False)
    assert one_line_error(e) == f"mnist: no MNIST files under {tmp_path} (download disabled)"

    def offline(dataset, root):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got URLError")

    monkeypatch.setattr(sources_mod, "download_torchvision", offline)
    monkeypatch.setenv("DSH_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_split("cifar10", "test")
    assert one_line_error(e).startswith(f"cifar10: no CIFAR-10 (cifar-10-batches-py) files under {tmp_path} and the "
                                        f"download failed (Error downloading")
    with pytest.raises(DataError) as e:
        load_split("mnist", "train")
    assert f"mnist: no MNIST files under {tmp_path} and the download failed" in one_line_error(e)


def test_cifar10_python_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(10)]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = (rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, 10, 4).tolist())
        with open(d / name, "wb") as f:
            pickle.dump({b"data": batches[name][0], b"labels": batches[name][1]}, f)
    train = load_split("cifar10", "train", tmp_path, download=False)
    test = load_split("cifar10", "test", d, download=False)  # the batches folder itself works too
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.class_names == names and test.labels.tolist() == batches["test_batch"][1]
    assert torch.equal(test.images.reshape(4, -1), torch.from_numpy(batches["test_batch"][0]))
    assert load_split("cifar10", "test", tmp_path, image_size=16).images.shape == (4, 3, 16, 16)


# ---------------------------------------------------------------------------------------------------------------
# the real offline data


def test_mnist_from_shared_data(shared_data):
    train = load_split("mnist", "train", shared_data, download=False)
    test = load_split("mnist", "test", shared_data / "MNIST", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    val = load_split("mnist", "val", shared_data, download=False)
    assert len(val) == 5000 and len(load_split("mnist", "fit", shared_data, download=False)) == 55000
    assert (torch.bincount(val.labels) - torch.bincount(train.labels) / 12).abs().max() <= 1
    up = load_split("mnist", "test", shared_data, image_size=32, download=False)
    assert up.images.shape == (10000, 1, 32, 32)


def test_cifar10_jpeg_test_split_from_shared_data(shared_data):
    root = shared_data / "cifar10-jpeg"
    if not root.is_dir():
        pytest.skip(f"no {root}")
    test = load_split("folder", "test", root, workers=2)
    assert test.images.shape == (10000, 3, 32, 32) and test.class_names[0] == "airplane"
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.paths[0] == "test/airplane/0000.jpg"
    assert 100 < float(test.images.float().mean()) < 140

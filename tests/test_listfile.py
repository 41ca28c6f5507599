"""The multi-label ``list`` dataset (DeepHash-pytorch's ``path l1 ... lC`` lists) and the MNIST mosaic script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsh.data import load_split
from dsh.errors import DataError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def write_list_dataset(root: Path, mode: str = "RGB") -> dict[str, np.ndarray]:
    """``root/{train,test,database}.txt`` over 6x5 PNGs in ``root/img/``; pixel (0, 0) numbers each image."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    labels = {"train": rng.integers(0, 2, (7, 4)), "test": rng.integers(0, 2, (3, 4)),
              "database": rng.integers(0, 2, (5, 4))}
    k = 0
    for split, lab in labels.items():
        lines = []
        for row in lab:
            a = np.full((6, 5, 3) if mode == "RGB" else (6, 5), 50, dtype=np.uint8)
            a[0, 0] = k
            Image.fromarray(a, mode).save(root / "img" / f"{k}.png")
            lines.append(f"img/{k}.png " + " ".join(map(str, row)))
            k += 1
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n\n")  # a blank line at the end is fine
    return labels


def test_list_dataset_loads_multi_hot_labels(tmp_path):
    labels = write_list_dataset(tmp_path / "d")
    k = 0
    for split, lab in labels.items():
        s = load_split("list", split, tmp_path / "d")
        assert s.multi_label and str(s.labels.dtype) == "torch.uint8"
        np.testing.assert_array_equal(s.labels.numpy(), lab.astype(np.uint8))
        assert s.images.shape == (len(lab), 3, 6, 5)
        assert s.paths == [f"img/{k + i}.png" for i in range(len(lab))]
        assert s.images[:, 0, 0, 0].tolist() == list(range(k, k + len(lab)))
        assert s.class_names == ["0", "1", "2", "3"]
        k += len(lab)
    assert load_split("list", "train", tmp_path / "d").labels.shape[1] == 4
    again = load_split("list", "train", tmp_path / "d")  # from the cache
    np.testing.assert_array_equal(again.labels.numpy(), labels["train"].astype(np.uint8))
    # carved splits work on multi-hot labels (a plain seeded subset)
    val = load_split("list", "val", tmp_path / "d", val_size=2)
    fit = load_split("list", "fit", tmp_path / "d", val_size=2)
    assert len(val) == 2 and len(fit) == 5 and fit.labels.shape == (5, 4)
    # an edited list is a new cache entry: labels live in the text, not in the images
    text = (tmp_path / "d" / "train.txt").read_text().replace("img/0.png 0", "img/0.png 1", 1)
    (tmp_path / "d" / "train.txt").write_text(text)
    (tmp_path / "d" / "classes.txt").write_text("sky\nsea\ncat\ndog\n")
    s = load_split("list", "train", tmp_path / "d")
    assert s.labels[0, 0] == 1 and s.class_names == ["sky", "sea", "cat", "dog"]


def test_grey_images_stay_grey(tmp_path):
    write_list_dataset(tmp_path / "g", mode="L")
    assert load_split("list", "test", tmp_path / "g").images.shape == (3, 1, 6, 5)


@pytest.mark.parametrize("line,why", [
    ("img/0.png 0 1 2 0", r"test.txt:2: labels must be 0 or 1, got '2'"),
    ("img/0.png 0 1", r"test.txt:2: 2 labels, expected 4"),
    ("img/0.png", r"test.txt:2: expected 'path l1 ... lC'"),
    ("img/nope.png 0 1 0 1", r"test.txt:2: no such image .*nope.png"),
])
def test_bad_lines_are_refused_with_file_and_line(tmp_path, line, why):
    write_list_dataset(tmp_path / "d")
    lines = (tmp_path / "d" / "test.txt").read_text().splitlines()
    lines[1] = line
    (tmp_path / "d" / "test.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=why) as err:
        load_split("list", "test", tmp_path / "d")
    assert "\n" not in str(err.value)


def test_layout_errors(tmp_path):
    write_list_dataset(tmp_path / "d")
    (tmp_path / "d" / "database.txt").unlink()
    with pytest.raises(DataError, match="has no database.txt"):
        load_split("list", "database", tmp_path / "d")
    with pytest.raises(DataError, match="unknown split 'database'"):
        load_split("digits", "database")
    (tmp_path / "d" / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="classes.txt: 2 class names, but the lists have 4"):
        load_split("list", "train", tmp_path / "d")


def test_mnist_mosaic_script(tmp_path, shared_data):
    sys.path.insert(0, str(BENCH))
    from tools import make_mnist_mosaic as mm

    out = tmp_path / "mosaic"
    counts = {"train": 12, "test": 5, "database": 8}
    body = mm.make(shared_data, out, counts, seed=3, log=lambda m: None)
    assert body["stats"]["train"]["images"] == 12
    train = load_split("list", "train", out)
    assert train.images.shape == (12, 1, 56, 56) and train.labels.shape == (12, 10)
    assert (train.labels.sum(1) >= 1).all() and (train.labels.sum(1) <= 4).all()
    assert train.class_names == [str(c) for c in range(10)]
    for split, n in counts.items():
        assert len(load_split("list", split, out)) == n
    # a cell is black exactly where no digit was placed; a labelled digit class appears in some cell
    cells = train.images[:, 0].reshape(12, 2, 28, 2, 28).permute(0, 1, 3, 2, 4).reshape(12, 4, -1)
    filled = (cells.amax(2) > 0).sum(1)
    assert (filled >= train.labels.sum(1)).all()  # two cells may hold the same digit class
    # deterministic: the same seed writes the same pixels and labels
    other = tmp_path / "again"
    mm.make(shared_data, other, counts, seed=3, log=lambda m: None)
    assert (out / "train.txt").read_text() == (other / "train.txt").read_text()
    assert (out / "images/test/00004.png").read_bytes() == (other / "images/test/00004.png").read_bytes()
    # a second run with the same settings writes nothing; other settings are refused
    said = []
    mm.make(shared_data, out, counts, seed=3, log=said.append)
    assert "nothing written" in said[0]
    with pytest.raises(SystemExit, match="other settings"):
        mm.make(shared_data, out, counts, seed=4, log=lambda m: None)


def test_list_parts_include_the_database(tmp_path):
    from dsh.data.splits import load_parts

    labels = write_list_dataset(tmp_path / "d")
    test, database = load_parts("list", ("test", "database"), data_root=tmp_path / "d")
    np.testing.assert_array_equal(database.labels.numpy(), labels["database"].astype(np.uint8))
    assert len(test) == 3
    with pytest.raises(DataError, match="needs a protocol"):
        load_parts("digits", ("database",))


def write_digit_pairs(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    """A multi-label ``list`` dataset from the digits: each image two 8x8 digits side by side (8x16), labelled with
    the classes present (one or two of the ten)."""
    from dsh.data import load_split as load

    digits = load("digits", "train")
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    k = 0
    for split, n in counts.items():
        lines = []
        for _ in range(n):
            a, b = rng.integers(0, len(digits.labels), 2)
            pixels = np.concatenate([digits.images[a, 0].numpy(), digits.images[b, 0].numpy()], axis=1)
            Image.fromarray(pixels, "L").save(root / "img" / f"{k}.png")
            row = np.zeros(10, dtype=int)
            row[[int(digits.labels[a]), int(digits.labels[b])]] = 1
            lines.append(f"img/{k}.png " + " ".join(map(str, row)))
            k += 1
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_training_on_multi_hot_labels(tmp_path):
    """`dsh train --dataset list` learns from multi-hot labels: pairs sharing a label are the similar ones, the
    validation mAP is the multi-label one, and the codes beat chance on the held-out test list."""
    from dsh.config import TrainConfig
    from dsh.eval.metrics import mean_average_precision
    from dsh.runtime.encoder import Encoder
    from dsh.train.loop import train

    write_digit_pairs(tmp_path / "pairs", {"train": 2000, "test": 100, "database": 300})
    cfg = TrainConfig(dataset="list", data_root=str(tmp_path / "pairs"), nbits=16, epochs=8, batch_size=64,
                      lr=3e-3, val_size=200, tensorboard=True, projector_samples=20)
    result = train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["classes"] == 10 and summary["warnings"] == []
    assert "val_codes" in result.history[-1] and "val_class_codes" not in result.history[-1]
    test = load_split("list", "test", tmp_path / "pairs")
    database = load_split("list", "database", tmp_path / "pairs")
    enc = Encoder.from_run(tmp_path / "run", backend="torch")
    q, db = enc.encode_array(test.images.numpy()).codes, enc.encode_array(database.images.numpy()).codes
    trained = mean_average_precision(q, db, test.labels.numpy(), database.labels.numpy(), nbits=16)
    rng = np.random.default_rng(0)  # the same images with codes of no meaning
    chance = mean_average_precision(rng.integers(0, 256, q.shape, dtype=np.uint8),
                                    rng.integers(0, 256, db.shape, dtype=np.uint8), test.labels.numpy(),
                                    database.labels.numpy(), nbits=16)
    assert trained > chance + 0.08, (trained, chance)  # measured 0.48 against 0.36


def test_the_balanced_sampler_refuses_multi_hot_labels(tmp_path):
    from dsh.config import TrainConfig
    from dsh.errors import ConfigError
    from dsh.train.loop import train

    write_digit_pairs(tmp_path / "pairs", {"train": 200, "test": 10, "database": 10})
    cfg = TrainConfig(dataset="list", data_root=str(tmp_path / "pairs"), nbits=8, epochs=1, batch_size=32,
                      sampler="balanced", tensorboard=False)
    with pytest.raises(ConfigError, match="sampler .--sampler. balanced .* multi-hot labels"):
        train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()

"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]  # the repository's root: tests/ is in it, and this file in tests/

# ---------------------------------------------------------------------------------------------------------------
# isolation


@pytest.fixture(autouse=True, scope="session")
def isolated_dataset_cache(tmp_path_factory):
    """Decoded datasets go to a temporary cache, never the user's ~/.cache/dsh."""
    old = os.environ.get("DSH_CACHE")
    os.environ["DSH_CACHE"] = str(tmp_path_factory.mktemp("dsh-cache"))
    yield
    if old is None:
        os.environ.pop("DSH_CACHE", None)
    else:
        os.environ["DSH_CACHE"] = old


# ---------------------------------------------------------------------------------------------------------------
# data fixtures


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline datasets folder (MNIST/, cifar10-jpeg/): $DSH_TEST_DATA, else ../shared/data beside the repo.
    Tests that use it are skipped where it is absent."""
    env = os.environ.get("DSH_TEST_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"offline datasets not found at {root} (set DSH_TEST_DATA to the folder with MNIST/ and "
                    f"cifar10-jpeg/)")
    return root


TINY_CLASSES = ("ant", "bee", "cat")


def write_tiny_image_tree(root: Path, n_train: int = 4, n_test: int = 2, size: tuple[int, int] = (6, 8)) -> Path:
    """``root/{train,test}/{ant,bee,cat}/NN.png``: RGB images of ``size`` (h, w) whose pixels encode their class,
    split and number (pixel (0, 0) = (class, split, n)), so a test can tell them apart."""
    import numpy as np
    from PIL import Image

    for s, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        for c, name in enumerate(TINY_CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.full(size + (3,), 40 * c + 10 * i, dtype=np.uint8)
                a[0, 0] = (c, s, i)
                Image.fromarray(a).save(d / f"{i:02d}.png")
    return root


@pytest.fixture
def image_tree_writer():
    """:func:`write_tiny_image_tree`, to make image folder datasets of one's own."""
    return write_tiny_image_tree


@pytest.fixture
def tiny_image_tree(tmp_path: Path) -> Path:
    """A 3-class (ant, bee, cat) image folder dataset, 12 train and 6 test PNGs of 6x8, in a temporary folder."""
    return write_tiny_image_tree(tmp_path / "tiny")


# ---------------------------------------------------------------------------------------------------------------
# a trained run and image files, shared by the library, service and browser tests


def train_digits_run(out: Path, epochs: int = 3, seed: int = 0) -> Path:
    """A short digits run (8x8 grey, 8-bit codes) in ``out``."""
    from dsh.config import TrainConfig
    from dsh.train.loop import train

    train(TrainConfig(dataset="digits", nbits=8, epochs=epochs, batch_size=64, tensorboard=False, seed=seed), out,
          progress=False, log=lambda m: None)
    return out


def write_digit_folder(folder: Path, n: int, scale: int = 1) -> list[Path]:
    """The first ``n`` digits test images as PNG files ``folder/<class>/NNN.png`` (scaled up ``scale`` times with
    nearest-neighbour, so a page shows them); returns the files in sorted order."""
    from PIL import Image

    from dsh.data import load_split

    test = load_split("digits", "test")
    for i in range(n):
        d = folder / test.class_names[int(test.labels[i])]
        d.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(test.images[i, 0].numpy(), "L")
        if scale != 1:
            img = img.resize((8 * scale, 8 * scale), Image.NEAREST)
        img.save(d / f"{i:03d}.png")
    return sorted(folder.rglob("*.png"))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """One short digits run for every test that only needs some trained model (3 epochs, seed 0)."""
    return train_digits_run(tmp_path_factory.mktemp("digits-run") / "run")


# ---------------------------------------------------------------------------------------------------------------
# a Milvus server, for the Milvus backend's tests, the agreement test and the replica tests


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory) -> str:
    """The URI of a real Milvus server: ``$DSH_TEST_MILVUS_URI`` where set (a server of one's own, e.g. one that
    ``python tests/milvus_server.py DIR`` keeps running), else an embedded Milvus 2.3 server (the ``milvus``
    package) started for this session in a temporary folder and killed after it. Skipped, saying why, where
    neither can be had: the package is missing, or the server does not come up (one embedded server per machine:
    its etcd takes the fixed port 2380)."""
    uri = os.environ.get("DSH_TEST_MILVUS_URI")
    if uri:
        yield uri
        return
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed: pip install 'dsh[milvus]'")
    from milvus_server import EmbeddedMilvus, why_not

    reason = why_not()
    if reason:
        pytest.skip(reason)
    server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
    except RuntimeError as e:
        pytest.skip(str(e))
    try:
        yield server.uri
    finally:
        server.stop()

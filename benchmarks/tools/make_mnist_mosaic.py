"""A real multi-label test set from MNIST: 2x2 mosaics of digits, in DeepHash-pytorch's list format.

Each image is 56x56 grey: a 2x2 grid of 28x28 cells, of which 1 to 4 (uniformly) hold an MNIST digit and the rest
stay black; its labels are the set of digits present, multi-hot over the 10 classes. Written once, deterministically
(``--seed``), as the ``list`` dataset reads it (:mod:`dsh.data.listfile`)::

    OUT/train.txt  OUT/test.txt  OUT/database.txt  OUT/classes.txt  OUT/mosaic.json
    OUT/images/{train,test,database}/NNNNN.png      # lines: images/train/00000.png 0 1 0 0 0 0 0 1 0 0

    python benchmarks/tools/make_mnist_mosaic.py [--mnist ../shared/data] [--out ~/.cache/dsh/mnist-mosaic]
    dsh train --dataset list --data-root ~/.cache/dsh/mnist-mosaic ...

Defaults: 20,000 train / 2,000 test / 20,000 database mosaics. Train and database mosaics are made of MNIST's
training digits, test mosaics of its test digits only, so no test digit was ever seen in training or sits in the
database. Train and database are separate draws from the same training digits (DeepHash-pytorch's NUS-WIDE
lists sample train from the database instead; separate draws keep a training mosaic out of the database).
20,000 train mosaics hold 50,000 digits (MNIST's own scale for a training set), 2,000 queries against 20,000
database images keep a tie-aware mAP@all a matter of seconds on a CPU, and 1-4 digits a mosaic (2.26 distinct
classes on average, seed 0) make 43% of query-database pairs share a digit (similar) and 57% share none: a
balanced similarity that codes must learn, where 4 digits in every mosaic would make nearly every pair similar.
Seed 0 writes 42,000 PNGs, 26 MB, in about 15 s on one core.

A second run with the same settings finds ``OUT/mosaic.json`` and writes nothing; other settings into the same
folder are refused (remove it first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

CELL = 28
SIZE = 2 * CELL
N_CLASSES = 10
DEFAULT_COUNTS = {"train": 20000, "test": 2000, "database": 20000}
# which MNIST split the digits of each mosaic split come from
SOURCE = {"train": "train", "database": "train", "test": "test"}


def default_out() -> Path:
    cache = os.environ.get("DSH_CACHE")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache" / "dsh") / "mnist-mosaic"


def default_mnist() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def mosaics(digits: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` mosaics ``uint8[n, 56, 56]`` and their multi-hot labels ``uint8[n, 10]`` from ``digits``
    ``uint8[M, 28, 28]`` with class ids ``labels``: 1-4 digits (uniform), in random distinct cells."""
    images = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    multi_hot = np.zeros((n, N_CLASSES), dtype=np.uint8)
    counts = rng.integers(1, 5, size=n)
    for i in range(n):
        cells = rng.permutation(4)[: counts[i]]
        picks = rng.integers(0, len(digits), size=counts[i])
        for cell, j in zip(cells, picks):
            r, c = divmod(int(cell), 2)
            images[i, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = digits[j]
            multi_hot[i, labels[j]] = 1
    return images, multi_hot


def write_split(out: Path, split: str, images: np.ndarray, multi_hot: np.ndarray) -> None:
    from PIL import Image

    from dsh.utils.fileio import atomic_write

    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (img, lab) in enumerate(zip(images, multi_hot)):
        rel = f"images/{split}/{i:05d}.png"
        Image.fromarray(img, "L").save(out / rel)
        lines.append(rel + " " + " ".join(str(int(v)) for v in lab))
    with atomic_write(out / f"{split}.txt", "w") as f:
        f.write("\n".join(lines) + "\n")


def make(mnist_root: Path, out: Path, counts: dict[str, int], seed: int = 0, log=print) -> dict:
    """Write the mosaic dataset into ``out`` (skipped where a complete one of the same settings is there);
    returns its description (``out/mosaic.json``)."""
    from dsh.data import sources
    from dsh.utils.fileio import atomic_write

    settings = {"format": "dsh-mnist-mosaic", "version": 1, "seed": int(seed), "counts": dict(counts),
                "size": [SIZE, SIZE], "digits_per_image": [1, 4], "sources": SOURCE}
    manifest = out / "mosaic.json"
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if {k: found.get(k) for k in settings} == settings:
            log(f"{out}: already holds these mosaics; nothing written")
            return found
        raise SystemExit(f"{out} holds mosaics of other settings ({manifest}); remove the folder first")
    out.mkdir(parents=True, exist_ok=True)
    digits = {s: sources.read_mnist(sources.find_mnist(mnist_root, s, download=False), s) for s in ("train", "test")}
    rng = np.random.default_rng(seed)
    stats = {}
    for split in ("train", "test", "database"):  # fixed order: one stream of random numbers
        src = digits[SOURCE[split]]
        images, multi_hot = mosaics(src.images[:, 0].numpy(), src.labels.numpy(), counts[split], rng)
        write_split(out, split, images, multi_hot)
        stats[split] = {"images": int(counts[split]), "mean_labels": float(multi_hot.sum(1).mean()),
                        "images_per_class": multi_hot.sum(0).astype(int).tolist()}
        log(f"{split}: {counts[split]:,} mosaics, {stats[split]['mean_labels']:.2f} digits each on average")
    with atomic_write(out / "classes.txt", "w") as f:
        f.write("\n".join(str(c) for c in range(N_CLASSES)) + "\n")
    body = {**settings, "stats": stats}
    with atomic_write(manifest, "w") as f:  # last: a folder with mosaic.json is complete
        json.dump(body, f, indent=2)
    return body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, default=default_mnist(), help="folder with MNIST/raw (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=default_out(), help="where to write (default: %(default)s)")
    for split, n in DEFAULT_COUNTS.items():
        ap.add_argument(f"--{split}", type=int, default=n, help=f"{split} mosaics (default: {n})")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = {s: getattr(args, s) for s in DEFAULT_COUNTS}
    if min(counts.values()) < 1:
        ap.error("every split needs at least one mosaic")
    make(args.mnist, args.out.expanduser(), counts, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

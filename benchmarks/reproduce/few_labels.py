"""Few labels: CIFAR-10 with 10, 50 or 100 labelled training images per class, an ImageNet-pretrained backbone
against training from scratch.

The labelled images are a seeded stratified subset of the training split; the database is the whole training split
(50,000 images, labels used only to judge), the queries a stratified subset of the test split (``--queries``,
default 1,000). mAP@all is tie-aware. For each budget:

- ``pretrained``: EfficientNet-Lite0 frozen, the hash head trained on its cached features (``--tune head``; the
  settings of preset ``cifar10-lite0-head`` at ``--input-size``). The database is encoded through the backbone's
  cached features and the trained head: the same codes as the whole network (tests/test_train_pretrained.py checks
  that a head run's figures on cached features equal the network's on the images), one feature pass for every
  budget.
- ``scratch``: preset ``cifar10-cpu`` (the airbench network, 0.83 mAP@all at 48 bits with all 50,000 labels), its
  epochs raised so that the run takes about ``--scratch-steps`` optimiser steps whatever the budget.

    python benchmarks/reproduce/few_labels.py --per-class 10 50 100 --bits 48 --out benchmarks/results/few_labels

Writes ``OUT/results.json`` and ``OUT/results.md``; the runs stay in ``OUT/runs/`` (ignored by git).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
import common  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def labelled_tree(jpeg: Path, per_class: int, seed: int, dest: Path) -> Path:
    """A folder dataset ``dest/{train,test}/<class>/`` whose train holds ``per_class`` images of each class (links
    into the JPEG copy), chosen with ``seed``; test is the JPEG copy's test split, linked whole."""
    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        files = sorted((jpeg / "train" / cls).glob("*.jpg"))
        chosen = sorted(rng.choice(len(files), per_class, replace=False))
        out = dest / "train" / cls
        out.mkdir(parents=True, exist_ok=True)
        for i in chosen:
            link = out / files[i].name
            if not link.exists():
                link.symlink_to(files[i])
    test = dest / "test"
    if not test.exists():
        test.symlink_to(jpeg / "test", target_is_directory=True)
    return dest


def query_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    from dsh.data import stratified_subset

    return stratified_subset(labels, n, seed)


def evaluate(q_codes, q_labels, db_codes, db_labels, nbits: int) -> dict:
    from dsh.eval.metrics import evaluate as judge

    m = judge(q_codes, db_codes, q_labels, db_labels, nbits)
    return {"map": m.map, "precision_at_radius_2": m.precision_at_radius}


def run_pretrained(args, tree: Path, per_class: int, database, queries, out: Path) -> dict:
    import torch

    from dsh.codes.bits import codes_from_u
    from dsh.config import resolve_config
    from dsh.data import cache_dir
    from dsh.models.checkpoint import load_model
    from dsh.train import train
    from dsh.train.features import cached_features

    fit_images = int(per_class * len(CLASSES) * 0.8)  # val_size 0.2 of the labelled images chooses the epoch
    cfg = resolve_config({"dataset": "folder", "data_root": str(tree), "nbits": args.bits, "input_size":
                          args.input_size, "val_size": 0.2, "seed": args.seed, "threads": args.threads,
                          "tensorboard": False, "image_size": None, "batch_size": min(128, fit_images)},
                         preset="cifar10-lite0-head")
    run_dir = out / "runs" / f"pretrained_{per_class}"
    t0 = time.perf_counter()
    result = train(cfg, run_dir, progress=False, log=lambda m: None)
    loaded = load_model(run_dir / "best.pt")
    model = loaded.model.eval()
    with torch.no_grad():
        feats = {name: cached_features(model, part.images, loaded.normalizer, cache=cache_dir(),
                                       device=torch.device("cpu")) for name, part in
                 (("database", database), ("queries", queries))}
        db_codes = codes_from_u(model.head(feats["database"]).numpy())
        q_codes = codes_from_u(model.head(feats["queries"]).numpy())
    row = evaluate(q_codes, queries.labels.numpy(), db_codes, database.labels.numpy(), args.bits)
    return {**row, "train_seconds": result.train_seconds, "seconds": time.perf_counter() - t0,
            "best_val_map": result.best_val_map, "settings": cfg.to_dict()}


def run_scratch(args, tree: Path, per_class: int, database, queries, out: Path) -> dict:
    from dsh.config import resolve_config
    from dsh.runtime import Encoder
    from dsh.train import train

    labelled = per_class * len(CLASSES) * 0.8
    base = resolve_config({}, preset="cifar10-cpu")
    steps_per_epoch = max(1, int(labelled // min(base.batch_size, labelled)))
    epochs = max(base.epochs, round(args.scratch_steps / steps_per_epoch))
    cfg = resolve_config({"dataset": "folder", "data_root": str(tree), "nbits": args.bits, "val_size": 0.2,
                          "seed": args.seed, "threads": args.threads, "tensorboard": False, "epochs": epochs,
                          "batch_size": int(min(base.batch_size, labelled))}, preset="cifar10-cpu")
    run_dir = out / "runs" / f"scratch_{per_class}"
    t0 = time.perf_counter()
    result = train(cfg, run_dir, progress=False, log=lambda m: None)
    encoder = Encoder.from_run(run_dir, backend="torch")  # the codes the run judged itself by
    db_codes = encoder.encode_array(database.images.numpy()).codes
    q_codes = encoder.encode_array(queries.images.numpy()).codes
    row = evaluate(q_codes, queries.labels.numpy(), db_codes, database.labels.numpy(), args.bits)
    return {**row, "train_seconds": result.train_seconds, "seconds": time.perf_counter() - t0,
            "best_val_map": result.best_val_map, "settings": cfg.to_dict()}


def markdown(result: dict) -> str:
    lines = [f"CIFAR-10 (JPEG copy), {result['bits']} bits: labelled training images per class, "
             f"{result['n_queries']:,} test queries against the {result['n_database']:,} training images; "
             f"tie-aware mAP@all.", "",
             "| labelled per class | pretrained (Lite0, head on frozen features) | from scratch (airbench) | "
             "difference | pretrained training | from-scratch training |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        p, s = r["pretrained"], r["scratch"]
        lines.append(f"| {r['per_class']} | {p['map']:.4f} | {s['map']:.4f} | {p['map'] - s['map']:+.4f} | "
                     f"{common.fmt_seconds(p['train_seconds'])} | {common.fmt_seconds(s['train_seconds'])} |")
    la = result["loadavg"]
    lines += ["", f"Load average at start {la['start']}, at end {la['end']}.", "",
              f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--bits", type=int, default=48)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--database", type=int, help="a stratified subset of the training images as the database "
                                                "(smoke tests only; default: all of them)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--scratch-steps", type=int, default=600, help="optimiser steps of a from-scratch run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jpeg-root", help="the CIFAR-10 JPEG copy (default: the shared data folder's)")
    p.add_argument("--methods", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    p.add_argument("--out", default="benchmarks/results/few_labels")
    args = p.parse_args(argv)

    from dsh.data import load_split
    from dsh.utils.threads import set_threads

    set_threads(args.threads)
    shared = common.shared_data_dir()
    jpeg = Path(args.jpeg_root) if args.jpeg_root else (shared / "cifar10-jpeg" if shared else None)
    if jpeg is None or not (jpeg / "train").is_dir():
        print("few_labels: no CIFAR-10 JPEG copy (pass --jpeg-root)", file=sys.stderr)
        return 2
    out = Path(args.out)
    database = load_split("folder", "train", data_root=str(jpeg), download=False)
    test = load_split("folder", "test", data_root=str(jpeg), download=False)
    queries = test.subset(query_subset(test.labels.numpy(), args.queries, args.seed))
    if args.database:
        database = database.subset(query_subset(database.labels.numpy(), args.database, args.seed))
    start = common.load_average()
    rows = []
    for per_class in args.per_class:
        tree = labelled_tree(jpeg, per_class, args.seed, out / "runs" / f"data_{per_class}")
        row = {"per_class": per_class}
        for method in args.methods:
            runner = run_pretrained if method == "pretrained" else run_scratch
            row[method] = runner(args, tree, per_class, database, queries, out)
            print(f"{per_class}/class {method}: mAP {row[method]['map']:.4f} "
                  f"({common.fmt_seconds(row[method]['train_seconds'])} of training)", flush=True)
        rows.append(row)
    result = {"bits": args.bits, "n_queries": len(queries), "n_database": len(database), "rows": rows,
              "loadavg": {"start": start, "end": common.load_average()}, "command": common.command_line(),
              "machine": common.machine_info(args.threads)}
    if set(args.methods) == {"pretrained", "scratch"}:
        common.write_results(out, "results", result, markdown(result))
        print(markdown(result))
    else:
        common.write_results(out, "results_partial", result, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Few labels: CIFAR-10 with 10, 50 or 100 labelled training images per class, an ImageNet-pretrained backbone
against training from scratch.

The labelled images are a seeded stratified subset of the training split; the database is the whole training split
(50,000 images, labels used only to judge), the queries a stratified subset of the test split (``--queries``,
default 1,000). mAP@all is tie-aware. Every image is decoded at its own 32 px and the pretrained network resizes it
to ``--input-size`` itself, so training, queries and database see the same pixels. For each budget:

- ``head``: EfficientNet-Lite0 frozen, the hash head trained on its cached features (``--tune head``; the settings
  of preset ``cifar10-lite0-head`` at ``--input-size``). The database is encoded through the backbone's cached
  features and the trained head: the same codes as the whole network (tests/train/test_train_pretrained.py checks
  that a head run's figures on cached features equal the network's on the images), one feature pass for every
  budget.
- ``finetune``: EfficientNet-Lite0 fine-tuned (preset ``cifar10-lite0-finetune`` at ``--input-size``: the head
  on cached features first, then the whole network), for about ``--finetune-steps`` optimiser steps of batch 32
  whatever the budget; the database is encoded by the run's network.
- ``top``: the same with only the backbone's last two stages trained beside the head (``--tune top``).
- ``scratch``: preset ``cifar10-cpu`` (the airbench network, 0.83 mAP@all at 48 bits with all 50,000 labels), its
  epochs raised so that the run takes about ``--scratch-steps`` optimiser steps whatever the budget.

    python benchmarks/reproduce/few_labels.py --per-class 10 50 100 --bits 48 --out benchmarks/results/few_labels
    python benchmarks/reproduce/few_labels.py --methods finetune     # one method; the others' rows are kept

Writes ``OUT/results.json`` and ``OUT/results.md``: a run of some methods replaces their entries and keeps the other
methods' from earlier runs (each entry records its own command and load average). The runs stay in ``OUT/runs/``
(ignored by git).
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


METHODS = ("head", "top", "finetune", "scratch")
TITLES = {"head": "pretrained (Lite0, head on frozen features)", "top": "pretrained (Lite0, last two stages tuned)",
          "finetune": "pretrained (Lite0, fine-tuned)",
          "scratch": "from scratch (airbench)"}


def run_head(args, tree: Path, per_class: int, database, queries, out: Path) -> dict:
    from dsh.config import resolve_config

    fit_images = int(per_class * len(CLASSES) * 0.8)  # val_size 0.2 of the labelled images chooses the epoch
    cfg = resolve_config({"dataset": "folder", "data_root": str(tree), "nbits": args.bits, "input_size":
                          args.input_size, "val_size": 0.2, "seed": args.seed, "threads": args.threads,
                          "tensorboard": False, "image_size": 32, "batch_size": min(128, fit_images)},
                         preset="cifar10-lite0-head")
    return train_and_judge(cfg, out / "runs" / f"head_{per_class}", database, queries)


def encode_and_judge(run_dir: Path, database, queries, nbits: int) -> dict:
    """The tie-aware mAP of the codes the run's own network (torch, as it judged itself) gives the images; a head
    run's through the backbone's cached features (the same codes: tests/train/test_train_pretrained.py), so the
    database's features are computed once for every budget."""
    from dsh.config import TrainConfig
    from dsh.runtime import Encoder
    from dsh.train.experiment import run_encoding

    encoder = Encoder.from_run(run_dir, backend="torch")
    encode = run_encoding(run_dir, TrainConfig.of_model(encoder.info, encoder.source), encoder)
    return evaluate(encode(queries.images)[1], queries.labels.numpy(), encode(database.images)[1],
                    database.labels.numpy(), nbits)


def train_and_judge(cfg, run_dir: Path, database, queries) -> dict:
    """Train ``cfg`` into ``run_dir``, then judge the codes of its network: the row of one method and budget."""
    from dsh.train import train

    t0 = time.perf_counter()
    result = train(cfg, run_dir, progress=False, log=lambda m: None)
    row = encode_and_judge(run_dir, database, queries, cfg.nbits)
    return {**row, "train_seconds": result.train_seconds, "seconds": time.perf_counter() - t0,
            "best_val_map": result.best_val_map, "settings": cfg.to_dict()}


def run_finetune(args, tree: Path, per_class: int, database, queries, out: Path, tune: str = "all") -> dict:
    from dsh.config import resolve_config

    fit_images = int(per_class * len(CLASSES) * 0.8)
    batch = min(32, fit_images)
    epochs = max(1, round(args.finetune_steps / max(1, fit_images // batch)))
    cfg = resolve_config({"dataset": "folder", "data_root": str(tree), "nbits": args.bits, "input_size":
                          args.input_size, "val_size": 0.2, "seed": args.seed, "threads": args.threads,
                          "tensorboard": False, "image_size": 32, "batch_size": batch, "epochs": epochs,
                          "tta_flip": False, "min_steps": args.finetune_steps, "tune": tune},
                         preset="cifar10-lite0-finetune")
    name = "finetune" if tune == "all" else tune
    return train_and_judge(cfg, out / "runs" / f"{name}_{per_class}", database, queries)


def run_top(args, tree: Path, per_class: int, database, queries, out: Path) -> dict:
    return run_finetune(args, tree, per_class, database, queries, out, tune="top")


def run_scratch(args, tree: Path, per_class: int, database, queries, out: Path) -> dict:
    from dsh.config import resolve_config

    labelled = per_class * len(CLASSES) * 0.8
    base = resolve_config({}, preset="cifar10-cpu")
    steps_per_epoch = max(1, int(labelled // min(base.batch_size, labelled)))
    epochs = max(base.epochs, round(args.scratch_steps / steps_per_epoch))
    cfg = resolve_config({"dataset": "folder", "data_root": str(tree), "nbits": args.bits, "val_size": 0.2,
                          "seed": args.seed, "threads": args.threads, "tensorboard": False, "epochs": epochs,
                          "batch_size": int(min(base.batch_size, labelled))}, preset="cifar10-cpu")
    return train_and_judge(cfg, out / "runs" / f"scratch_{per_class}", database, queries)


def markdown(result: dict) -> str:
    methods = [m for m in METHODS if any(m in r for r in result["rows"])]
    lines = [f"CIFAR-10 (JPEG copy), {result['bits']} bits: labelled training images per class, "
             f"{result['n_queries']:,} test queries against the {result['n_database']:,} training images; "
             f"tie-aware mAP@all (training time in brackets).", "",
             "| labelled per class | " + " | ".join(TITLES[m] for m in methods)
             + (" | best pretrained minus scratch |" if "scratch" in methods else " |"),
             "| ---: |" + " ---: |" * (len(methods) + ("scratch" in methods))]
    for r in sorted(result["rows"], key=lambda r: r["per_class"]):
        cells = [f"{r[m]['map']:.4f} ({common.fmt_seconds(r[m]['train_seconds'])})" if m in r else "—"
                 for m in methods]
        if "scratch" in methods:
            pre = [r[m]["map"] for m in ("head", "top", "finetune") if m in r]
            cells.append(f"{max(pre) - r['scratch']['map']:+.4f}" if pre and "scratch" in r else "—")
        lines.append(f"| {r['per_class']} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in methods:
        entries = [r[m] for r in result["rows"] if m in r]
        commands = sorted({e["command"] for e in entries})
        loads = [e["loadavg"] for e in entries]
        lines.append(f"- {TITLES[m]}: `{'`, `'.join(commands)}`; load average at start {loads[0]['start']}, "
                     f"at end {loads[-1]['end']}.")
    return "\n".join(lines) + "\n"


def merged_rows(old: dict | None, new_rows: list[dict], bits: int, n_queries: int, n_database: int) -> list[dict]:
    """``new_rows`` over the rows of an earlier ``results.json`` of the same length, queries and database: a
    method's entry for a budget is replaced, the other methods' entries are kept, entries of unknown methods are
    dropped. Results of another setting (a smoke test's small database) are refused rather than replaced."""
    if old is None:
        return new_rows
    if (old["bits"], old["n_queries"], old["n_database"]) != (bits, n_queries, n_database):
        raise common.DataError(f"the results folder holds {old['bits']}-bit results of {old['n_queries']:,} queries "
                               f"against {old['n_database']:,} images; use another --out for {bits} bits, "
                               f"{n_queries:,} against {n_database:,}")
    rows = {r["per_class"]: {k: v for k, v in r.items() if k == "per_class" or k in METHODS} for r in old["rows"]}
    for r in new_rows:
        rows.setdefault(r["per_class"], {"per_class": r["per_class"]}).update(r)
    return [rows[k] for k in sorted(rows)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--bits", type=int, default=48)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--database", type=int, help="a stratified subset of the training images as the database "
                                                "(smoke tests only; default: all of them)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--scratch-steps", type=int, default=600, help="optimiser steps of a from-scratch run")
    p.add_argument("--finetune-steps", type=int, default=300, help="optimiser steps of a fine-tuning run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jpeg-root", help="the CIFAR-10 JPEG copy (default: the shared data folder's)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
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
    runners = {"head": run_head, "top": run_top, "finetune": run_finetune, "scratch": run_scratch}
    command = common.command_line()
    rows = []
    for per_class in args.per_class:
        tree = labelled_tree(jpeg, per_class, args.seed, out / "runs" / f"data_{per_class}")
        row = {"per_class": per_class}
        for method in args.methods:
            start = common.load_average()
            row[method] = runners[method](args, tree, per_class, database, queries, out)
            row[method].update(command=command, loadavg={"start": start, "end": common.load_average()})
            print(f"{per_class}/class {method}: mAP {row[method]['map']:.4f} "
                  f"({common.fmt_seconds(row[method]['train_seconds'])} of training)", flush=True)
        rows.append(row)
    rows = merged_rows(common.read_json(out / "results.json"), rows, args.bits, len(queries), len(database))
    result = {"bits": args.bits, "n_queries": len(queries), "n_database": len(database), "rows": rows,
              "machine": common.machine_info(args.threads)}
    common.write_results(out, "results", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

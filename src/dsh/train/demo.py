"""The seed experiment end to end: train 8-bit codes, encode test and train, print the class table and mAP, plot.

``dsh demo`` runs it on scikit-learn's bundled digits (no files, no network, well under a minute);
``dsh demo --dataset mnist --data-root DIR`` runs the same on MNIST.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import resolve_config
from ..utils.fileio import write_json

# The preset (dsh.config.PRESETS) each dataset's demo trains with; reasons beside the presets.
DEMO_PRESETS = {"digits": "digits-demo", "mnist": "mnist-cpu"}


def run_demo(
    dataset: str = "digits",
    data_root: str | None = None,
    out: str = "runs/demo",
    nbits: int = 8,
    epochs: int | None = None,
    plots: bool = True,
    progress: bool = True,
    print_fn=print,
) -> dict:
    """Train, encode, evaluate (test queries vs train database), report and plot; returns the summary dict."""
    from ..eval.report import class_code_table, format_markdown
    from .experiment import encode_and_evaluate
    from .loop import train

    out_dir = Path(out)
    cfg = resolve_config({"dataset": dataset, "data_root": data_root, "nbits": nbits, "epochs": epochs},
                         preset=DEMO_PRESETS.get(dataset))
    if (out_dir / "last.pt").exists():
        # a demo is a fresh experiment each time: keep the old one beside it instead of overwriting
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = out_dir.with_name(f"{out_dir.name}-{stamp}")
    result = train(cfg, out_dir, progress=progress, log=print_fn)

    judged = encode_and_evaluate(out_dir, out_dir=out_dir, keep_u=True)
    q, metrics = judged.query, judged.metrics
    q_labels = q.labels
    class_names = [str(c) for c in q.class_names]
    table = class_code_table(q.codes, q_labels, nbits, class_names)
    print_fn("")
    print_fn(f"Class hash table ({dataset} test split, {nbits} bits):")
    print_fn(format_markdown(table))
    print_fn("")
    print_fn(
        f"mAP@all, {len(q)} test queries vs {len(judged.database)} train database: {metrics.map:.4f}; "
        f"precision within radius 2: {metrics.precision_at_radius:.4f}"
    )
    print_fn(f"training: {result.train_seconds:.1f}s ({result.images_per_second:.0f} images/s), "
             f"best epoch {result.best_epoch} by validation mAP {result.best_val_map:.4f}")
    plot_paths = []
    if plots:
        from ..eval.viz import plot_u_maps

        plot_paths = plot_u_maps(q.u, q_labels, out_dir / "plots", class_names=class_names,
                                 title_prefix=f"{dataset} test, ")
        for p in plot_paths:
            print_fn(f"wrote {p}")
    print_fn(f"TensorBoard logs: tensorboard --logdir {out_dir / 'tb'}")
    index_path = _write_index(out_dir, judged.database, judged.model)
    print_fn(f"Search it in a browser: dsh serve --index {index_path}  (then open http://127.0.0.1:8000/; "
             f"needs dsh[serve])")
    summary = {
        "dataset": dataset,
        "nbits": nbits,
        "map": metrics.map,
        "precision_at_radius_2": metrics.precision_at_radius,
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "best_epoch": result.best_epoch,
        "best_val_map": result.best_val_map,
        "class_table": table.to_dict(),
        "plots": [str(p) for p in plot_paths],
        "run": str(out_dir),
        "index": str(index_path),
    }
    write_json(out_dir / "demo.json", summary)
    return summary


def _write_index(out_dir: Path, database, model: dict) -> Path:
    """The database codes as an index beside the run, with labels and the model that made them (``model``, as
    :func:`dsh.runtime.searcher.model_record` gives it), ready for ``dsh serve``."""
    from ..index.flat import HammingIndex

    index = HammingIndex(database.nbits)
    index.add(database.codes, labels=database.labels, class_names=[str(c) for c in database.class_names])
    index.metadata["model"] = model
    path = out_dir / "database.dshidx"
    index.save(path)
    return path

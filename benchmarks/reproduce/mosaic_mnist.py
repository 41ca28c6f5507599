"""DSH on a real multi-label set: 2x2 MNIST mosaics (``make_mnist_mosaic.py``), mAP@all at 16, 32 and 48 bits.

Similar = sharing at least one digit. The mosaic set is written first where it is not there yet (deterministic,
seed 0: 20,000 train / 2,000 test / 20,000 database 56x56 images); each length is trained on the train list (its
validation images carved from it choose the best epoch), then the test list is encoded as queries against the
database list and scored with the multi-label, tie-aware mAP@all.

    python benchmarks/reproduce/mosaic_mnist.py --threads 2                  # 16, 32 and 48 bits, preset mosaic-cpu
    python benchmarks/reproduce/mosaic_mnist.py --bits 16 --set epochs=4     # any TrainConfig setting
    python benchmarks/reproduce/mosaic_mnist.py --preset none --out DIR      # the library defaults

Writes ``DIR/bitsN/{run,query.npz,database.npz,result.json}`` and ``DIR/results.json`` / ``results.md``
(default ``DIR``: ``benchmarks/results/mosaic_mnist``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402
from tools import make_mnist_mosaic  # noqa: E402

from dsh.config import parse_assignments, resolve_config  # noqa: E402
from dsh.errors import DataError  # noqa: E402

DEFAULT_OUT = "benchmarks/results/mosaic_mnist"
SMOKE_OUT = "runs/smoke/mosaic_mnist"
DEFAULT_BITS = (16, 32, 48)
PREFERRED_PRESET = "mosaic-cpu"  # where dsh.config.PRESETS has it (its comments say why)


def run_length(args: argparse.Namespace, nbits: int, seed: int, data_root: Path, out: Path, limits: dict,
               preset: str | None) -> dict[str, Any]:
    length_dir = out / common.length_folder(nbits, seed)
    record = common.finished_result(length_dir, limits, args.resume)
    if record is not None:
        return record
    overrides = parse_assignments(args.set, reserved=("dataset", "data_root", "nbits", "seed"))
    overrides.update(dataset="list", data_root=str(data_root), nbits=nbits, seed=seed, threads=args.threads)
    cfg = resolve_config(overrides, preset=preset)
    started, load_start = common.utc_now(), common.load_average()
    print(f"\n== MNIST mosaics, {nbits} bits, seed {seed}, {common.recipe_name(preset)}: model {cfg.model}, "
          f"{cfg.epochs} epochs -> {length_dir / 'run'}", flush=True)
    r = common.train_encode_evaluate(cfg, length_dir / "run", length_dir, progress=args.progress,
                                     log=lambda m: print(m, flush=True))
    r.pop("arrays")
    record = {"bits": nbits, "seed": seed, "dataset": "MNIST 2x2 mosaics (multi-label)", "benchmark": not limits,
              "limits": limits, "preset": preset, **r, "config": cfg.to_dict(),
              **common.provenance(cfg, length_dir, started, load_start)}
    common.write_json(length_dir / "result.json", record)
    return record


def markdown(results: dict) -> str:
    rows = common.sort_runs(results["runs"])
    lines = ["# DSH on MNIST 2x2 mosaics (multi-label)", "",
             f"{rows[0]['n_queries']:,} test mosaics against {rows[0]['n_database']:,} database mosaics, "
             "similar = sharing a digit, tie-aware mAP@all.", "",
             "| bits | seed | mAP | precision r≤2 | training time | images/s | best epoch (val mAP) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['bits']} | {common.seed_of(r)} | {r['map']:.4f} | {r['precision_at_radius_2']:.4f} | "
                     f"{common.fmt_seconds(r['train_seconds'])} | {r['images_per_second']:.0f} | "
                     f"{r['best_epoch']}/{r['config']['epochs']} ({r['best_val_map']:.4f}) |")
    c = rows[0]["config"]
    lines += ["", f"Settings: {common.recipe_name(rows[0].get('preset'))}: model {c['model']}, epochs "
              f"{c['epochs']}, batch_size {c['batch_size']}, optimizer {c['optimizer']}, lr {c['lr']}.", "",
              *common.machine_lines(rows)]
    return "\n".join(lines).rstrip() + "\n"


def write_results(out: Path, runs: list[dict], fresh: bool) -> dict:
    benchmark = all(r["benchmark"] for r in runs)
    runs = common.with_earlier_runs(out, runs, fresh)
    results = {"benchmark": benchmark, "preset": runs[0].get("preset"), "dataset": runs[0]["dataset"],
               "script": "benchmarks/reproduce/mosaic_mnist.py", "command": runs[-1].get("command"),
               "machine": runs[-1].get("machine"), "runs": common.sort_runs(runs)}
    common.write_json(out / "results.json", results)
    common.write_text(out / "results.md", markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=list(DEFAULT_BITS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--mosaic", type=Path, default=make_mnist_mosaic.default_out(),
                   help="the mosaic set (written there first if absent; default: %(default)s)")
    p.add_argument("--mnist", type=Path, default=make_mnist_mosaic.default_mnist(),
                   help="folder with MNIST/raw, to write the mosaics from")
    p.add_argument("--preset", help=f"named settings (default: {PREFERRED_PRESET}; 'none' for the library defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any TrainConfig setting (repeatable)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    common.add_run_control_args(p)
    args = p.parse_args(argv)
    return common.run_benchmark("mosaic_mnist", lambda: sweep(args))


def sweep(args: argparse.Namespace) -> tuple[Path, str, list[str]]:
    preset = common.resolve_preset(args.preset, PREFERRED_PRESET)
    limits, out = common.run_limits_and_out(args, DEFAULT_OUT, SMOKE_OUT)
    common.check_same_recipe(out, preset, args.fresh)
    if args.mnist is None:
        raise DataError("no MNIST to make the mosaics from: pass --mnist (the folder holding MNIST/raw)")
    counts, data_root = dict(make_mnist_mosaic.DEFAULT_COUNTS), args.mosaic
    if limits:  # a smaller set of its own for a smoke test (the same draws, fewer of them)
        counts.update(train=args.limit_train or counts["train"], test=args.limit_test or counts["test"])
        counts["database"] = min(counts["database"], 10 * counts["test"])
        data_root = out / "_subset"
    make_mnist_mosaic.make(args.mnist, data_root, counts, seed=0, log=lambda m: print(m, flush=True))
    results = common.run_sweep(args.bits, args.seeds,
                               lambda n, seed: run_length(args, n, seed, data_root, out, limits, preset),
                               lambda done: write_results(out, done, args.fresh))
    return out, markdown(results), []


if __name__ == "__main__":
    sys.exit(main())

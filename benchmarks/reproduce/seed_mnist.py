"""The seed experiment on MNIST: 8-bit codes (and 16, 32), next to the seed's published table.

The seed project trained 8-bit DSH codes on MNIST and published a class hash table: class 3 had the code
0xF7 = 1111 0111, and two class pairs, 2/3 and 5/6, were only 1 bit apart. It remarked that longer codes would
separate the classes. This script re-runs that experiment with the preset ``mnist-cpu`` (``dsh train --dataset
mnist --preset mnist-cpu``), or with ``--preset none`` the library's plain defaults (``dsh train --dataset mnist``),
and reports, per code length:

- mAP@all and precision within Hamming radius 2, the 10,000 test images as queries against the 60,000 training
  images as the database; the training time and images/s;
- the class hash table (:func:`dsh.eval.report.class_code_table`, on the test codes): how many class pairs are within
  1 bit, whether every class's code is distinct, the smallest distance between two classes' codes;
- for 8 bits, UMAP and t-SNE maps of the real outputs ``u`` of the test images (PNG);
- for 8 bits, a side-by-side with the seed's published facts.

    python benchmarks/reproduce/seed_mnist.py               # mnist-cpu, 8, 16, 32 bits -> benchmarks/results/seed_mnist
    python benchmarks/reproduce/seed_mnist.py --preset none # the defaults -> benchmarks/results/seed_mnist_defaults
    python benchmarks/reproduce/seed_mnist.py --bits 8 --out DIR

Per length ``N`` (seed 0; another seed ``S`` in ``DIR/bitsN_seedS``): the run in ``DIR/bitsN/run``,
``DIR/bitsN/query.npz`` (with ``u`` for the plotted lengths) and ``DIR/bitsN/database.npz`` (``dsh encode``'s files:
``dsh eval`` / ``dsh report`` re-check them), ``DIR/bitsN/result.json``, and for 8 bits, seed 0,
``DIR/bits8/umap.png`` and ``DIR/bits8/tsne.png``. ``--seeds 0 1 2`` trains each length once per seed, to show the
spread of mAP and of the class table over seeds; seed 0's is the one whose class table is shown. ``DIR/results.json``
and ``DIR/results.md`` gather all lengths of one recipe (a folder never mixes presets). ``--limit-train N`` /
``--limit-test N``: smoke tests on a stratified subset, marked as not a benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402

from dsh.config import parse_assignments  # noqa: E402
from dsh.errors import DataError  # noqa: E402

SCRIPT = "benchmarks/reproduce/seed_mnist.py"
PREFERRED_PRESET = "mnist-cpu"
RESULTS = "benchmarks/results"
SMOKE_OUT = "runs/smoke/seed_mnist"
# The bars at 8 bits: the reproduction issue's mAP >= 0.99 for the experiment (no time bar), and the core issue's
# mAP >= 0.98 in at most 3 minutes of training for `dsh train --dataset mnist` with no settings at all.
TARGET_MAP = 0.99
DEFAULTS_TARGET_MAP = 0.98
DEFAULTS_BUDGET_SECONDS = 3 * 60

# What the seed project's README published about its 8-bit MNIST codes (nothing else is known of it).
SEED_FACTS = {
    "bits": 8,
    "class_3_code_hex": "F7",
    "class_3_code_binary": "1111 0111",
    "close_pairs": [["2", "3", 1], ["5", "6", 1]],
    "pairs_within_1_bit": 2,
}


# ---------------------------------------------------------------------------------------------------------------
# data and settings


def find_mnist_root(data_root: str | None) -> Path:
    """``--data-root``, else ``$DSH_DATA``, else the shared data folder (which holds ``MNIST/raw``)."""
    shared = common.shared_data_dir()
    root = data_root or os.environ.get("DSH_DATA") or (str(shared) if shared else None)
    if root is None:
        raise DataError("no MNIST: pass --data-root (the folder holding MNIST/raw) or set DSH_DATA")
    return Path(root)


def default_out(preset: str | None) -> str:
    """``benchmarks/results/seed_mnist`` for the preferred preset, ``..._defaults`` without one, else
    ``..._<preset>``: one folder per recipe."""
    if preset == PREFERRED_PRESET:
        return f"{RESULTS}/seed_mnist"
    return f"{RESULTS}/seed_mnist_{preset or 'defaults'}"


def resolve_settings(args: argparse.Namespace, data_root: Path, nbits: int, seed: int):
    """The preset (none: what ``dsh train --dataset mnist`` uses) < --set < --epochs/--threads."""
    from dsh.config import resolve_config

    overrides = parse_assignments(args.set, reserved=("dataset", "data_root", "nbits", "seed"))
    overrides.update({k: v for k, v in (("epochs", args.epochs), ("threads", args.threads)) if v is not None})
    overrides.update(dataset="mnist", data_root=str(data_root), nbits=nbits, seed=seed)
    return resolve_config(overrides, preset=args.preset)


# ---------------------------------------------------------------------------------------------------------------
# one length


def class_summary(table) -> dict[str, Any]:
    """What the class table says about separation: close pairs, distinct codes, smallest distance."""
    distances = [r.nearest_distance for r in table.rows if r.nearest_distance is not None]
    return {
        "pairs_within_1_bit": len(table.close_pairs),
        "close_pairs": [list(p) for p in table.close_pairs],
        "distinct_codes": table.distinct_codes,
        "min_class_distance": min(distances) if distances else None,
    }


def run_length(args: argparse.Namespace, nbits: int, seed: int, data_root: Path, out: Path,
               limits: dict) -> dict[str, Any]:
    """Train, encode, evaluate, tabulate (and plot) one code length with one seed; returns its record."""
    length_dir = out / common.length_folder(nbits, seed)
    record = common.finished_result(length_dir, limits, args.resume)
    if record is not None:
        print(f"{nbits} bits, seed {seed}: already done ({length_dir / 'result.json'}), kept (--resume)", flush=True)
        return record
    from dsh.eval.report import class_code_table, format_markdown

    cfg = resolve_settings(args, data_root, nbits, seed)
    run_dir = length_dir / "run"
    resumed = args.resume and (run_dir / "last.pt").is_file()
    plot = args.plots and nbits in args.plot_bits and seed == 0
    started, load_start = common.utc_now(), common.load_average()
    print(f"\n== MNIST, {nbits} bits, seed {seed}, {common.recipe_name(args.preset)}: model {cfg.model}, {cfg.epochs} "
          f"epochs -> {run_dir}", flush=True)
    r = common.train_encode_evaluate(cfg, run_dir, length_dir, keep_u=plot, resume=resumed,
                                     progress=args.progress, log=lambda m: print(m, flush=True))
    a = r.pop("arrays")
    table = class_code_table(a["q_codes"], a["q_labels"], nbits, a["class_names"], close_bits=1)
    figures = plot_maps(a, length_dir, nbits, args) if plot else []
    record = {
        "bits": nbits,
        "seed": seed,
        "dataset": "MNIST",
        "benchmark": not limits,
        "limits": limits,
        "preset": args.preset,
        "settings_changed": bool(args.set or args.epochs is not None),
        **r,
        "class_table": table.to_dict(),
        "class_table_markdown": format_markdown(table),
        **class_summary(table),
        "figures": [p.relative_to(out).as_posix() for p in figures],
        "resumed": resumed,
        "config": cfg.to_dict(),
        **common.provenance(cfg, length_dir, started, load_start),
    }
    common.write_json(length_dir / "result.json", record)
    return record


def plot_maps(a: dict, length_dir: Path, nbits: int, args: argparse.Namespace) -> list[Path]:
    """UMAP and t-SNE of the test images' ``u`` -> ``length_dir/{umap,tsne}.png``."""
    from dsh.eval.viz import plot_u_maps

    print(f"plotting UMAP and t-SNE of u ({min(args.max_points, len(a['q_labels']))} test images)", flush=True)
    return plot_u_maps(a["q_u"], a["q_labels"], length_dir, class_names=a["class_names"],
                       max_points=args.max_points, seed=0, title_prefix=f"MNIST test, {nbits} bits: ")


# ---------------------------------------------------------------------------------------------------------------
# tables


def results_table(rows: list[dict]) -> list[str]:
    lines = [
        "| bits | seed | mAP | precision r≤2 | training time | images/s | best epoch (val mAP) | "
        "class pairs ≤ 1 bit | all class codes distinct | closest classes (bits) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for r in common.sort_runs(rows):
        lines.append(
            f"| {r['bits']} | {common.seed_of(r)} | {r['map']:.4f} | {r['precision_at_radius_2']:.4f} | "
            f"{common.fmt_seconds(r['train_seconds'])} | {r['images_per_second']:.0f} | "
            f"{r['best_epoch']}/{r['config']['epochs']} ({r['best_val_map']:.4f}) | {r['pairs_within_1_bit']} | "
            f"{'yes' if r['distinct_codes'] else 'no'} | {r['min_class_distance']} |"
        )
    return lines


def spread_lines(rows: list[dict]) -> list[str]:
    """For each length trained with more than one seed: every seed's mAP and close pairs, and their range."""
    out = []
    for nbits, runs in common.spread_by_length(rows).items():
        pairs = [r["pairs_within_1_bit"] for r in runs]
        distinct = sum(bool(r["distinct_codes"]) for r in runs)
        out.append(
            f"{nbits} bits over {common.map_spread_text(runs)}, {sum(r['map'] >= TARGET_MAP for r in runs)} of "
            f"{len(runs)} ≥ {TARGET_MAP}; class pairs within 1 bit {', '.join(map(str, pairs))}; all class codes "
            f"distinct in {distinct} of {len(runs)}.")
    return out


def seed_comparison(r: dict) -> list[str]:
    """The seed's published 8-bit facts next to this run's."""
    shown = [f"{a}/{b}" for a, b, _ in r["close_pairs"][:6]]
    pairs = ", ".join(shown + (["…"] if len(r["close_pairs"]) > 6 else [])) or "none"
    row3 = next((c for c in r["class_table"]["classes"] if c["name"] == "3"), None)
    code3 = f"0x{row3['code_hex']} = {_spaced(row3['code_binary'])}" if row3 else "—"
    seed_pairs = ", ".join(f"{a}/{b}" for a, b, _ in SEED_FACTS["close_pairs"])
    return [
        f"| {r['bits']} bits | seed README | dsh |",
        "| --- | --- | --- |",
        f"| class pairs within 1 bit | {SEED_FACTS['pairs_within_1_bit']} ({seed_pairs}) | "
        f"{r['pairs_within_1_bit']} ({pairs}) |",
        f"| every class code distinct | yes (its closest pairs were 1 bit apart) | "
        f"{'yes' if r['distinct_codes'] else 'no'} |",
        f"| closest two classes | 1 bit | {r['min_class_distance']} bit{'s' if r['min_class_distance'] != 1 else ''} |",
        f"| class 3's code | 0x{SEED_FACTS['class_3_code_hex']} = {SEED_FACTS['class_3_code_binary']} | {code3} |",
        f"| mAP (test vs train) | not published | {r['map']:.4f} |",
    ]


def map_name(figure: str) -> str:
    """``"bits8/tsne.png"`` -> ``"t-SNE"``."""
    stem = Path(figure).stem
    return {"umap": "UMAP", "tsne": "t-SNE"}.get(stem, stem)


def targets_line(r: dict, name_seed: bool = False) -> str:
    """The bars at 8 bits: with a preset, mAP >= 0.99 (the reproduction issue's); with no settings at all, the core
    issue's mAP >= 0.98 in at most 3 minutes of training; both, every class code distinct."""
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    if not r.get("preset") and not r.get("settings_changed"):
        ok = r["map"] >= DEFAULTS_TARGET_MAP and r["train_seconds"] <= DEFAULTS_BUDGET_SECONDS
        parts = [f"with no settings, mAP ≥ {DEFAULTS_TARGET_MAP} in at most {DEFAULTS_BUDGET_SECONDS // 60} minutes "
                 f"of training — {met(ok)} ({r['map']:.4f} in {common.fmt_seconds(r['train_seconds'])})"]
    else:
        parts = [f"mAP ≥ {TARGET_MAP} — {met(r['map'] >= TARGET_MAP)} ({r['map']:.4f})"]
    parts.append(f"every class code distinct — {met(r['distinct_codes'])}")
    which = f", seed {common.seed_of(r)}" if name_seed else ""
    return f"Targets at {r['bits']} bits{which}: " + "; ".join(parts) + "."


def _spaced(binary: str) -> str:
    """``"11110111"`` -> ``"1111 0111"`` (groups of 4 from the left, as the seed printed them)."""
    b = binary.replace(" ", "")
    return " ".join(b[i : i + 4] for i in range(0, len(b), 4))


def markdown(results: dict[str, Any]) -> str:
    rows = common.sort_runs(results["runs"])
    lines = [f"# The seed experiment: DSH on MNIST, {common.recipe_name(results.get('preset'))}", ""]
    if not results["benchmark"]:
        lines += [f"**NOT a benchmark: smoke test on a subset ({common.limits_text(rows[0]['limits'])}).**", ""]
    lines += [f"{rows[0]['n_queries']:,} test queries against {rows[0]['n_database']:,} training images, mAP@all; "
              f"class tables on the test codes.", "", *results_table(rows), ""]
    spread = spread_lines(rows)
    lines += [*spread, ""] if spread else []
    eight = common.main_row(rows, SEED_FACTS["bits"])
    if eight is not None:
        lines += [targets_line(eight, name_seed=bool(spread)), "", *seed_comparison(eight), "",
                  "Which bit means what is arbitrary (flipping or permuting bits gives an equally good code), so "
                  "only distances between class codes compare across runs, not the codes themselves.", "",
                  f"Class hash table, {eight['bits']} bits:", "", eight["class_table_markdown"], ""]
        lines += [f"![{map_name(f)} of u, {eight['bits']} bits]({f})" for f in eight.get("figures", [])]
        lines.append("")
    lines += common.machine_lines(rows)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------
# results files


def write_results(out: Path, runs: list[dict], fresh: bool) -> dict:
    """``out/results.json`` and ``.md``: these runs plus, unless ``fresh``, other lengths already there (of the
    same kind: smoke tests and benchmarks never mix)."""
    benchmark = all(r["benchmark"] for r in runs)
    preset = runs[0].get("preset")  # one recipe per folder: check_same_recipe refused any other
    runs = common.with_earlier_runs(out, runs, fresh)
    results = {
        "benchmark": benchmark,
        "preset": preset,
        "dataset": "MNIST",
        "seed_facts": SEED_FACTS,
        "target_map_8_bits": TARGET_MAP,
        "defaults_target_map_8_bits": DEFAULTS_TARGET_MAP,
        "defaults_budget_seconds_8_bits": DEFAULTS_BUDGET_SECONDS,
        "script": SCRIPT,
        "runs": common.sort_runs(runs),
    }
    common.write_json(out / "results.json", results)
    common.write_text(out / "results.md", markdown(results))
    return results


# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 16, 32], help="code lengths (default: 8 16 32)")
    p.add_argument("--out", help=f"results folder (default: {default_out(PREFERRED_PRESET)} for the preset "
                                 f"{PREFERRED_PRESET}, else {RESULTS}/seed_mnist_<preset or 'defaults'>; with "
                                 f"--limit-*: {SMOKE_OUT})")
    p.add_argument("--preset",
                   help=f"named settings of dsh.config.PRESETS (default: {PREFERRED_PRESET}); 'none' for the "
                        f"library's defaults")
    p.add_argument("--data-root", help="folder holding MNIST/raw (default: $DSH_DATA, else the shared data folder)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a TrainConfig setting over the preset's (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="train each length once per seed (default: 0); the lowest seed's class table is shown, "
                        "seed 0's maps drawn, the others show the spread")
    p.add_argument("--epochs", type=int, help="default: the preset's, else TrainConfig's")
    p.add_argument("--threads", type=int, help="torch and numba threads (default: torch's)")
    p.add_argument("--plot-bits", type=int, nargs="*", default=[8], help="lengths to map with UMAP/t-SNE (default 8)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="UMAP / t-SNE figures")
    p.add_argument("--max-points", type=int, default=5000, help="test images in each map (default 5000)")
    common.add_run_control_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run_benchmark("seed_mnist", lambda: sweep(args))


def sweep(args: argparse.Namespace) -> tuple[Path, str, list[str]]:
    args.preset = common.resolve_preset(args.preset, PREFERRED_PRESET)
    limits, out = common.run_limits_and_out(args, default_out(args.preset), SMOKE_OUT)
    common.check_same_recipe(out, args.preset, args.fresh)
    data_root = find_mnist_root(args.data_root)
    if limits:
        data_root = common.limited_data_root("mnist", data_root, out / "_subset", args.limit_train,
                                             args.limit_test)
        print(f"smoke test (NOT a benchmark): {common.limits_text(limits)} of MNIST", flush=True)
    results = common.run_sweep(args.bits, args.seeds,
                               lambda n, seed: run_length(args, n, seed, data_root, out, limits),
                               lambda done: write_results(out, done, args.fresh))
    return out, markdown(results), []


if __name__ == "__main__":
    sys.exit(main())

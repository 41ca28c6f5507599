"""DSH on CIFAR-10 at 12, 24, 32, 48 and 64 bits under the paper's protocol, next to the paper's figures.

Liu, Wang, Shan, Chen: *Deep Supervised Hashing for Fast Image Retrieval*, CVPR 2016, table 2 (CIFAR-10, mAP).
Protocol ``dsh-paper``: the 10,000 test images are the queries, the 50,000 training images the database, mAP@all;
the model is trained from scratch on the training images (the validation images that choose the best epoch are
carved from them; the test images choose nothing).

    python benchmarks/reproduce/paper_cifar10.py                                  # all five lengths
    python benchmarks/reproduce/paper_cifar10.py --bits 48 --seeds 0 1 2          # one length, three seeds
    python benchmarks/reproduce/paper_cifar10.py --bits 12 --out DIR              # one length
    python benchmarks/reproduce/paper_cifar10.py --protocol cifar10-1 --bits 48   # DeepHash-pytorch's split
    dsh eval --query DIR/query.npz --database DIR/database.npz          # re-check its mAP

``--protocol cifar10-1``: DeepHash-pytorch's split (1,000 queries, 5,000 training images, 59,000 in the database),
beside their DSH figure; the results go to ``benchmarks/results/paper_cifar10_cifar10-1``. One results folder
holds one preset's runs (another preset's is refused before training: use another ``--out``); the paper network's
figures were made with ``--preset cifar10-paper-bn-cpu --out benchmarks/results/paper_cifar10_paper_bn``.

Data: the original CIFAR-10 python batches (``cifar-10-batches-py``) under ``--data-root`` (default ``$DSH_DATA``,
else the shared data folder) when present, else the JPEG copy ``../shared/data/cifar10-jpeg`` (``--jpeg-root``),
named "CIFAR-10 (JPEG copy)" in every table. Settings: the preset ``cifar10-cpu`` where the library has it (else
``TrainConfig``'s defaults), then ``--set key=value``, then the named flags.

Per length ``N``: the run in ``DIR/bitsN/run``, its code files ``DIR/bitsN/query.npz`` and ``DIR/bitsN/database.npz``
(exactly what ``dsh encode`` writes) and ``DIR/bitsN/result.json``; with one length (and one seed) the two code
files are also left at ``DIR/``, unless another length's are there and this one is not 48 bits. ``--seeds 0 1``
trains each length once per seed (a seed ``S`` other than 0 in ``DIR/bitsN_seedS``) and adds the spread of mAP over
seeds to the table. ``DIR/results.json`` and ``DIR/results.md``
gather every (length, seed) run into ``DIR`` (a later run replaces those rows and keeps the others; ``--fresh``
starts over), rewritten after each run.

``--limit-train N`` / ``--limit-test N`` train and evaluate on a stratified subset, for smoke tests only: the
results are marked as not a benchmark, and are never merged with real ones.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402

from dsh.config import choices_of, parse_assignments  # noqa: E402
from dsh.errors import DataError  # noqa: E402
from dsh.eval.metrics import PrecisionCurve  # noqa: E402
from dsh.utils.fileio import atomic_write  # noqa: E402

# Table 2 of the DSH paper: mAP on CIFAR-10 (10,000 test queries vs 50,000 training images, mAP@all).
PAPER_MAP = {12: 0.6157, 24: 0.6512, 36: 0.6607, 48: 0.6755}
PROTOCOL = "dsh-paper"
# The published figure each protocol's table stands beside: (mAP by code length, where it comes from).
REFERENCES = {
    "dsh-paper": (PAPER_MAP, "Liu et al., CVPR 2016, table 2 (original CIFAR-10)"),
    # DeepHash-pytorch's README table: DSH with an ImageNet-pretrained AlexNet, trained on a GPU
    "cifar10-1": ({48: 0.800}, "DeepHash-pytorch's DSH (AlexNet pretrained on ImageNet, on a GPU), 48 bits"),
}
PREFERRED_PRESET = "cifar10-cpu"
PRETRAINED = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "timm")
BUDGET_SECONDS = 15 * 60  # the budget the figures are held to: at most 15 minutes of training per length on 2 CPU cores
TARGET_MAP = 0.85  # the bar the modern recipe is held to, at every length
DEFAULT_BITS = (12, 24, 32, 48, 64)  # the lengths reported (the paper's table has 12, 24, 36, 48)
SCRIPT = "benchmarks/reproduce/paper_cifar10.py"
DEFAULT_OUT = "benchmarks/results/paper_cifar10"
SMOKE_OUT = "runs/smoke/paper_cifar10"


# ---------------------------------------------------------------------------------------------------------------
# data and settings


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically (a reader never sees half a file)."""
    import shutil

    with open(src, "rb") as fin, atomic_write(dst) as fout:
        shutil.copyfileobj(fin, fout)


def find_source(data_root: str | None, jpeg_root: str | None) -> dict[str, str]:
    """Where CIFAR-10 comes from: ``{dataset, data_root, name}``; the original batches win over the JPEG copy."""
    from dsh.data.sources import find_cifar10

    shared = common.shared_data_dir()
    if data_root is not None and jpeg_root is None and (Path(data_root) / "train").is_dir():
        jpeg_root = data_root  # --data-root given as the JPEG copy itself
    root = data_root or os.environ.get("DSH_DATA") or (str(shared) if shared else None)
    if root is not None:
        try:
            find_cifar10(Path(root), "train", download=False)
            find_cifar10(Path(root), "test", download=False)
            return {"dataset": "cifar10", "data_root": str(Path(root)), "name": "CIFAR-10"}
        except DataError:
            pass
    jpeg = Path(jpeg_root) if jpeg_root else (shared / "cifar10-jpeg" if shared else None)
    if jpeg is not None and (jpeg / "train").is_dir() and (jpeg / "test").is_dir():
        return {"dataset": "folder", "data_root": str(jpeg), "name": "CIFAR-10 (JPEG copy)"}
    raise DataError(f"no CIFAR-10: neither cifar-10-batches-py under {root} nor a JPEG copy at {jpeg} "
                    f"(pass --data-root or --jpeg-root)")


def resolve_settings(args: argparse.Namespace, dataset: str, data_root: str, nbits: int, seed: int):
    """(TrainConfig, preset name or None): preset < --set < named flags < what this script fixes."""
    from dsh.config import resolve_config

    preset = common.resolve_preset(args.preset, PREFERRED_PRESET)
    overrides = parse_assignments(args.set, reserved=("dataset", "data_root", "nbits", "protocol", "seed"))
    flags = {"epochs": args.epochs, "model": args.model, "lr": args.lr, "batch_size": args.batch_size,
             "threads": args.threads}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    overrides.update(dataset=dataset, data_root=data_root, nbits=nbits, protocol=args.protocol, seed=seed)
    return resolve_config(overrides, preset=preset), preset


# ---------------------------------------------------------------------------------------------------------------
# one length


def run_length(args: argparse.Namespace, nbits: int, seed: int, source: dict[str, str], out: Path, limits: dict,
               single: bool) -> dict[str, Any]:
    """Train, encode and evaluate one code length with one seed; returns its record (also written to
    ``bitsN/result.json``, or ``bitsN_seedS/result.json`` for a seed other than 0)."""
    length_dir = out / common.length_folder(nbits, seed)
    record = common.finished_result(length_dir, limits, args.resume)
    if record is not None:
        print(f"{nbits} bits, seed {seed}: already done ({length_dir / 'result.json'}), kept (--resume)", flush=True)
    else:
        record = train_length(args, nbits, seed, source, length_dir, limits)
    if single:  # one length: its code files also at the top, DIR/query.npz and DIR/database.npz beside DIR/results.json
        for name in ("query.npz", "database.npz"):
            copy_file(length_dir / name, out / name)
    return record


def train_length(args: argparse.Namespace, nbits: int, seed: int, source: dict[str, str], length_dir: Path,
                 limits: dict) -> dict[str, Any]:
    run_dir = length_dir / "run"
    cfg, preset = resolve_settings(args, source["dataset"], source["data_root"], nbits, seed)
    resumed = args.resume and (run_dir / "last.pt").is_file()
    started, load_start = common.utc_now(), common.load_average()
    print(f"\n== {source['name']}, {nbits} bits, seed {seed}: preset {preset or '(none)'}, model {cfg.model}, "
          f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr} -> {run_dir}", flush=True)
    r = common.train_encode_evaluate(cfg, run_dir, length_dir, resume=resumed,
                                     progress=args.progress, log=lambda m: print(m, flush=True))
    r.pop("arrays")
    paper = reference_map(args.protocol).get(nbits)
    record = {
        "bits": nbits,
        "seed": seed,
        "dataset": source["name"],
        "dataset_key": source["dataset"],
        "data_root": cfg.data_root,
        "protocol": args.protocol,
        "benchmark": not limits,
        "limits": limits,
        **{k: v for k, v in r.items() if k not in ("history",)},
        "paper_map": paper,
        "map_minus_paper": None if paper is None else r["map"] - paper,
        "map_over_paper": None if paper is None else r["map"] / paper,
        "within_budget": r["train_seconds"] <= BUDGET_SECONDS,
        "resumed": resumed,
        "preset": preset,
        "config": cfg.to_dict(),
        "history": r["history"],
        **common.provenance(cfg, length_dir, started, load_start),
    }
    common.write_json(length_dir / "result.json", record)
    return record


# ---------------------------------------------------------------------------------------------------------------
# the table


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: a heading, what was measured, the table next to the paper's, settings, machine."""
    rows = common.sort_runs(results["runs"])
    lines = [f"# DSH on {rows[0]['dataset']}, protocol {protocol_of(rows)}", ""]
    if not results.get("benchmark", True):
        lines += [f"**NOT a benchmark: smoke test on a subset ({common.limits_text(rows[0]['limits'])}).**", ""]
    lines += [describe(rows), "", *table_lines(rows), "", *spread_lines(rows), *settings_lines(rows),
              *common.machine_lines(rows)]
    return "\n".join(lines).rstrip() + "\n"


def protocol_of(rows: list[dict]) -> str:
    return rows[0].get("protocol") or PROTOCOL


def reference_map(protocol: str) -> dict[int, float]:
    return REFERENCES.get(protocol, ({}, ""))[0]


def describe(rows: list[dict]) -> str:
    protocol = protocol_of(rows)
    source = REFERENCES.get(protocol, ({}, "none"))[1]
    c = rows[0]["config"]
    start = (f"started from ImageNet weights ({c['model']}, tune {c.get('tune') or 'all'})"
             if c["model"] in PRETRAINED else "trained from scratch")
    if protocol == PROTOCOL:
        return (f"{rows[0]['n_queries']:,} test queries against {rows[0]['n_database']:,} training images as the "
                f"database, mAP@all; {start}. Paper: {source}.")
    from dsh.data.protocols import get_protocol

    return (f"Protocol `{protocol}`: {get_protocol(protocol).description} Here {rows[0]['n_queries']:,} queries "
            f"against {rows[0]['n_database']:,}; {start}. Reference: {source}.")


def table_lines(rows: list[dict]) -> list[str]:
    """bits, mAP, the paper's mAP, difference, ratio, precision r<=2, training time, images/s, best epoch."""
    lines = [
        "| bits | seed | mAP | published mAP | mAP − published | mAP / published | precision r≤2 | precision@1000 | "
        f"training time | images/s | best epoch (val mAP) | ≥ published in ≤ 15 min | ≥ {TARGET_MAP} |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in common.sort_runs(rows):
        diff = "—" if r.get("map_minus_paper") is None else f"{r['map_minus_paper']:+.4f}"
        ratio = "—" if r.get("map_over_paper") is None else f"{r['map_over_paper']:.3f}"
        lines.append(
            f"| {r['bits']} | {common.seed_of(r)} | {r['map']:.4f} | {common.fmt_float(r.get('paper_map'))} | "
            f"{diff} | {ratio} | "
            f"{r['precision_at_radius_2']:.4f} | {common.fmt_float(precision_at(r, 1000))} | "
            f"{common.fmt_seconds(r['train_seconds'])} | "
            f"{r['images_per_second']:.0f} | {r['best_epoch']}/{r['config']['epochs']} "
            f"({r['best_val_map']:.4f}) | {target_met(r)} | {modern_target_met(r)} |"
        )
    return lines


def precision_at(r: dict, k: int) -> float | None:
    """precision@k of a run's record (tie-aware, from its ``precision_at_k`` curve), ``None`` where not kept."""
    curve = r.get("precision_at_k")
    return None if not curve else PrecisionCurve(**curve).at(k)


def spread_lines(rows: list[dict]) -> list[str]:
    """For each length trained with more than one seed: every seed's mAP, and how many reach the paper's."""
    out = []
    for nbits, runs in common.spread_by_length(rows).items():
        paper = reference_map(protocol_of(rows)).get(nbits)
        whose = "the paper's" if protocol_of(rows) == PROTOCOL else "the published"
        versus = "" if paper is None else (f"; {sum(r['map'] >= paper for r in runs)} of {len(runs)} at or above "
                                           f"{whose} {paper:.4f}")
        out.append(f"- {nbits} bits over {common.map_spread_text(runs)}{versus}.")
    return ["Spread over seeds:", "", *out, ""] if out else []


def target_met(r: dict) -> str:
    """The first bar: mAP at or above the published figure (where there is one), in at most 15 minutes of
    training."""
    misses = []
    if r.get("paper_map") is not None and r["map"] < r["paper_map"]:
        misses.append("below paper" if r.get("protocol", PROTOCOL) == PROTOCOL else "below published")
    if r["train_seconds"] > BUDGET_SECONDS:
        misses.append("over 15 min")
    return "yes" if not misses else "no: " + ", ".join(misses)


def modern_target_met(r: dict) -> str:
    """The bar for the modern recipe: mAP at or above TARGET_MAP (in the same 15 minutes)."""
    return "yes" if r["map"] >= TARGET_MAP and r["train_seconds"] <= BUDGET_SECONDS else "no"


def settings_lines(rows: list[dict]) -> list[str]:
    """One line per distinct setting used (usually one for all lengths)."""
    keys = ("model", "width", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
            "warmup_fraction", "sampler", "crop_padding", "flip", "tta_flip", "amp")  # the seed has its own column
    seen: dict[str, list[int]] = {}
    for r in rows:
        c = r["config"]
        # a pretrained backbone's settings, where the run has them (older records do not)
        extra = [k for k in ("weights", "tune", "input_size", "head_epochs", "backbone_lr_scale")
                 if k in c and c["model"] in PRETRAINED]
        text = f"preset `{r.get('preset') or '(none)'}`: " + ", ".join(f"{k} {c.get(k)}" for k in (*keys, *extra))
        seen.setdefault(text, []).append(r["bits"])
    if len(seen) == 1:
        return [f"Settings: {next(iter(seen))}.", ""]
    return ["Settings:", "", *(f"- {', '.join(map(str, dict.fromkeys(b)))} bits: {t}." for t, b in seen.items()),
            ""]


# ---------------------------------------------------------------------------------------------------------------
# results files


def merge(out: Path, new: list[dict], fresh: bool) -> list[dict]:
    """The runs of ``out/results.json`` for (length, seed) pairs not in ``new``, plus ``new``; smoke and real runs
    never mix."""
    old = common.read_json(out / "results.json")
    if fresh or old is None:
        return common.sort_runs(new)
    is_benchmark = all(r["benchmark"] for r in new)
    return common.merge_runs(old.get("runs", []), new, keep=lambda r: r.get("benchmark") == is_benchmark
                             and r.get("dataset") == new[0]["dataset"])


TOP_LEVEL_BITS = 48


def write_results(out: Path, runs: list[dict], top_level_bits: int | None) -> dict:
    results = {
        "benchmark": all(r["benchmark"] for r in runs),
        "protocol": protocol_of(runs),
        "dataset": runs[0]["dataset"],
        "paper_map": {str(k): v for k, v in reference_map(protocol_of(runs)).items()},
        "budget_seconds": BUDGET_SECONDS,
        "script": SCRIPT,
        "top_level_codes_bits": top_level_bits,
        "runs": runs,
    }
    prev = common.read_json(out / "results.json")
    if top_level_bits is None and prev is not None:
        results["top_level_codes_bits"] = prev.get("top_level_codes_bits")  # DIR/query.npz of an earlier run
    common.write_json(out / "results.json", results)
    common.write_text(out / "results.md", markdown(results))
    return results


# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=list(DEFAULT_BITS),
                   help=f"code lengths (default: {' '.join(map(str, DEFAULT_BITS))})")
    p.add_argument("--protocol", default=PROTOCOL, choices=choices_of("protocol"),
                   help=f"the split (default {PROTOCOL}, the paper's; cifar10-1 is DeepHash-pytorch's, results in "
                        f"{DEFAULT_OUT}_cifar10-1)")
    p.add_argument("--out", help=f"results folder (default: {DEFAULT_OUT}; with --limit-*: {SMOKE_OUT})")
    p.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $DSH_DATA, else the shared "
                                       "data folder); the JPEG copy is used where it holds none")
    p.add_argument("--jpeg-root", help="the CIFAR-10 JPEG copy (default: ../shared/data/cifar10-jpeg or "
                                       "$DSH_TEST_DATA/cifar10-jpeg)")
    p.add_argument("--preset", help=f"named settings (default: {PREFERRED_PRESET} where dsh.config.PRESETS has it; "
                                    f"'none' for TrainConfig's defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any TrainConfig setting, e.g. --set sampler=balanced --set amp=off (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="train each length once per seed (default: 0); seed S other than 0 goes to bitsN_seedS")
    p.add_argument("--epochs", type=int, help="passes over the training images (default: the preset's)")
    p.add_argument("--model", choices=choices_of("model"), help="the network (default: the preset's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    p.add_argument("--threads", type=int, help="torch and numba threads (default: the preset's, else torch's)")
    common.add_run_control_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run_benchmark("paper_cifar10", lambda: sweep(args))


def sweep(args: argparse.Namespace) -> tuple[Path, str, list[str]]:
    default_out = DEFAULT_OUT if args.protocol == PROTOCOL else f"{DEFAULT_OUT}_{args.protocol}"
    limits, out = common.run_limits_and_out(args, default_out, SMOKE_OUT)
    source = find_source(args.data_root, args.jpeg_root)
    print(f"data: {source['name']} from {source['data_root']}", flush=True)
    if limits:
        subset = common.limited_data_root(source["dataset"], Path(source["data_root"]), out / "_subset",
                                          args.limit_train, args.limit_test)
        source = {**source, "data_root": str(subset)}
        print(f"smoke test (NOT a benchmark): {common.limits_text(limits)} from {source['name']}", flush=True)
    bits, seeds = list(dict.fromkeys(args.bits)), list(dict.fromkeys(args.seeds))
    common.check_same_recipe(out, common.resolve_preset(args.preset, PREFERRED_PRESET), args.fresh)
    # one run alone leaves its code files at the top of the folder too, unless they are another length's: the
    # top files stay the first run's, or a 48-bit run's (the length every table compares at)
    prev = None if args.fresh else (common.read_json(out / "results.json") or {}).get("top_level_codes_bits")
    single = len(bits) == 1 and len(seeds) == 1 and (prev in (None, bits[0]) or bits[0] == TOP_LEVEL_BITS)
    results = common.run_sweep(
        bits, seeds, lambda n, seed: run_length(args, n, seed, source, out, limits, single=single),
        lambda done: write_results(out, merge(out, done, args.fresh), bits[0] if single else None))
    recheck = [f"re-check: dsh eval --query {out / 'query.npz'} --database {out / 'database.npz'}"] if single else []
    return out, markdown(results), recheck


if __name__ == "__main__":
    sys.exit(main())

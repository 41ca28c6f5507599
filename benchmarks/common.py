"""What the benchmark scripts share, and only what is specific to benchmarks (the library owns the rest).

- where things are: :func:`repo_root`, :func:`shared_data_dir` (the offline datasets folder, as the tests find it);
- what ran where: :func:`machine_info`, :func:`provenance`, :func:`command_line`, :func:`utc_now`,
  :func:`load_average`;
- run control: :func:`add_run_control_args` (``--resume``, ``--fresh``, smoke limits), :func:`resolve_preset`,
  :func:`check_same_recipe`;
- sweeps over code lengths x seeds: :func:`run_sweep` (resume, merge with earlier rows: :func:`with_earlier_runs`)
  and :func:`run_benchmark` (one-line errors, the table printed);
- smoke tests: :func:`limited_data_root` writes a small, stratified copy of a dataset in its own format, so a smoke
  run goes through exactly the code a real run does, only on fewer images;
- one code length end to end: :func:`train_encode_evaluate` (train, encode the protocol's query and database parts
  with the best checkpoint, write the ``.npz`` code files of ``dsh encode``, evaluate), as a result record;
- output: :func:`dsh.utils.fileio.write_json` and :func:`dsh.utils.fileio.write_text` (atomic; imported here for the
  scripts), table cells (:func:`fmt_seconds`, :func:`fmt_float`, :func:`fmt_cell`).

Settings come from :func:`dsh.config.parse_assignments` and :func:`dsh.config.resolve_config`, threads from
:func:`dsh.utils.threads.set_threads`, the CPU's name from :mod:`dsh.utils.cpu`. Only the standard library and
torch-free dsh modules are imported at module level, so ``make_readme_results.py`` stays light; torch and dsh's
training code are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from dsh.utils.cpu import cpu_model, usable_cpus
from dsh.utils.fileio import DataError, atomic_write, write_json, write_text  # noqa: F401 (the scripts write through common)

# ---------------------------------------------------------------------------------------------------------------
# where things are


def add_run_control_args(p: argparse.ArgumentParser) -> None:
    """The options every training benchmark shares: resuming, progress bars and smoke-test subsets."""
    p.add_argument("--resume", action="store_true",
                   help="keep lengths already finished in --out and continue interrupted runs")
    p.add_argument("--fresh", action="store_true", help="do not keep other lengths' rows from --out/results.json")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="tqdm progress bars (default: on a terminal)")
    p.add_argument("--limit-train", type=int, metavar="N", help="smoke test: train on N training images only")
    p.add_argument("--limit-test", type=int, metavar="N", help="smoke test: N test queries only")


def provenance(cfg, length_dir: Path, started: str, load_start: list[float] | None) -> dict[str, Any]:
    """Where and how a result was made: machine and load, the command, times, and its code files."""
    return {
        "machine": {**machine_info(cfg.threads), "load_average_start": load_start,
                    "load_average_end": load_average()},
        "command": command_line(),
        "started": started,
        "finished": utc_now(),
        "query_file": f"{length_dir.name}/query.npz",
        "database_file": f"{length_dir.name}/database.npz",
    }


def resolve_preset(requested: str | None, preferred: str | None) -> str | None:
    """``--preset``: absent -> ``preferred`` where the library has it; ``"none"`` -> no preset (TrainConfig's
    defaults); a name the library lacks -> :class:`DataError` listing those it has."""
    from dsh.config import PRESETS

    if requested is None:
        return preferred if preferred in PRESETS else None
    if requested.lower() == "none":
        return None
    if requested not in PRESETS:
        raise DataError(f"unknown preset {requested!r}; choose from: {', '.join(sorted(PRESETS))}, or none")
    return requested


def run_limits_and_out(args: argparse.Namespace, default_out: str, smoke_out: str) -> tuple[dict, Path]:
    """The smoke-test limits (``{"train": N, "test": N}``, empty for a real benchmark) and the results folder;
    refuses bad ``--bits`` or ``--seeds`` and a smoke test that would overwrite real benchmark results."""
    limits = {k: v for k, v in (("train", args.limit_train), ("test", args.limit_test)) if v is not None}
    out = Path(args.out or (smoke_out if limits else default_out))
    if any(b < 1 for b in args.bits):
        raise DataError(f"--bits must be >= 1, got {args.bits}")
    if any(s < 0 for s in getattr(args, "seeds", [])):
        raise DataError(f"--seeds must be >= 0, got {args.seeds}")
    old = read_json(out / "results.json")
    if limits and old is not None and old.get("benchmark"):
        raise DataError(f"{out}/results.json holds benchmark results; write the smoke test elsewhere (--out)")
    return limits, out


def limits_text(limits: dict) -> str:
    """``{"train": 2000}`` -> ``"train 2,000 images"``."""
    return ", ".join(f"{k} {v:,} images" for k, v in limits.items() if v is not None)


def repo_root() -> Path:
    """The repository this file belongs to (the parent of ``benchmarks/``)."""
    return Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The offline datasets folder (``MNIST/``, ``cifar10-jpeg/``): ``$DSH_TEST_DATA``, else ``../shared/data``
    beside the repository (as ``tests/conftest.py`` finds it); ``None`` where neither exists."""
    env = os.environ.get("DSH_TEST_DATA")
    root = Path(env) if env else repo_root().parent / "shared" / "data"
    return root if root.is_dir() else None


# ---------------------------------------------------------------------------------------------------------------
# what ran where


def proc_status_kb(pid: int | str, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of ``/proc/PID/status`` given in kB (e.g. ``VmHWM``, the peak resident set); absent ones left out."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages: other jobs on a shared machine slow a benchmark, so it is recorded."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, usable CPUs, the threads torch used, and the versions that matter for the figures."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus_usable": usable_cpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in ("torch", "numpy", "numba"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", "?")
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if threads is not None:
        info["threads"] = threads
    import dsh

    info["dsh"] = getattr(dsh, "__version__", "?")
    return info


def machine_lines(rows: list[dict]) -> list[str]:
    """Where it ran: CPU, threads, torch (one line per distinct machine), and the load average at each start."""
    machines = dict.fromkeys((r["machine"]["cpu"], r["machine"].get("cpus_usable"), r["machine"].get("torch_threads"),
                              r["machine"].get("torch")) for r in rows)
    out = [f"Measured on {cpu} ({cpus} usable CPUs), {threads} torch threads, torch {torch}."
           for cpu, cpus, threads, torch in machines]
    loads = [(f"{r['bits']} bits" + (f", seed {r['seed']}" if r.get("seed") else ""),
              r["machine"]["load_average_start"][0]) for r in rows if r["machine"].get("load_average_start")]
    if loads:
        out.append("1-minute load average when each length started (other jobs on the machine slow training): "
                   + ", ".join(f"{load} ({what})" for what, load in loads) + ".")
    return out


def command_line(drop: tuple[str, ...] = ("--resume",)) -> str:
    """The command that is running, as one line a user can paste (paths as typed), without the ``drop`` flags:
    ``--resume`` only says which finished lengths to keep, and would keep them instead of re-making them."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return shlex.join(["python", str(script), *(a for a in sys.argv[1:] if a not in drop)])


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------------
# settings


# ---------------------------------------------------------------------------------------------------------------
# output


def recipe_name(preset: str | None) -> str:
    return f"preset {preset}" if preset else "library defaults"


def check_same_recipe(out: Path, preset: str | None, fresh: bool) -> None:
    """One results folder holds one recipe: refuse (before any training) to add runs of ``preset`` to a folder
    whose ``results.json`` holds runs of another, unless ``fresh``; their rows would be read as this one's."""
    old = read_json(Path(out) / "results.json")
    if old is None or fresh or not old.get("runs"):
        return
    others = sorted({recipe_name(r.get("preset")) for r in old["runs"]} - {recipe_name(preset)})
    if others:
        raise DataError(f"{out}/results.json holds runs of {', '.join(others)}, not {recipe_name(preset)}: pass "
                        f"another --out, or --fresh to replace them")


def with_earlier_runs(out: Path, runs: list[dict], fresh: bool) -> list[dict]:
    """``runs`` plus, unless ``fresh``, the other (length, seed) rows of ``out/results.json`` of the same kind
    (smoke tests and benchmarks never mix)."""
    old = read_json(Path(out) / "results.json")
    if old is None or fresh:
        return runs
    benchmark = all(r["benchmark"] for r in runs)
    return merge_runs(old.get("runs", []), runs, keep=lambda r: r.get("benchmark") == benchmark)


def run_sweep(bits: list[int], seeds: list[int], run_one: Callable[[int, int], dict],
              save: Callable[[list[dict]], dict]) -> dict:
    """Every (length, seed) pair in order: ``run_one(nbits, seed)`` gives its record, and ``save(records so
    far)`` rewrites the results files after each one (so an interrupted sweep keeps what it finished). Returns the
    last saved results."""
    done: list[dict] = []
    results: dict = {}
    for nbits in dict.fromkeys(bits):
        for seed in dict.fromkeys(seeds):
            done.append(run_one(nbits, seed))
            results = save(done)
    return results


def run_benchmark(name: str, sweep: Callable[[], tuple[Path, str, list[str]]]) -> int:
    """A sweep script's ``main``: ``sweep()`` runs it and returns (its results folder, the Markdown table, lines
    to print after it); a user's mistake (:class:`UserError`) is one line ``NAME: error: ...`` and status 2."""
    from dsh.errors import UserError

    try:
        out, markdown_text, after = sweep()
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    print("\n" + markdown_text, flush=True)
    print(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'results.md'}")
    for line in after:
        print(line)
    return 0


def write_results(out: str | os.PathLike, stem: str, result: dict, markdown_text: str) -> None:
    """A benchmark's ``stem.json`` and ``stem.md`` in ``out`` (atomically), and the table on stdout."""
    write_json(Path(out) / f"{stem}.json", result)
    write_text(Path(out) / f"{stem}.md", markdown_text)
    print(markdown_text)


def length_folder(nbits: int, seed: int) -> str:
    """A run's folder under a results folder: ``bits8`` for seed 0 (the run whose tables and maps are shown),
    ``bits8_seed1`` for another seed."""
    return f"bits{nbits}" if seed == 0 else f"bits{nbits}_seed{seed}"


def seed_of(record: dict) -> int:
    """A result record's training seed (records from before ``--seeds`` hold it only in their config)."""
    return int(record.get("seed", (record.get("config") or {}).get("seed", 0)))


def sort_runs(rows: list[dict]) -> list[dict]:
    """Result records by length, then seed."""
    return sorted(rows, key=lambda r: (r["bits"], seed_of(r)))


def merge_runs(old: list[dict], new: list[dict], keep=lambda r: True) -> list[dict]:
    """``new`` plus the ``old`` records of other (length, seed) pairs that pass ``keep``, sorted."""
    replaced = {(r["bits"], seed_of(r)) for r in new}
    return sort_runs([r for r in old if (r["bits"], seed_of(r)) not in replaced and keep(r)] + list(new))


def main_row(rows: list[dict], nbits: int) -> dict | None:
    """The run of ``nbits`` with the lowest seed: the one whose details are shown."""
    return next((r for r in sort_runs(rows) if r["bits"] == nbits), None)


def spread_by_length(rows: list[dict]) -> dict[int, list[dict]]:
    """The lengths trained with more than one seed, each with its runs in seed order."""
    groups: dict[int, list[dict]] = {}
    for r in sort_runs(rows):
        groups.setdefault(r["bits"], []).append(r)
    return {bits: runs for bits, runs in groups.items() if len(runs) > 1}


def map_spread_text(runs: list[dict]) -> str:
    """``"seeds 0, 1: mAP 0.7062, 0.7010 (mean 0.7036, range 0.7010–0.7062)"``."""
    maps = [r["map"] for r in runs]
    return (f"seeds {', '.join(str(seed_of(r)) for r in runs)}: mAP {', '.join(f'{m:.4f}' for m in maps)} "
            f"(mean {sum(maps) / len(maps):.4f}, range {min(maps):.4f}–{max(maps):.4f})")


def finished_result(length_dir: Path, limits: dict, resume: bool) -> dict | None:
    """With ``resume``, the record a finished earlier run left in ``length_dir/result.json`` (same limits)."""
    if not resume:
        return None
    cached = read_json(length_dir / "result.json")
    return cached if cached is not None and cached.get("limits") == limits else None


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON in ``path``, or ``None`` where there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def fmt_seconds(seconds: float | None) -> str:
    """``452.3`` -> ``"7 min 32 s"``; ``41.0`` -> ``"41.0 s"``; ``None`` -> ``"—"``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


def fmt_cell(x, digits=0) -> str:
    """A table cell: a number with thousands separators, ``yes``/``NO`` for a bool, a dash for ``None``."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    return f"{x:,.{digits}f}"


def fmt_float(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------------------------
# smoke tests on fewer images


def _quota(n: int, n_classes: int) -> list[int]:
    """``n`` items spread over classes as evenly as possible (the first ``n % n_classes`` get one more)."""
    return [n // n_classes + (1 if c < n % n_classes else 0) for c in range(n_classes)]


def _limit_folder(src: Path, dest: Path, limits: dict[str, int | None]) -> None:
    """A class-per-folder tree of symbolic links to the first files (sorted) of every class, per split."""
    for split, limit in limits.items():
        classes = sorted(d.name for d in (src / split).iterdir() if d.is_dir() and not d.name.startswith("."))
        files_of = {c: sorted(p for p in (src / split / c).rglob("*") if p.is_file()) for c in classes}
        quota = _quota(limit, len(classes)) if limit is not None else [len(files_of[c]) for c in classes]
        for c, k in zip(classes, quota):
            for p in files_of[c][:k]:
                link = dest / split / c / p.relative_to(src / split / c)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(p.resolve())


def _write_idx(path: Path, array) -> None:
    """An IDX file of unsigned bytes (MNIST's format): magic 0x0000 08 ndim, big-endian dims, data."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(header + array.tobytes())


def _limit_mnist(src: Path, dest: Path, limits: dict[str, int | None]) -> None:
    from dsh.data import load_split, stratified_subset

    for split, limit in limits.items():
        s = load_split("mnist", split, data_root=src, download=False)
        keep = stratified_subset(s.labels.numpy(), min(limit, len(s)), seed=0) if limit is not None else slice(None)
        prefix = {"train": "train", "test": "t10k"}[split]
        _write_idx(dest / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", s.images.numpy()[keep][:, 0])
        _write_idx(dest / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", s.labels.numpy()[keep])


def _limit_cifar10(src: Path, dest: Path, limits: dict[str, int | None]) -> None:
    """Subsets written as CIFAR-10 python batches (5 train batches, a test batch, batches.meta)."""
    import pickle

    import numpy as np

    from dsh.data import load_split, stratified_subset

    out = dest / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    names = None
    for split, limit in limits.items():
        s = load_split("cifar10", split, data_root=src, download=False)
        names = s.class_names
        keep = stratified_subset(s.labels.numpy(), min(limit, len(s)), seed=0) if limit is not None else slice(None)
        data = s.images.numpy()[keep].reshape(-1, 3 * 32 * 32)
        labels = s.labels.numpy()[keep]
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        for name, part in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            with atomic_write(out / name) as f:
                pickle.dump({b"data": data[part], b"labels": labels[part].tolist()}, f)
    with atomic_write(out / "batches.meta") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f)


def limited_data_root(dataset: str, data_root: Path, dest: Path, limit_train: int | None,
                      limit_test: int | None) -> Path:
    """A copy of ``dataset`` under ``dest`` holding only ``limit_train`` training and ``limit_test`` test images
    (stratified, fixed), in the dataset's own format, for smoke tests; ``data_root`` itself where no limit is set.

    The copy is remade only when the source or the limits change (``dest/subset.json`` records them).
    """
    if limit_train is None and limit_test is None:
        return data_root
    for name, value in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        if value is not None and value < 20:
            raise DataError(f"{name} must be at least 20 (a few images per class), got {value}")
    spec = {"dataset": dataset, "source": str(Path(data_root).resolve()), "train": limit_train, "test": limit_test}
    marker = dest / "subset.json"
    if read_json(marker) == spec:
        return dest
    if dest.exists():
        import shutil

        shutil.rmtree(dest)  # a subset this function wrote earlier, with other limits
    dest.mkdir(parents=True)
    limits = {"train": limit_train, "test": limit_test}
    {"folder": _limit_folder, "mnist": _limit_mnist, "cifar10": _limit_cifar10}[dataset](Path(data_root), dest,
                                                                                        limits)
    write_json(marker, spec)
    return dest


# ---------------------------------------------------------------------------------------------------------------
# one code length end to end


def train_encode_evaluate(cfg, run_dir: Path, codes_dir: Path, *, keep_u: bool = False, resume: bool = False,
                          progress: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, then :func:`dsh.train.experiment.encode_and_evaluate` it.

    The query and database are the parts of ``cfg.protocol`` (e.g. ``"dsh-paper"``), or test against train
    without one. Writes ``codes_dir/query.npz`` and ``codes_dir/database.npz`` (``dsh encode``'s files, ``u`` in
    the query file with ``keep_u``). Returns the figures, the codes and labels (``"arrays"``) and the timings.
    """
    from dsh.eval.metrics import mean_average_precision
    from dsh.train.experiment import encode_and_evaluate
    from dsh.train.loop import train
    from dsh.utils.threads import set_threads

    set_threads(cfg.threads)  # torch's and numba's pools, as dsh train --threads sets them
    result = train(cfg, run_dir, resume=resume, progress=progress, log=log)
    judged = encode_and_evaluate(run_dir, out_dir=codes_dir, keep_u=keep_u)
    q, db, metrics = judged.query, judged.database, judged.metrics
    return {
        "map": metrics.map,
        "ties": metrics.ties,
        # beside the tie-aware figure, the one a stable sort gives, for comparison with tools that sort so
        "map_position_ties": mean_average_precision(q.codes, db.codes, q.labels, db.labels, q.nbits,
                                                    ties="position"),
        "precision_at_radius_2": metrics.precision_at_radius,  # encode_and_evaluate's radius is 2
        "recall_at_radius_2": metrics.recall_at_radius,
        "n_queries": metrics.n_queries,
        "n_database": metrics.n_database,
        "train_seconds": result.train_seconds,
        "run_seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_map": result.best_val_map,
        "history": result.history,
        "encode_seconds": judged.encode_seconds,
        "eval_seconds": judged.eval_seconds,
        "pr_curve": asdict(metrics.pr_curve),
        "precision_at_k": asdict(metrics.precision_at_k),
        "arrays": {"q_u": q.u, "q_codes": q.codes, "q_labels": q.labels, "db_codes": db.codes,
                   "db_labels": db.labels, "class_names": [str(c) for c in q.class_names]},
    }

"""Every writer with the disk filling mid-write: a one-line error naming the file, the previous file intact (byte for
byte, and still loadable), no temporary left behind.

The disk fills by ``RLIMIT_FSIZE``: in a subprocess (the limit holds for the whole process), with ``SIGXFSZ``
ignored so that a write past the limit fails with ``EFBIG`` as a write to a full disk fails with ``ENOSPC``, and
dsh treats both alike (``dsh.utils.fileio.NO_SPACE``). Each case first writes the previous version of its file
without a limit, then lowers the limit below the new version's size and writes that. One subprocess runs every
case (the library's writers, then ``dsh encode --images`` and ``dsh train`` through the command line) and reports
each as JSON; each test below checks one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
INF = resource.RLIM_INFINITY


# -- the writers, each: (target, write the previous version, write the new one) -----------------------------------


def _codes(d: Path, run: Path):
    from dsh.codes.codefile import CodeFile, load_codes, save_codes

    rng = np.random.default_rng(0)
    path = d / "codes.npz"
    return (path, lambda: save_codes(path, CodeFile(rng.integers(0, 256, (10, 8), dtype=np.uint8), 64)),
            lambda: save_codes(path, CodeFile(rng.integers(0, 256, (20000, 8), dtype=np.uint8), 64)),
            lambda: len(load_codes(path)) == 10, 64 << 10)


def _index(d: Path, run: Path, fail_in: str):
    from dsh import HammingIndex

    rng = np.random.default_rng(1)
    path = d / "db.dshidx"

    def index(n: int, with_paths: bool) -> HammingIndex:
        i = HammingIndex(256)
        i.add(rng.integers(0, 256, (n, 32), dtype=np.uint8), labels=rng.integers(0, 3, n),
              paths=[f"{'p' * 200}/{j}.jpg" for j in range(n)] if with_paths else None)
        return i

    n = 4000
    # catalog: ids and labels (64 KB) with paths (about 900 KB) or without; index: codes and ids, 160 KB
    limit = (100 << 10) if fail_in == "catalog" else (130 << 10)
    return (path, lambda: index(10, True).save(path), lambda: index(n, fail_in == "catalog").save(path),
            lambda: HammingIndex.load(path).ntotal == 10 and HammingIndex.load(path).catalog is not None, limit)


def _faiss(d: Path, run: Path):
    pytest.importorskip("faiss")
    from dsh.index.faiss_file import read_faiss, write_faiss

    rng = np.random.default_rng(2)
    path = d / "db.faissbin"
    return (path, lambda: write_faiss(path, rng.integers(0, 256, (10, 8), dtype=np.uint8), 64),
            lambda: write_faiss(path, rng.integers(0, 256, (20000, 8), dtype=np.uint8), 64),
            lambda: read_faiss(path).ntotal == 10, 64 << 10)


def _checkpoint(d: Path, run: Path):
    import torch

    from dsh.models.checkpoint import save_checkpoint

    path = d / "last.pt"
    return (path, lambda: save_checkpoint(path, {"epoch": 1, "weights": torch.zeros(10)}),
            lambda: save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(200_000)}),
            lambda: torch.load(path, weights_only=True)["epoch"] == 1, 256 << 10)


def _export(d: Path, run: Path, fmt: str):
    from dsh.runtime.export import export_model

    path = d / f"model.{fmt}"

    def loads() -> bool:
        from dsh.runtime import Encoder

        return Encoder.from_file(path).nbits == 8

    return (path, lambda: export_model(run, path), lambda: export_model(run, path), loads, 4 << 10)


def _features(d: Path, run: Path):
    from dsh.train import features as F

    path = d / "part-00000.npz"
    return (path, lambda: F._write_part(path, "k", 0, np.zeros((2, 4), np.float32)),
            lambda: F._write_part(path, "k", 0, np.zeros((2000, 64), np.float32)),
            lambda: F._read_part(path, "k", 0, 2, 4).shape == (2, 4), 64 << 10)


def _json(d: Path, run: Path):
    from dsh.utils.fileio import write_json

    path = d / "summary.json"
    return (path, lambda: write_json(path, {"epochs": 1}), lambda: write_json(path, {"history": list(range(50000))}),
            lambda: json.loads(path.read_text()) == {"epochs": 1}, 64 << 10)


def _text(d: Path, run: Path):
    from dsh.utils.fileio import write_text

    path = d / "results.md"
    return (path, lambda: write_text(path, "| a |\n"), lambda: write_text(path, "| row |\n" * 20000),
            lambda: path.read_text() == "| a |\n", 64 << 10)


def _config(d: Path, run: Path):
    from dsh.config import TrainConfig, save_config

    path = d / "config.json"
    return (path, lambda: save_config(TrainConfig(), path), lambda: save_config(TrainConfig(nbits=16), path),
            lambda: json.loads(path.read_text())["nbits"] == TrainConfig().nbits, 64)


def _plot(d: Path, run: Path):
    pytest.importorskip("matplotlib")
    from dsh.eval.plots import plot_precision_at_k

    path = d / "precision_at_k.png"
    curve = {"precision_at_k": {"k": [1, 10, 100], "precision": [1.0, 0.8, 0.5]}}
    return (path, lambda: plot_precision_at_k({"a": curve}, path), lambda: plot_precision_at_k({"b": curve}, path),
            lambda: path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", 4 << 10)


def _dataset_cache(d: Path, run: Path):
    # the cache is optional: a full disk there warns (naming the file), the data is still returned, and the entry
    # written before is left as it was
    import torch

    from dsh.data.cache import cached, entry_stem, load_entry
    from dsh.data.imageset import ImageSet

    where = {"dataset": "x", "split": "train"}
    stems = [entry_stem(where, what)[0] for what in ("old", "new")]

    def entry(n: int) -> ImageSet:
        return ImageSet(torch.zeros((n, 1, 8, 8), dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), ["a"])

    def new() -> None:
        assert cached(d, where, "new", lambda: entry(5000)).images.shape[0] == 5000

    return (d / f"{stems[1]}.images.npy", lambda: cached(d, where, "old", lambda: entry(2)), new,
            lambda: load_entry(d, stems[0]).images.shape[0] == 2, 16 << 10)


WRITERS = {
    "code file": _codes,
    "index (catalog fails)": lambda d, run: _index(d, run, "catalog"),
    "index (index fails)": lambda d, run: _index(d, run, "index"),
    "faiss file": _faiss,
    "checkpoint": _checkpoint,
    "ONNX export": lambda d, run: _export(d, run, "onnx"),
    "safetensors export": lambda d, run: _export(d, run, "safetensors"),
    "feature cache": _features,
    "results JSON": _json,
    "results text": _text,
    "run config": _config,
    "plot": _plot,
    "dataset cache": _dataset_cache,
}

# the command line, end to end: the exit status and the one line on stderr
COMMANDS = {
    "dsh index": ("db.dshidx", 100 << 10),
    "dsh encode --images": ("codes.npz", 6 << 10),
    "dsh train": ("run", 16 << 10),
}

DISK_FULL_CASES = list(WRITERS) + list(COMMANDS)


@contextlib.contextmanager
def full_disk(limit: int):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, INF))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (INF, INF))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _run_writer(name: str, d: Path, run: Path) -> dict:
    import warnings

    target, old, new, loads, limit = WRITERS[name](d, run)
    old()
    before = _snapshot(d)
    with warnings.catch_warnings(record=True) as caught, full_disk(limit):
        warnings.simplefilter("always")
        try:
            new()
            error = None
        except Exception as e:
            error = {"type": type(e).__name__, "message": str(e), "tb": traceback.format_exc(limit=-3)}
    return {"target": str(target), "error": error, "warnings": [str(w.message) for w in caught],
            "intact": _snapshot(d) == before, "loads": bool(loads()),
            "left": sorted(set(_snapshot(d)) - set(before))}


def _run_command(name: str, d: Path, run: Path) -> dict:
    from conftest import write_digit_folder

    from dsh.cli import main

    target, limit = COMMANDS[name]
    target = d / target
    if name == "dsh index":  # the catalog (paths of 300 images) fits, the index (3,000 256-bit codes) does not
        from dsh import HammingIndex
        from dsh.codes.codefile import CodeFile, save_codes

        rng = np.random.default_rng(3)
        for stem, n in (("old", 10), ("new", 3000)):
            save_codes(d / f"{stem}.npz", CodeFile(rng.integers(0, 256, (n, 32), dtype=np.uint8), 256,
                                                   labels=rng.integers(0, 3, n)))
        assert main(["index", "--codes", str(d / "old.npz"), "--out", str(target), "--quiet"]) == 0
        argv = ["index", "--codes", str(d / "new.npz"), "--out", str(target), "--quiet"]
        before = _snapshot(d)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), full_disk(limit):
            rc = main(argv)
        return {"target": str(target), "rc": rc, "stderr": err.getvalue(), "intact": _snapshot(d) == before,
                "left": sorted(set(_snapshot(d)) - set(before)), "loads": HammingIndex.load(target).ntotal == 10}
    if name == "dsh encode --images":
        write_digit_folder(d / "imgs", 300)
        argv = ["encode", "--run", str(run), "--images", str(d / "imgs"), "--out", str(target), "--quiet"]
        assert main(argv) == 0  # the previous file
        argv.append("--keep-u")  # the new one is larger
    else:
        argv = ["train", "--dataset", "digits", "--bits", "8", "--epochs", "1", "--no-tensorboard", "--quiet",
                "--out", str(target)]
    before = _snapshot(d)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), full_disk(limit):
        rc = main(argv)
    after = _snapshot(d)
    return {"target": str(target), "rc": rc, "stderr": err.getvalue(),
            "intact": all(after.get(k) == v for k, v in before.items()),
            "left": sorted(set(after) - set(before))}


def run_all(root: str, run: str) -> None:
    """The subprocess's side: every case in a folder of its own under ``root``, one JSON line each."""
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for name in DISK_FULL_CASES:
        d = Path(root) / name.replace(" ", "_").replace("(", "").replace(")", "")
        d.mkdir()
        try:
            res = (_run_writer if name in WRITERS else _run_command)(name, d, Path(run))
        except pytest.skip.Exception as e:
            res = {"skip": str(e)}
        except Exception:
            res = {"crash": traceback.format_exc()}
        print("CASE " + json.dumps({"name": name, **res}), flush=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory, digits_run):
    root = tmp_path_factory.mktemp("disk-full")
    code = f"import sys; sys.path[:0] = {[str(HERE), str(HERE.parent)]!r}; import test_disk_full as t; " \
           f"t.run_all({str(root)!r}, {str(digits_run)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DSH_DEBUG": ""})
    found = {}
    for line in proc.stdout.splitlines():
        if line.startswith("CASE "):
            case = json.loads(line[5:])
            found[case.pop("name")] = case
    assert found, proc.stdout[-2000:] + proc.stderr[-3000:]
    return found


def _one_line_naming(text: str, target: str) -> None:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    assert target in text, (target, text)


@pytest.mark.parametrize("name", DISK_FULL_CASES)
def test_disk_full(name, results):
    case = results[name]
    if "skip" in case:
        pytest.skip(case["skip"])
    assert "crash" not in case, case.get("crash")
    if name in COMMANDS:
        assert case["rc"] == 2, case
        _one_line_naming(case["stderr"], case["target"])
        assert "out of space" in case["stderr"] and case["intact"], case
        assert not [p for p in case["left"] if p.endswith(".tmp")], case["left"]
        if name == "dsh index":  # the previous pair exactly, loadable, and nothing else
            assert case["left"] == [] and case["loads"], case
        return
    if name == "dataset cache":  # optional: a warning naming the file, the data returned all the same
        assert case["error"] is None and len(case["warnings"]) == 1, case
        _one_line_naming(case["warnings"][0], case["target"])
    else:
        error = case["error"]
        assert error is not None and error["type"] == "DataError", case
        _one_line_naming(error["message"], case["target"])  # an index's catalog is named INDEX.<uid>.catalog
        assert "out of space" in error["message"], error
    assert case["intact"] and case["loads"] and case["left"] == [], case

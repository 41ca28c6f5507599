"""The published figures under the tie rule: ``make_readme_results.py --remake-metrics`` re-makes a results row from
its code files (tie-aware mAP, the position figure kept beside it), and the docs' results tables say which rule
each figure uses. Small fake results folders and code files, seconds."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from tools import make_readme_results as mrr  # noqa: E402

from dsh.codes.codefile import CodeFile, save_codes  # noqa: E402
from dsh.eval.metrics import evaluate  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cpus_usable": 2, "torch_threads": 2, "torch": "2.x", "load_average_start": [1.0]}


def record(bits: int, map_: float, folder: str) -> dict:
    return {
        "bits": bits, "seed": 0, "dataset": "CIFAR-10 (JPEG copy)", "protocol": "dsh-paper", "benchmark": True,
        "limits": {}, "map": map_, "precision_at_radius_2": 0.5, "recall_at_radius_2": 0.5, "n_queries": 40,
        "n_database": 400, "train_seconds": 600.0, "images_per_second": 1000.0, "best_epoch": 3,
        "best_val_map": 0.5, "paper_map": 0.6157, "map_minus_paper": map_ - 0.6157, "map_over_paper": map_ / 0.6157,
        "preset": "cifar10-cpu", "config": {"model": "paper", "epochs": 4}, "machine": MACHINE,
        "command": f"python benchmarks/reproduce/paper_cifar10.py --bits {bits}", "query_file": f"{folder}/query.npz",
        "database_file": f"{folder}/database.npz",
    }


def tied_codes(rng, n: int, sort: bool):
    """8-bit codes from 4 values, labels that mostly follow them; the database sorted by class if ``sort``."""
    values = np.array([0x00, 0x0F, 0x33, 0xFF], np.uint8)
    labels = rng.integers(0, 4, n)
    pick = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))
    codes = values[pick][:, None]
    if sort:
        order = np.argsort(labels, kind="stable")
        codes, labels = codes[order], labels[order]
    return codes, labels


@pytest.fixture
def results(tmp_path):
    """A paper results folder: 12 bits with committed code files (recorded by position), 24 bits without."""
    rng = np.random.default_rng(0)
    root = tmp_path / "results"
    base = root / "paper_cifar10"
    (base / "bits12").mkdir(parents=True)
    q, ql = tied_codes(rng, 40, sort=False)
    db, dl = tied_codes(rng, 400, sort=True)
    save_codes(base / "bits12" / "query.npz", CodeFile(q, 8, ql))
    save_codes(base / "bits12" / "database.npz", CodeFile(db, 8, dl))
    by_position = evaluate(q, db, ql, dl, 8, ties="position").map
    runs = [record(12, by_position, "bits12"), record(24, 0.66, "bits24")]
    common.write_json(base / "bits12" / "result.json", runs[0])
    common.write_json(base / "results.json", {"benchmark": True, "protocol": "dsh-paper",
                                              "dataset": "CIFAR-10 (JPEG copy)", "runs": runs})
    return root, (q, db, ql, dl)


def test_remake_stores_tie_aware_map_and_keeps_the_position_figure(results):
    root, (q, db, ql, dl) = results
    logs: list[str] = []
    assert mrr.remake_metrics(root, log=logs.append) == 1
    assert any("24 bits" in line and "not re-made" in line for line in logs)
    data = common.read_json(root / "paper_cifar10" / "results.json")
    r12, r24 = common.sort_runs(data["runs"])
    want = evaluate(q, db, ql, dl, 8)
    position = evaluate(q, db, ql, dl, 8, ties="position")
    assert r12["ties"] == "expected" and r12["map"] == want.map and r12["map_position_ties"] == position.map
    assert abs(r12["map"] - r12["map_position_ties"]) > 1e-3  # class-sorted database, heavy ties: they differ
    assert r12["map_minus_paper"] == pytest.approx(want.map - 0.6157)
    assert r12["precision_at_radius_2"] == want.precision_at_radius == position.precision_at_radius
    assert r12["precision_at_k_position_ties"] == asdict(position.precision_at_k)
    assert r12["database_sorted_by_class"] is True and r12["val_map_ties"] == "position"
    assert "ties" not in r24 and r24["map"] == 0.66  # no code files: left as it was
    # the length's own result.json holds the same row
    assert common.read_json(root / "paper_cifar10" / "bits12" / "result.json") == r12
    # re-making again changes nothing, not even the time stamp
    before = (root / "paper_cifar10" / "results.json").read_text()
    assert mrr.remake_metrics(root, log=lambda m: None) == 1
    assert (root / "paper_cifar10" / "results.json").read_text() == before

    md = (root / "paper_cifar10" / "results.md").read_text()
    section = mrr.render(mrr.Context(root, root.parent), "quality")
    for text in (md, section):
        assert f"| 12 | 0 | {want.map:.4f} | 0.6157 |" in text
        # the position figure, then precision r<=2 (re-made too)
        assert f"| {position.map:.4f} | {want.precision_at_radius:.4f} |" in text
        assert "| 24 | 0 | 0.6600 |" in text and "could not be re-made (no database codes)" in text
        assert "mAP is tie-aware" in text and "stored class by class" in text
        assert "Rows marked *could not be re-made* have no committed database codes" in text


def test_remake_refuses_codes_that_are_not_the_rows(results):
    root, _ = results
    path = root / "paper_cifar10" / "results.json"
    data = common.read_json(path)
    data["runs"][0]["map"] = 0.1234  # recorded by position, but not what these code files give
    common.write_json(path, data)
    with pytest.raises(SystemExit, match="not the codes of this row"):
        mrr.remake_metrics(root, log=lambda m: None)


def test_remake_accepts_a_row_recorded_tie_aware_without_saying_so(results):
    # what a benchmark script that does not record the rule writes after the change: mAP by the new default
    root, (q, db, ql, dl) = results
    path = root / "paper_cifar10" / "results.json"
    data = common.read_json(path)
    data["runs"][0]["map"] = evaluate(q, db, ql, dl, 8).map
    common.write_json(path, data)
    assert mrr.remake_metrics(root, log=lambda m: None) == 1
    r12 = common.sort_runs(common.read_json(path)["runs"])[0]
    assert r12["ties"] == "expected" and r12["val_map_ties"] == "expected"
    assert r12["map_position_ties"] == evaluate(q, db, ql, dl, 8, ties="position").map


def test_rows_with_codes_not_yet_remade_say_so(results):
    root, _ = results
    section = mrr.render(mrr.Context(root, root.parent), "quality")
    assert "| not re-made yet |" in section and "--remake-metrics" in section
    assert "mAP is tie-aware" not in section  # no row is tie-aware yet

"""The benchmark scripts' bookkeeping, on fake results files (no training): the docs' results generator, the
results merging, the settings parser and the smoke-test subsets. Seconds, not minutes. Where the offline datasets
are found, also ``encode_throughput.py`` end to end on a few hundred images (about half a minute on 2 cores)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from conftest import REPO

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from reproduce import paper_cifar10, seed_mnist  # noqa: E402
from speed import encode_throughput  # noqa: E402
from tools import make_readme_results as mrr  # noqa: E402

MACHINE = {"cpu": "Test CPU 9000", "cpus_usable": 2, "torch_threads": 2, "torch": "2.x",
           "load_average_start": [1.5, 1.0, 1.0]}


def paper_record(bits: int, map_: float, seconds: float = 600.0, benchmark: bool = True) -> dict:
    paper = paper_cifar10.PAPER_MAP[bits]
    return {
        "bits": bits, "dataset": "CIFAR-10 (JPEG copy)", "benchmark": benchmark,
        "limits": {} if benchmark else {"train": 2000}, "map": map_, "precision_at_radius_2": 0.5,
        "n_queries": 10000, "n_database": 50000, "train_seconds": seconds, "images_per_second": 1234.0,
        "best_epoch": 7, "best_val_map": 0.6, "paper_map": paper, "map_minus_paper": map_ - paper,
        "map_over_paper": map_ / paper, "preset": "cifar10-cpu",
        "config": {"model": "paper", "epochs": 8, "batch_size": 128, "lr": 0.001},
        "machine": MACHINE, "command": f"python benchmarks/reproduce/paper_cifar10.py --bits {bits}",
        "query_file": f"bits{bits}/query.npz", "database_file": f"bits{bits}/database.npz",
    }


def seed_record(bits: int, preset: str | None = "mnist-cpu", map_: float = 0.991) -> dict:
    classes = [{"name": str(c), "code_hex": f"{c:02X}", "code_binary": f"{c:08b}"} for c in range(10)]
    return {
        "bits": bits, "dataset": "MNIST", "benchmark": True, "limits": {}, "preset": preset, "map": map_,
        "precision_at_radius_2": 0.98, "n_queries": 10000, "n_database": 60000, "train_seconds": 150.0,
        "images_per_second": 3000.0, "best_epoch": 8, "best_val_map": 0.99, "config": {"epochs": 8},
        "class_table": {"classes": classes}, "class_table_markdown": "| class | ... |\n| --- | --- |",
        "pairs_within_1_bit": 1, "close_pairs": [["4", "9", 1]], "distinct_codes": True, "min_class_distance": 1,
        "figures": ["bits8/umap.png", "bits8/tsne.png"] if bits == 8 else [], "machine": MACHINE,
        "command": "python benchmarks/reproduce/seed_mnist.py" + ("" if preset else " --preset none"),
        "query_file": f"bits{bits}/query.npz",
        "database_file": f"bits{bits}/database.npz",
    }


def write_results(root: Path, paper_runs=None, seed_runs=None, benchmark: bool = True,
                  defaults_runs=None) -> Path:
    results = root / "benchmarks" / "results"
    results.mkdir(parents=True)
    if paper_runs is not None:
        common.write_json(results / "paper_cifar10" / "results.json",
                          {"benchmark": benchmark, "protocol": "dsh-paper", "dataset": "CIFAR-10 (JPEG copy)",
                           "runs": paper_runs})
    if seed_runs is not None:
        common.write_json(results / "seed_mnist" / "results.json",
                          {"benchmark": True, "preset": "mnist-cpu", "runs": seed_runs})
    if defaults_runs is not None:
        common.write_json(results / "seed_mnist_defaults" / "results.json",
                          {"benchmark": True, "preset": None, "runs": defaults_runs})
    return results


def make_docs(root: Path) -> dict[str, Path]:
    """A repository's Markdown as the generator finds it: a README without generated blocks, and docs/results.md,
    docs/speed.md and docs/reliability.md each with its block's placeholder between other text."""
    (root / "README.md").write_text("readme\n")
    (root / "docs").mkdir()
    docs = {}
    for block, name in (("quality", "results.md"), ("speed", "speed.md"), ("reliability", "reliability.md")):
        docs[block] = root / "docs" / name
        docs[block].write_text(f"intro\n\n## Results\n\nRESULTS_PLACEHOLDER:{block}\n\n## Layout\n")
    return docs


def test_readme_section_from_results_and_missing_files(tmp_path):
    results = write_results(tmp_path, paper_runs=[paper_record(24, 0.66), paper_record(12, 0.60, seconds=1000)],
                            seed_runs=[seed_record(8), seed_record(16)])
    docs = make_docs(tmp_path)
    assert mrr.main(["--root", str(tmp_path), "--results", str(results)]) == 0
    assert (tmp_path / "README.md").read_text() == "readme\n"  # it holds no block: left as it was
    for block, path in docs.items():
        body = path.read_text()
        assert body.startswith("intro\n") and body.rstrip().endswith("## Layout")
        assert "RESULTS_PLACEHOLDER" not in body
        assert body.count(mrr.start_marker(block)) == 1 and body.count(mrr.end_marker(block)) == 1
    text, speed = docs["quality"].read_text(), docs["speed"].read_text()
    # the paper table: our figure, the paper's, the difference, and the bar met or not
    assert "| 12 | 0 | 0.6000 | 0.6157 | -0.0157 |" in text and "no: below paper, over 15 min" in text
    assert "| 24 | 0 | 0.6600 | 0.6512 | +0.0088 |" in text
    assert "CIFAR-10 (JPEG copy)" in text and "Test CPU 9000" in text
    # one command per row where the rows came from different commands
    assert "python benchmarks/reproduce/paper_cifar10.py --bits 12  # 12 bits" in text
    assert "dsh eval --query benchmarks/results/paper_cifar10/bits12/query.npz" in text
    # the seed side-by-side and figures with paths relative to the file that shows them (docs/)
    assert "| class pairs within 1 bit | 2 (2/3, 5/6) | 1 (4/9) |" in text
    assert "![UMAP of u, MNIST test, 8 bits](../benchmarks/results/seed_mnist/bits8/umap.png)" in text
    assert "### MNIST: the seed experiment (preset mnist-cpu)" in text
    assert "Targets at 8 bits: mAP ≥ 0.99 — met (0.9910); every class code distinct — met." in text
    # no results files: the section says so, with the command
    # (the sections without results files here: in docs/results.md CIFAR-10's cifar10-1 protocol and paper-network
    # tables, the defaults' seed experiment, the test-time views, the mosaics with the preset and with the defaults;
    # in docs/speed.md training throughput, search, k-NN at scale, encoding throughput, serving, live updates,
    # training with 1 and 2 processes, Milvus)
    assert text.count("Not yet run.") == 6 and speed.count("Not yet run.") == 8
    assert ("python benchmarks/reproduce/mosaic_mnist.py --preset none --threads 2 --out "
            "benchmarks/results/mosaic_mnist_defaults") in text
    assert ("python benchmarks/reproduce/paper_cifar10.py --protocol cifar10-1 --out "
            "benchmarks/results/paper_cifar10_cifar10-1") in text
    assert ("python benchmarks/reproduce/seed_mnist.py --preset none --out "
            "benchmarks/results/seed_mnist_defaults") in text
    assert "python benchmarks/speed/search.py --sizes 1000000 10000000 --bits 64 128" in speed
    assert "python benchmarks/speed/serve_updates.py --out benchmarks/results" in speed


def test_readme_seed_defaults_section_has_the_core_bar(tmp_path):
    results = write_results(tmp_path, seed_runs=[seed_record(8)],
                            defaults_runs=[seed_record(8, preset=None, map_=0.985), seed_record(16, preset=None)])
    section = mrr.render(mrr.Context(results, tmp_path, tmp_path / "docs" / "results.md"), "quality")
    assert "### MNIST: the seed experiment (library defaults)" in section
    assert ("Targets at 8 bits: with no settings, mAP ≥ 0.98 in at most 3 minutes of training — met (0.9850 in "
            "2 min 30 s); every class code distinct — met.") in section
    assert "python benchmarks/reproduce/seed_mnist.py --preset none" in section
    # the class table and the maps are shown once, for the preset's run
    assert section.count("Against the seed's published 8-bit table") == 1
    assert section.count("![UMAP of u") == 1


def test_seed_results_folders_keep_one_recipe(tmp_path):
    assert seed_mnist.default_out("mnist-cpu") == "benchmarks/results/seed_mnist"
    assert seed_mnist.default_out(None) == "benchmarks/results/seed_mnist_defaults"
    assert common.resolve_preset(None, "mnist-cpu") == "mnist-cpu"
    assert common.resolve_preset("none", "mnist-cpu") is None
    assert common.resolve_preset(None, "no-such-preset") is None
    with pytest.raises(common.DataError, match="unknown preset 'fast'"):
        common.resolve_preset("fast", "mnist-cpu")
    seed_mnist.write_results(tmp_path, [seed_record(8)], fresh=False)
    common.check_same_recipe(tmp_path, "mnist-cpu", fresh=False)
    with pytest.raises(common.DataError, match="holds runs of preset mnist-cpu, not library defaults"):
        common.check_same_recipe(tmp_path, None, fresh=False)
    common.check_same_recipe(tmp_path, None, fresh=True)
    # a later length joins the earlier one of the same recipe, another seed joins its length
    merged = seed_mnist.write_results(tmp_path, [seed_record(16)], fresh=False)
    assert [r["bits"] for r in merged["runs"]] == [8, 16] and merged["preset"] == "mnist-cpu"
    merged = seed_mnist.write_results(tmp_path, [{**seed_record(8, map_=0.985), "seed": 1}], fresh=False)
    assert [(r["bits"], common.seed_of(r)) for r in merged["runs"]] == [(8, 0), (8, 1), (16, 0)]
    assert common.main_row(merged["runs"], 8)["map"] == 0.991
    assert seed_mnist.spread_lines(merged["runs"]) == [
        "8 bits over seeds 0, 1: mAP 0.9910, 0.9850 (mean 0.9880, range 0.9850–0.9910), 1 of 2 ≥ 0.99; class "
        "pairs within 1 bit 1, 1; all class codes distinct in 2 of 2."]


def test_rerun_is_idempotent_and_check_mode(tmp_path, capsys):
    results = write_results(tmp_path, paper_runs=[paper_record(12, 0.62)])
    readme = make_docs(tmp_path)["quality"]
    args = ["--root", str(tmp_path), "--results", str(results)]
    assert mrr.main(args + ["--check"]) == 1  # placeholder still there
    assert mrr.main(args) == 0
    first = readme.read_text()
    assert mrr.main(args) == 0 and readme.read_text() == first
    assert mrr.main(args + ["--check"]) == 0
    # new results: the text between the markers is replaced, the rest kept
    common.write_json(results / "paper_cifar10" / "results.json",
                      {"benchmark": True, "protocol": "dsh-paper", "dataset": "CIFAR-10 (JPEG copy)",
                       "runs": [paper_record(12, 0.70)]})
    assert mrr.main(args + ["--check"]) == 1
    assert mrr.main(args) == 0
    text = readme.read_text()
    assert "| 12 | 0 | 0.7000 |" in text and "| 12 | 0 | 0.6200 |" not in text and text.startswith("intro\n")


def test_smoke_results_are_flagged(tmp_path):
    results = write_results(tmp_path, paper_runs=[paper_record(12, 0.3, benchmark=False)], benchmark=False)
    section = mrr.render(mrr.Context(results, tmp_path), "quality")
    assert "NOT a benchmark" in section


def test_splice_needs_markers_or_placeholder():
    assert mrr.splice("a\n<!-- results:speed:start -->\nold\n<!-- results:speed:end -->\nb\n", "speed", "new\n") == (
        "a\n<!-- results:speed:start -->\nnew\n<!-- results:speed:end -->\nb\n")
    assert mrr.splice("a\nRESULTS_PLACEHOLDER:speed\nb\n", "speed", "new\n") == (
        "a\n<!-- results:speed:start -->\nnew\n<!-- results:speed:end -->\nb\n")
    with pytest.raises(ValueError):
        mrr.splice("no place for results\n", "speed", "new\n")
    with pytest.raises(ValueError):
        mrr.splice("<!-- results:speed:start -->\n", "speed", "new\n")
    with pytest.raises(ValueError):  # another block's markers are not this one's
        mrr.splice("<!-- results:quality:start -->\nold\n<!-- results:quality:end -->\n", "speed", "new\n")


def test_every_block_in_exactly_one_file(tmp_path, capsys):
    results = write_results(tmp_path, paper_runs=[paper_record(12, 0.62)])
    docs = make_docs(tmp_path)
    args = ["--root", str(tmp_path), "--results", str(results)]
    # a block may move to another file (here the README): it is filled there
    docs["speed"].write_text("no block here\n")
    (tmp_path / "README.md").write_text("readme\n\nRESULTS_PLACEHOLDER:speed\n")
    assert mrr.main(args) == 0 and mrr.main(args + ["--check"]) == 0
    assert "### Hamming search speed" in (tmp_path / "README.md").read_text()
    # in two files, or in none: refused, nothing written
    docs["speed"].write_text("RESULTS_PLACEHOLDER:speed\n")
    capsys.readouterr()
    assert mrr.main(args) == 2 and "more than one file" in capsys.readouterr().err
    assert docs["speed"].read_text() == "RESULTS_PLACEHOLDER:speed\n"
    docs["speed"].write_text("\n")
    (tmp_path / "README.md").write_text("readme\n")
    assert mrr.main(args + ["--check"]) == 2 and "holds the block(s) speed" in capsys.readouterr().err


def test_paper_merge_keeps_other_lengths_and_never_mixes_smoke(tmp_path):
    common.write_json(tmp_path / "results.json", {"runs": [paper_record(12, 0.6), paper_record(24, 0.65)]})
    merged = paper_cifar10.merge(tmp_path, [paper_record(24, 0.7), paper_record(48, 0.7)], fresh=False)
    assert [(r["bits"], r["map"]) for r in merged] == [(12, 0.6), (24, 0.7), (48, 0.7)]
    assert [r["bits"] for r in paper_cifar10.merge(tmp_path, [paper_record(48, 0.7)], fresh=True)] == [48]
    # another seed of a length is a row of its own, beside seed 0; the spread says how many reach the paper
    merged = paper_cifar10.merge(tmp_path, [{**paper_record(24, 0.66), "seed": 1}], fresh=False)
    assert [(r["bits"], common.seed_of(r), r["map"]) for r in merged] == [(12, 0, 0.6), (24, 0, 0.65), (24, 1, 0.66)]
    assert paper_cifar10.spread_lines(merged) == [
        "Spread over seeds:", "",
        "- 24 bits over seeds 0, 1: mAP 0.6500, 0.6600 (mean 0.6550, range 0.6500–0.6600); 1 of 2 at or above the "
        "paper's 0.6512.", ""]
    assert "| 24 | 1 | 0.6600 |" in "\n".join(paper_cifar10.table_lines(merged))
    smoke = paper_cifar10.merge(tmp_path, [paper_record(36, 0.2, benchmark=False)], fresh=False)
    assert [r["bits"] for r in smoke] == [36]
    common.write_json(tmp_path / "results.json", {"benchmark": True, "runs": [paper_record(12, 0.6)]})
    smoke_args = argparse.Namespace(limit_train=100, limit_test=None, out=str(tmp_path), bits=[12])
    with pytest.raises(common.DataError, match="holds benchmark results"):
        common.run_limits_and_out(smoke_args, "unused", "unused")
    real_args = argparse.Namespace(limit_train=None, limit_test=None, out=str(tmp_path), bits=[12])
    assert common.run_limits_and_out(real_args, "unused", "unused") == ({}, tmp_path)
    with pytest.raises(common.DataError, match="--bits"):
        common.run_limits_and_out(argparse.Namespace(**{**vars(real_args), "bits": [0]}), "unused", "unused")
    with pytest.raises(common.DataError, match="--seeds"):
        common.run_limits_and_out(argparse.Namespace(**{**vars(real_args), "seeds": [0, -1]}), "unused", "unused")


def test_limited_folder_subset_is_stratified_links(tmp_path, image_tree_writer):
    src = image_tree_writer(tmp_path / "src", n_train=4, n_test=2)
    dest = common.limited_data_root("folder", src, tmp_path / "subset", limit_train=20, limit_test=None)
    train = sorted(p.relative_to(dest).as_posix() for p in (dest / "train").rglob("*.png"))
    assert len(train) == 12  # 20 asked, 3 classes x 4 exist: all of them, each class in full
    assert len(list((dest / "test").rglob("*.png"))) == 6
    assert all(p.is_symlink() for p in (dest / "train").rglob("*.png"))
    assert json.loads((dest / "subset.json").read_text())["train"] == 20
    assert common.limited_data_root("folder", src, tmp_path / "subset", None, None) == src


def test_idx_writer_round_trips_through_dsh_reader(tmp_path):
    np = pytest.importorskip("numpy")
    from dsh.data.sources import read_idx

    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    common._write_idx(tmp_path / "x-idx3-ubyte", a)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), a)


def test_fmt_seconds():
    assert common.fmt_seconds(41.04) == "41.0 s"
    assert common.fmt_seconds(452.3) == "7 min 32 s"
    assert common.fmt_seconds(None) == "—"


def test_encode_throughput_smoke_on_a_subset(tmp_path, shared_data, monkeypatch, capsys):
    """The encoding benchmark end to end on a few hundred images: one model, both backends, both sources, each in
    its own process; the streaming encode; one short run trained by the script and one run given to it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from dsh.models import Normalizer
    from dsh.models.checkpoint import BEST, save_checkpoint
    from dsh.models.registry import create_model

    monkeypatch.setenv("DSH_TEST_DATA", str(shared_data))
    given = tmp_path / "given-cifar-run"  # an untrained CIFAR-sized run, so only the MNIST run is trained here
    model = create_model("paper-bn", 16, in_channels=3, image_size=32).eval()
    save_checkpoint(given / BEST, {
        "model_config": dict(model.config), "nbits": 16, "input_shape": [3, 32, 32],
        "normalizer": Normalizer([0.5] * 3, [0.25] * 3).to_dict(), "class_names": [str(i) for i in range(10)],
        "config": {"dataset": "folder"}, "epoch": 0, "state_dict": model.state_dict()})
    out = tmp_path / "out"
    threads = torch.get_num_threads()  # the script sets torch's (and numba's) threads for this process
    numba = sys.modules.get("numba")
    numba_threads = numba.get_num_threads() if numba else None
    try:
        assert encode_throughput.main(["--smoke", "--configs", "paper-1x28x28", "--limit-test", "100",
                                       "--run-cifar", str(given), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
        if numba_threads:
            numba.set_num_threads(numba_threads)
    result = json.loads((out / "encode_throughput.json").read_text())
    assert result["benchmark"] is False and result["limits"] == {"train": 300, "test": 100}
    rows = result["throughput"]
    assert {(r["backend"], r["source"]) for r in rows} == {(b, s) for b in ("torch", "onnxruntime")
                                                          for s in ("array", "files")}
    assert all(r["images"] == 100 and r["images_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert not any(r["torch_imported"] for r in rows if r["backend"] == "onnxruntime")
    assert [r["images"] for r in result["stream"]] == [100, 300]
    mnist, cifar = result["agreement"]
    assert mnist["run"] == "trained by this script" and mnist["nbits"] == 8 and mnist["images"] == 100
    assert cifar["run"] == str(given) and cifar["nbits"] == 16
    assert all(r["met"] and r["max_abs_u_difference"] <= 1e-4 for r in (mnist, cifar))
    md = (out / "encode_throughput.md").read_text()
    assert "NOT a benchmark" in md and "--smoke" in md and "Load average at start" in md
    assert md.count("| paper | 1x28x28 | MNIST test |") == 4 and "## Agreement" in md
    # a smoke test never overwrites benchmark results
    common.write_json(out / "encode_throughput.json", {**result, "benchmark": True})
    capsys.readouterr()
    assert encode_throughput.main(["--smoke", "--out", str(out)]) == 2
    assert "holds benchmark results" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["paper", "airbench"])
def test_train_throughput_times_the_step_dsh_train_runs(tmp_path, model):
    """train_throughput.py measures dsh.train.loop's own step: one epoch of its timed steps gives, step for step, the
    loss `dsh train` logs for that epoch with the same settings and seed (optimizer, schedule and all)."""
    from speed import train_throughput

    from dsh.config import TrainConfig
    from dsh.train.loop import train

    settings = dict(dataset="digits", model=model, nbits=8, epochs=1, batch_size=64, tensorboard=False, seed=3)
    if model == "airbench":
        settings.update(width=4, optimizer="sgd", lr=0.05)
    cfg = TrainConfig(**settings).validate()
    result = train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    n = json.loads((tmp_path / "run" / "summary.json").read_text())["images_seen"] // cfg.batch_size  # its steps
    measured = train_throughput.measure(cfg, steps=n - 2, warmup=2)
    assert measured["steps"] == n - 2 and len(measured["losses"]) == n
    assert sum(measured["losses"]) / n == pytest.approx(result.history[0]["loss_total"], rel=1e-9, abs=1e-12)
    assert measured["images_per_s_median"] > 0


def test_mosaic_benchmark_smoke(tmp_path, shared_data):
    """mosaic_mnist.py end to end on a small mosaic set of its own: multi-label training, encoding and the
    multi-label mAP, written as a smoke test (never as benchmark results)."""
    from reproduce import mosaic_mnist

    from dsh.codes.codefile import load_codes
    from dsh.eval.metrics import mean_average_precision

    out = tmp_path / "out"
    assert mosaic_mnist.main(["--bits", "8", "--limit-train", "300", "--limit-test", "40", "--set", "epochs=1",
                              "--mnist", str(shared_data), "--mosaic", str(tmp_path / "unused"),
                              "--out", str(out), "--threads", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    [row] = results["runs"]
    assert results["benchmark"] is False and row["n_queries"] == 40 and row["n_database"] == 400
    q, db = load_codes(out / "bits8" / "query.npz"), load_codes(out / "bits8" / "database.npz")
    assert q.labels.ndim == 2 and q.labels.shape[1] == 10  # multi-hot rows
    assert row["map"] == pytest.approx(mean_average_precision(q.codes, db.codes, q.labels, db.labels, 8), abs=1e-12)
    assert not (tmp_path / "unused").exists()  # a smoke test writes its own small set


def test_tta_views_are_the_shifted_and_mirrored_images_and_combine_as_documented():
    import numpy as np
    import torch
    from reproduce import tta_views

    class Flat(torch.nn.Module):  # u = the image's pixels, so each view's u is the view itself
        def forward(self, x):
            return x.reshape(len(x), -1)

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (7, 1, 5, 6), dtype=np.uint8))
    u = tta_views.view_u(Flat(), lambda x: x.float(), images, batch_size=3)
    ref = np.pad(images.numpy().astype(np.float32), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    want = {"identity": ref[:, :, 1:6, 1:7], "up-left": ref[:, :, 0:5, 0:6], "down-right": ref[:, :, 2:7, 2:8],
            "up-right": ref[:, :, 0:5, 2:8], "down-left": ref[:, :, 2:7, 0:6]}
    assert sorted(u) == sorted([*want, *(f"{k}, mirrored" for k in want)])
    for name, view in want.items():
        np.testing.assert_array_equal(u[name], view.reshape(7, -1))
        np.testing.assert_array_equal(u[f"{name}, mirrored"], view[..., ::-1].reshape(7, -1))
    flip = (u["identity"] + u["identity, mirrored"]) / 2
    np.testing.assert_array_equal(tta_views.combine(u, "none"), u["identity"])
    np.testing.assert_allclose(tta_views.combine(u, "flip"), flip)
    two = sum(u[k] + u[f"{k}, mirrored"] for k in ("up-left", "down-right")) / 4
    np.testing.assert_allclose(tta_views.combine(u, "flip + 2 shifts"), (flip + two) / 2, rtol=1e-6)
    four = sum(u[k] + u[f"{k}, mirrored"] for k in want if k != "identity") / 8
    np.testing.assert_allclose(tta_views.combine(u, "flip + 4 shifts"), (flip + four) / 2, rtol=1e-6)


def test_few_labels_merge_replaces_a_methods_entries_and_keeps_the_others():
    from reproduce import few_labels

    def entry(map_):
        return {"map": map_, "train_seconds": 10.0, "command": "cmd", "loadavg": {"start": [1.0], "end": [1.0]}}

    old = {"bits": 48, "n_queries": 1000, "n_database": 50000,
           "rows": [{"per_class": 10, "scratch": entry(0.13), "pretrained": entry(0.25)},
                    {"per_class": 100, "scratch": entry(0.31), "head": entry(0.34)}]}
    merged = few_labels.merged_rows(old, [{"per_class": 100, "finetune": entry(0.5), "head": entry(0.36)}],
                                    48, 1000, 50000)
    assert [(r["per_class"], sorted((k, v["map"]) for k, v in r.items() if k != "per_class")) for r in merged] == [
        (10, [("scratch", 0.13)]),  # an entry of a method no longer run is dropped
        (100, [("finetune", 0.5), ("head", 0.36), ("scratch", 0.31)])]
    table = few_labels.markdown({"bits": 48, "n_queries": 1000, "n_database": 50000, "rows": merged})
    assert "| 100 | 0.3600 (10.0 s) | 0.5000 (10.0 s) | 0.3100 (10.0 s) | +0.1900 |" in table
    assert "| 10 | — | — | 0.1300 (10.0 s) | — |" in table
    with pytest.raises(common.DataError, match="use another --out"):
        few_labels.merged_rows(old, [{"per_class": 2, "head": entry(0.1)}], 48, 50, 200)

"""Training that ends but must not look like a success (a collapsed model, a training set of one class), and the
one ``threads`` setting that governs both torch and numba."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dsh.cli import main

COMMON = ["--bits", "8", "--epochs", "1", "--no-tensorboard", "--quiet"]


def test_a_collapsed_model_is_a_warning_not_a_success(tmp_path, capsys):
    # decoupled weight decay of lr x weight_decay = 1 per step zeroes every weight matrix: u is the last bias for
    # every image, so every image gets the same code
    out = tmp_path / "collapsed"
    assert main(["train", "--dataset", "digits", "--batch-size", "64", "--weight-decay", "1000", "--schedule",
                 "constant", "--out", str(out), *COMMON]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("best epoch 1:") and "WARNING: the model collapsed" in last, last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_codes"] == 1 and summary["val_class_codes"] == 1 and summary["classes"] == 10
    assert len(summary["warnings"]) == 1 and "collapsed" in summary["warnings"][0]
    history = json.loads((out / "history.json").read_text())
    assert history[0]["val_codes"] == 1


def test_a_one_class_training_set_is_a_warning(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "one"
    for split, n in (("train", 40), ("test", 4)):
        (root / split / "only").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / split / "only" / f"{i}.png")
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "folder", "--data-root", str(root), "--batch-size", "8", "--out", str(out),
               "--bits", "8", "--epochs", "1", "--no-tensorboard"])  # not --quiet: the warning is logged too
    captured = capsys.readouterr()
    assert rc == 0
    assert "WARNING: the training set has a single class (only)" in captured.out.strip().splitlines()[-1]
    assert "warning: the training set has a single class (only)" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == 1 and "single class" in summary["warnings"][0]


def test_a_healthy_run_has_no_warning(tmp_path, capsys):
    # README's example run (20 epochs): the class codes come apart. (The 3-epoch digits_run the other tests share
    # is collapsed, every validation image one code: fine for a model to load, and warned about.)
    out = tmp_path / "healthy"
    assert main(["train", "--dataset", "digits", "--bits", "8", "--epochs", "20", "--no-tensorboard", "--quiet",
                 "--out", str(out)]) == 0
    assert "WARNING" not in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [] and summary["val_class_codes"] > 1 and summary["classes"] == 10



THREADS_SCRIPT = """
import sys
import torch
from dsh.config import TrainConfig
from dsh.train.loop import train
train(TrainConfig(dataset="digits", nbits=8, epochs=2, batch_size=64, tensorboard=False, threads=1), sys.argv[1],
      progress=False, log=lambda m: None)
import numba
print(torch.get_num_threads(), numba.get_num_threads())
"""


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs 2 cores to tell 1 thread from all")
def test_threads_1_stays_1_after_validation(tmp_path):
    """numba's start at the first validation reset torch's thread count to all cores (--threads 1 trained on 2)."""
    done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"], done.stdout


def test_set_threads_sets_both_pools_in_a_fresh_process():
    script = """
import torch
from dsh.utils.threads import set_threads
from dsh.eval.metrics import mean_average_precision
import numpy as np
set_threads(1)
codes = np.random.default_rng(0).integers(0, 256, (200, 1), dtype=np.uint8)
mean_average_precision(codes, codes, np.arange(200) % 3, np.arange(200) % 3, nbits=8)  # numba's kernels
import numba
print(torch.get_num_threads(), numba.get_num_threads())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"], done.stdout

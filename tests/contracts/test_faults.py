"""Faults of the real commands: ``kill -9`` of ``dsh train`` (mid-step and mid-checkpoint), of ``dsh index`` and of
``dsh encode --images`` mid-write, and two trainings into one folder at once.

Each command runs as a subprocess (``python -c`` running ``dsh.cli.main`` with a hook that announces a chosen
moment and waits there, so that the kill lands where the test wants it and not by timing luck). What must hold:
the previous file is intact, a ``--resume`` / the next run ends exactly as an uninterrupted run and leaves no
temporary behind, and a run folder is never trained into by two processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsh.cli import main

TRAIN = ["train", "--dataset", "digits", "--bits", "8", "--epochs", "3", "--batch-size", "64", "--no-tensorboard",
         "--quiet"]
KILL_POINT = "dsh-test: kill me now"

WRAPPER = """
import contextlib, sys, time
{hook}
from dsh.cli import main
sys.exit(main(sys.argv[1:]))
"""

# in epoch 2 (of 3), a few steps in: last.pt of epoch 1 is on disk, the weights in memory have moved on
HOOK_MID_STEP = f"""
import dsh.train.loop as T
_step, _done = T.train_step, [0]
def train_step(run, x, y):
    if _done[0] == run.steps_per_epoch + 3:
        print({KILL_POINT!r}, flush=True)
        time.sleep(300)
    _done[0] += 1
    return _step(run, x, y)
T.train_step = train_step
"""

# the second last.pt (epoch 2) fully written into its temporary, not yet renamed over the first
HOOK_MID_SAVE = f"""
import torch
import dsh.models.checkpoint as C
from dsh.utils.fileio import atomic_write
_save, _count = C.save_checkpoint, [0]
def save_checkpoint(path, payload):
    if path.name == "last.pt":
        _count[0] += 1
        if _count[0] == 2:
            with atomic_write(path) as f:
                torch.save({{"format": C.FORMAT, "version": C.VERSION, **payload}}, f)
                f.flush()
                print({KILL_POINT!r}, flush=True)
                time.sleep(300)
    return _save(path, payload)
C.save_checkpoint = save_checkpoint
"""


def hook_mid_write(module: str, target_name: str) -> str:
    """``module``'s atomic_write, when it writes ``target_name``: the first bytes written, then the kill point."""
    return f"""
import {module} as M
_aw = M.atomic_write
class _Slow:
    def __init__(self, f):
        self._f = f
    def write(self, b):
        n = self._f.write(b)
        self._f.flush()
        print({KILL_POINT!r}, flush=True)
        time.sleep(300)
        return n
    def __getattr__(self, name):
        return getattr(self._f, name)
@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    with _aw(path, mode) as f:
        yield _Slow(f) if str(path).endswith({target_name!r}) else f
M.atomic_write = atomic_write
"""


def start(argv: list[str], hook: str, tmp_path: Path) -> subprocess.Popen:
    err = open(tmp_path / f"stderr-{len(list(tmp_path.glob('stderr-*')))}.txt", "w")
    return subprocess.Popen([sys.executable, "-c", WRAPPER.format(hook=hook), *argv], stdout=subprocess.PIPE,
                            stderr=err, text=True)


def kill_at_point(proc: subprocess.Popen) -> None:
    """Wait for the process to reach its kill point, then ``kill -9`` it."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == KILL_POINT:
            break
    else:
        proc.wait()
        pytest.fail(f"the process ended (status {proc.returncode}) before its kill point: {''.join(lines)}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def run_dsh(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsh", *argv], capture_output=True, text=True, timeout=600)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run (a fresh process, as the interrupted ones are): its last checkpoint."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    done = run_dsh([*TRAIN, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return torch.load(out / "last.pt", weights_only=True)


@pytest.mark.parametrize("where, hook", [("mid-step", HOOK_MID_STEP), ("mid-checkpoint", HOOK_MID_SAVE)],
                         ids=["mid-step", "mid-checkpoint"])
def test_kill_9_during_training_then_resume_ends_as_an_uninterrupted_run(where, hook, reference, tmp_path):
    out = tmp_path / "run"
    proc = start([*TRAIN, "--out", str(out)], hook, tmp_path)
    kill_at_point(proc)
    # the checkpoint before the kill is intact and the run folder is not left locked
    first = torch.load(out / "last.pt", weights_only=True)
    assert first["epoch"] == 0
    stale = temporaries(out)
    if where == "mid-checkpoint":
        assert len(stale) == 1 and f"dsh-{proc.pid}-" in stale[0], stale  # the killed writer's temporary
    done = run_dsh(["train", "--out", str(out), "--resume", "--quiet"])
    assert done.returncode == 0, done.stderr
    final = torch.load(out / "last.pt", weights_only=True)
    assert final["epoch"] == reference["epoch"] == 2
    assert final["state_dict"].keys() == reference["state_dict"].keys()
    for k, v in reference["state_dict"].items():
        assert torch.equal(v, final["state_dict"][k]), f"resumed after kill -9 {where}: weights differ at {k}"
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(final["history"]) == strip(reference["history"])
    assert temporaries(out) == [] and not (out / ".lock").exists()


def test_two_trainings_into_one_folder_exactly_one_proceeds(tmp_path):
    """Both used to exit 0 and leave a folder with files of both."""
    out = tmp_path / "shared"
    argv = [sys.executable, "-m", "dsh", *TRAIN, "--epochs", "2", "--out", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    _, _, loser_err = next(r for r in results if r[0] == 2)
    line = loser_err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in loser_err, loser_err
    assert "another dsh train" in line or "already holds a run" in line, line
    assert str(out) in line
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "history.json", "last.pt",
                                                     "summary.json"]


def test_a_held_folder_is_refused_and_a_killed_holder_leaves_it_free(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from dsh.utils.runlock import RunLock
RunLock({str(out)!r}).acquire()
print("held", flush=True)
time.sleep(300)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err and str(out) in err, err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
        # --resume of a folder whose holder is alive: refused the same way; --nproc before it launches anything
        assert main(["train", "--out", str(out), "--resume"]) == 2
        assert "another dsh train" in capsys.readouterr().err
        assert main([*TRAIN, "--nproc", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another dsh train" in err, err
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the kernel dropped the killed holder's lock: the folder trains
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    assert (out / "last.pt").is_file() and not (out / ".lock").exists()


def test_kill_9_during_dsh_index_keeps_the_previous_index(tmp_path):
    from dsh.codes.codefile import CodeFile, save_codes
    from dsh.index.flat import HammingIndex

    rng = np.random.default_rng(0)
    old, new = tmp_path / "old.npz", tmp_path / "new.npz"
    save_codes(old, CodeFile(rng.integers(0, 256, (5000, 8), dtype=np.uint8), 64,
                             labels=rng.integers(0, 10, 5000)))
    save_codes(new, CodeFile(rng.integers(0, 256, (7000, 8), dtype=np.uint8), 64,
                             labels=rng.integers(0, 10, 7000)))
    idx = tmp_path / "db.dshidx"
    assert main(["index", "--codes", str(old), "--out", str(idx)]) == 0
    before = {p.name: p.read_bytes() for p in (idx, *tmp_path.glob("db.dshidx.*.catalog"))}
    assert len(before) == 2
    proc = start(["index", "--codes", str(new), "--out", str(idx)], hook_mid_write("dsh.index.flat", ".dshidx"),
                 tmp_path)
    kill_at_point(proc)
    assert {p: (tmp_path / p).read_bytes() for p in before} == before  # the previous index and its catalog
    stale = temporaries(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".db.dshidx.dsh-") and f"-{proc.pid}-" in stale[0], stale
    loaded = HammingIndex.load(idx)
    assert loaded.ntotal == 5000 and loaded.catalog is not None
    # the next run replaces it and removes the killed writer's temporary
    assert main(["index", "--codes", str(new), "--out", str(idx)]) == 0
    assert temporaries(tmp_path) == []
    assert HammingIndex.load(idx).ntotal == 7000
    assert len(list(tmp_path.glob("db.dshidx.*.catalog"))) == 1  # the killed save's catalog is gone too


def test_kill_9_during_dsh_encode_images_keeps_the_previous_file(tmp_path, digits_run, image_tree_writer):
    from conftest import write_digit_folder

    from dsh.codes.codefile import load_codes

    folder = tmp_path / "imgs"
    write_digit_folder(folder, 40)
    out = tmp_path / "codes.npz"
    common = ["encode", "--run", str(digits_run), "--images", str(folder), "--out", str(out), "--quiet"]
    assert main(common) == 0
    previous = out.read_bytes()
    for p in sorted(folder.rglob("*.png"))[:5]:  # the folder changes: the next encode makes another file
        p.unlink()
    proc = start(common, hook_mid_write("dsh.runtime.folder_encode", "codes.npz"), tmp_path)
    kill_at_point(proc)
    assert out.read_bytes() == previous and len(load_codes(out)) == 40
    assert [p for p in temporaries(tmp_path) if f"-{proc.pid}-" in p], temporaries(tmp_path)
    assert (tmp_path / "codes.npz.parts").is_dir()  # the finished parts wait for --resume
    assert main([*common, "--resume"]) == 0
    assert len(load_codes(out)) == 35
    assert temporaries(tmp_path) == [] and not (tmp_path / "codes.npz.parts").exists()

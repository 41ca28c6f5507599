"""atomic_write: the previous file survives any failure, and temporaries left by a killed writer are removed by
the next write (never those of a writer still running); write_json and write_text stand on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dsh.errors import DataError
from dsh.utils.fileio import atomic_write, remove_stale_temporaries, write_json, write_text


def temporaries(path):
    return sorted(p.name for p in path.parent.glob(f".{path.name}.*.tmp"))


def test_failure_keeps_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"new, half written")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and temporaries(target) == []


def test_kill_9_mid_write_then_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "index.bin"
    target.write_bytes(b"previous")
    script = f"""
import time
from dsh.utils.fileio import atomic_write
with atomic_write({str(target)!r}) as f:
    f.write(b"x" * 1_000_000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    left = temporaries(target)
    assert len(left) == 1 and f"dsh-{proc.pid}-" in left[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"previous" and temporaries(target) == left  # the killed writer's temporary
    with atomic_write(target) as f:
        f.write(b"next")
    assert target.read_bytes() == b"next" and temporaries(target) == []


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "codes.npz"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".codes.npz.dsh-{sleeper.pid}-abc.tmp"
        live.write_bytes(b"being written")
        other = tmp_path / ".codes.npz.unrelated.tmp"  # not of dsh's naming: never touched
        other.write_bytes(b"?")
        with atomic_write(target) as f:
            f.write(b"data")
        assert live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    time.sleep(0.05)
    assert remove_stale_temporaries(target) == [live] and not live.exists() and other.exists()


def test_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DataError, match="cannot write here") as info:
        with atomic_write(blocker / "out.npz") as f:
            f.write(b"x")
    assert "\n" not in str(info.value) and "out.npz" in str(info.value)


def test_write_json_writes_what_any_json_reader_loads_and_keeps_the_old_file_on_failure(tmp_path):
    import json
    import math

    path = tmp_path / "deep" / "r.json"
    write_json(path, {"map": 0.5, "bad": [math.nan, math.inf, -math.inf], "rows": ({"a": 1},), "s": "é"})
    text = path.read_text()
    assert json.loads(text) == {"map": 0.5, "bad": [None, None, None], "rows": [{"a": 1}], "s": "é"}
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    with pytest.raises(TypeError):
        write_json(path, {"not json": object()})
    assert json.loads(path.read_text())["map"] == 0.5 and temporaries(path) == []
    write_text(tmp_path / "t.md", "| é − a |\n")
    assert (tmp_path / "t.md").read_bytes() == "| é − a |\n".encode("utf-8") and temporaries(tmp_path / "t.md") == []

"""The live index (dsh.index.live): every state it reaches, live, replayed from its log or folded, answers exactly as
a plain HammingIndex built by the same operations; a torn last record is dropped, a damaged one refused; searches
see a change whole or not at all; one writer; a full disk changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import dsh.index.live as live_module
from dsh.errors import DataError, InputError
from dsh.index.flat import HammingIndex
from dsh.index.live import _LOG_HEAD, FoldPolicy, LiveIndex, has_changes_logged, log_path

NBITS = 12  # a small code space, so queries have many neighbours at small distances
CLASSES = ["a", "b", "c"]


def random_codes(rng, n):
    return np.packbits(rng.random((n, NBITS)) < 0.5, axis=1, bitorder="little")


def make_file(path, rng, n=200):
    index = HammingIndex(NBITS)
    index.add(random_codes(rng, n), labels=rng.integers(-1, 3, n), class_names=CLASSES,
              paths=[f"/img/{i}.png" for i in range(n)])
    index.metadata["source"] = "test"
    index.save(path)
    return HammingIndex.load(path)


def random_ops(rng, ref: HammingIndex, live: LiveIndex, count: int) -> None:
    """``count`` adds and removes applied to both (the reference by hand, with the ids the live index chose)."""
    for _ in range(count):
        if rng.random() < 0.6 or ref.ntotal < 5:
            n = int(rng.integers(1, 4))
            codes, labels = random_codes(rng, n), rng.integers(-1, 3, n)
            paths = [f"/new/{rng.integers(1 << 30)}.png" for _ in range(n)]
            ids = live.add(codes, labels=labels, paths=paths)
            assert ids.min() > (ref.ids.max() if ref.ntotal else -1) or ids.min() >= 0
            ref.add(codes, ids, labels=labels, paths=paths)
        else:
            held = ref.ids
            victims = rng.choice(held, size=min(3, held.shape[0]), replace=False)
            victims = np.append(victims, 10**9)  # an id never held is ignored
            assert live.remove(victims) == ref.remove(victims) == victims.shape[0] - 1


def assert_same(index, ref: HammingIndex, rng) -> None:
    assert index.ntotal == ref.ntotal
    np.testing.assert_array_equal(index.ids, ref.ids)
    q = np.concatenate([random_codes(rng, 6), ref.codes[:3]])
    for k in (1, 7, 40, ref.ntotal + 5):
        D, I = index.search(q, k)
        Dr, Ir = ref.search(q, k)
        np.testing.assert_array_equal(I, Ir)
        np.testing.assert_array_equal(D, Dr)
    assert (D[:, 0] == 0).sum() >= 3  # the reference's own codes are found at distance 0: the data has matches
    for r in (0, 2):
        got, want = index.range_search(q, r), ref.range_search(q, r)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert index.lookup(ref.ids) == ref.lookup(ref.ids)


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "db.dshidx"
    ref = make_file(path, rng)
    return path, ref, rng


def test_live_replayed_and_folded_agree_with_the_reference(setup, monkeypatch):
    path, ref, rng = setup
    live = LiveIndex.open(path)
    size_before = path.stat().st_size
    random_ops(rng, ref, live, 60)
    assert path.stat().st_size == size_before  # nothing folded yet: the index file is as it was
    assert live.pending > 0
    # the added items sit in segments whose sizes fall geometrically: a few, not one per add
    monkeypatch.setattr(live_module, "_SMALL_SEGMENT", 1)  # (small ones are merged: none would be left here)
    random_ops(rng, ref, live, 30)
    sizes = [seg.ntotal for seg, _ in live.snapshot().segments]
    assert 2 <= len(sizes) <= np.log2(sum(sizes)) + 2 and all(a > 2 * b for a, b in zip(sizes, sizes[1:]))
    monkeypatch.undo()
    random_ops(rng, ref, live, 1)
    assert len(live.snapshot().segments) == 1  # all below 4,096 items: one segment
    assert_same(live, ref, rng)
    live.close(fold=False)  # as a crash would leave it: the changes only in the log
    with LiveIndex.open(path) as again:
        assert_same(again, ref, rng)
        random_ops(rng, ref, again, 20)
    # closed cleanly: folded, the file alone holds everything
    plain = HammingIndex.load(path)
    assert_same(plain, ref, rng)
    assert plain.metadata["source"] == "test"
    with LiveIndex.open(path, writable=False) as reader:
        assert reader.pending == 0
        assert_same(reader, ref, rng)


def test_one_add_writes_one_record_not_the_index(setup):
    path, ref, rng = setup
    with LiveIndex.open(path) as live:
        before = live.bytes_written
        live.add(random_codes(rng, 1), labels=[1], paths=["/x.png"])
        assert 0 < live.bytes_written - before < 300
        assert os.path.getsize(log_path(path)) < 400


def test_new_ids_are_never_reused(setup):
    path, ref, rng = setup
    with LiveIndex.open(path) as live:
        top = live.add(random_codes(rng, 1))[0]
        live.remove([top])
    with LiveIndex.open(path) as live:
        assert live.add(random_codes(rng, 1))[0] == top + 1
        with pytest.raises(InputError, match="already in the index"):
            live.add(random_codes(rng, 1), ids=[3])


def test_folds_by_policy_and_reads_the_log_only_once(setup):
    path, ref, rng = setup
    live = LiveIndex.open(path, policy=FoldPolicy(added=5, removed=3, background=False))
    random_ops(rng, ref, live, 40)
    assert live.folds >= 3
    assert_same(live, ref, rng)
    old_log = log_path(path).read_bytes()
    live.fold()
    # a crash between writing the new index file and the new log leaves the old log beside it: the file records
    # the number of the last record it holds, and those records are skipped, so nothing is applied twice
    live.close(fold=False)
    log_path(path).write_bytes(old_log)
    with LiveIndex.open(path) as again:
        assert again.pending == 0
        assert_same(again, ref, rng)


def test_torn_tail_is_dropped_and_damaged_middle_refused(setup):
    path, ref, rng = setup
    live = LiveIndex.open(path)
    random_ops(rng, ref, live, 10)
    before = log_path(path).stat().st_size
    codes = random_codes(rng, 1)
    live.add(codes, labels=[2])
    live.close(fold=False)
    full = log_path(path).read_bytes()
    for cut in (1, 9, len(full) - before - 1):  # inside the record's header, its payload, one byte short
        log_path(path).write_bytes(full[: len(full) - cut])
        with LiveIndex.open(path, writable=False) as reader:
            assert_same(reader, ref, rng)  # the torn add is not there, everything before it is
    log_path(path).write_bytes(full[: before + 5])
    with LiveIndex.open(path) as writer:  # the writer cuts the torn tail off before appending
        assert_same(writer, ref, rng)
        writer.remove([int(ref.ids[0])])
        ref.remove([int(ref.ids[0])])
        writer.close(fold=False)
    with LiveIndex.open(path, writable=False) as reader:
        assert_same(reader, ref, rng)
    damaged = bytearray(log_path(path).read_bytes())
    damaged[_LOG_HEAD.size + 12 + 5] ^= 0xFF  # the first record's payload, records after it
    log_path(path).write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=f"damaged record at byte {_LOG_HEAD.size}") as e:
        LiveIndex.open(path)
    assert "\n" not in str(e.value)


def test_a_second_writer_is_refused_in_one_line(setup):
    path, _, _ = setup
    with LiveIndex.open(path):
        with pytest.raises(DataError, match=r"another dsh process \(pid \d+\) is writing this index") as e:
            LiveIndex.open(path)
        assert "\n" not in str(e.value)
        LiveIndex.open(path, writable=False).close()  # readers are never refused
    LiveIndex.open(path).close()  # let go on close


def test_snapshots_see_each_change_whole(setup):
    path, ref, rng = setup
    live = LiveIndex.open(path)
    snap = live.snapshot()
    frozen = HammingIndex(NBITS)
    frozen.add(ref.codes, ref.ids, labels=ref.catalog.labels, paths=ref.catalog.paths, class_names=CLASSES)
    random_ops(rng, ref, live, 30)
    assert_same(snap, frozen, rng)  # the snapshot is the index before the changes
    # readers search for one code while the writer adds copies of it in batches of 4: each search finds whole
    # batches, and every id it finds can be looked up in its snapshot
    probe = random_codes(rng, 1)
    seen, errors, done = [], [], threading.Event()
    base = live.range_search(probe, 0)[0][1]

    def reader():
        while not done.is_set():
            view = live.snapshot()
            lims, D, I = view.range_search(probe, 0)
            try:
                view.lookup(I)
            except KeyError as e:
                errors.append(e)
            seen.append(int(lims[1] - base))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(25):
        live.add(np.repeat(probe, 4, axis=0), labels=[0, 1, 2, 0])
    done.set()
    for t in threads:
        t.join()
    live.close(fold=False)
    assert not errors and seen and all(n % 4 == 0 for n in seen)
    assert max(seen) <= 100


def test_refused_adds_change_nothing(setup):
    path, ref, rng = setup
    with LiveIndex.open(path) as live:
        size = live.bytes_written
        with pytest.raises(InputError):
            live.add(random_codes(rng, 2), labels=[[0, 1, 1], [1, 0, 0]])  # multi-hot into a class-id catalog
        with pytest.raises(InputError):
            live.add(random_codes(rng, 1), class_names=["x", "y"])
        with pytest.raises(InputError):
            live.add(np.zeros((1, 5), np.uint8))
        assert live.bytes_written == size
        assert_same(live, ref, rng)


def test_a_reader_follows_a_writer_through_its_folds(setup):
    path, ref, rng = setup
    reader = LiveIndex.open(path, writable=False)
    reader.follow_seconds = 0.0  # look at every snapshot
    writer = LiveIndex.open(path, policy=FoldPolicy(added=5, background=False))
    seen = []
    for _ in range(6):
        random_ops(rng, ref, writer, 4)
        assert_same(reader.snapshot(), ref, rng)
        seen.append(writer.folds)
    assert seen[0] < seen[-1]  # the writer folded between looks: the reader took in the new file and log
    writer.close()
    assert_same(reader.snapshot(), ref, rng)
    assert not reader.refresh()  # nothing more to take in
    # a record the reader took in and the writer then cut back (its fsync failed), and another numbered alike
    # in its place: the reader reads everything again rather than stopping at the numbering
    writer = LiveIndex.open(path, policy=FoldPolicy(background=False))
    start = log_path(path).stat().st_size
    random_ops(rng, HammingIndex.load(path), writer, 1)  # a change the writer will take back
    assert reader.refresh()
    writer.close(fold=False)
    with open(log_path(path), "r+b") as f:
        f.truncate(start)
    writer = LiveIndex.open(path, policy=FoldPolicy(background=False))
    random_ops(rng, ref, writer, 2)
    assert reader.refresh()
    assert_same(reader.snapshot(), ref, rng)
    writer.close(fold=False)


def _hold_saves(monkeypatch):
    """HammingIndex.save made to wait (in the fold's thread) until the test lets it go on."""
    started, release = threading.Event(), threading.Event()
    real_save = HammingIndex.save

    def held_save(self, *args, **kwargs):
        started.set()
        assert release.wait(60)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(HammingIndex, "save", held_save)
    return started, release


def test_a_background_fold_lets_changes_and_searches_go_on(setup, tmp_path, monkeypatch):
    path, ref, rng = setup
    started, release = _hold_saves(monkeypatch)
    live = LiveIndex.open(path, policy=FoldPolicy(added=5))
    while not live.folding:
        random_ops(rng, ref, live, 1)
    assert started.wait(30)
    size_before = path.stat().st_size
    random_ops(rng, ref, live, 30)  # the fold is writing the file meanwhile: changes are not held up
    assert live.folding and live.folds == 0
    assert_same(live, ref, rng)
    # a kill -9 now: the file as it was, the log with every change
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for f in tmp_path.iterdir():
        if f.is_file():
            (crashed / f.name).write_bytes(f.read_bytes())
    with LiveIndex.open(crashed / path.name, writable=False) as reader:
        assert_same(reader, ref, rng)
    release.set()
    assert live.wait_for_fold(60)
    assert live.folds == 1 and live.last_fold_error is None
    assert path.stat().st_size != size_before
    assert live.pending > 0  # the changes made during the fold are kept, now on top of the folded file
    assert_same(live, ref, rng)
    random_ops(rng, ref, live, 5)
    live.close(fold=False)
    with LiveIndex.open(path, writable=False) as reader:
        assert_same(reader, ref, rng)
    with LiveIndex.open(path, policy=FoldPolicy(background=False)) as again:
        assert_same(again, ref, rng)
    assert not has_changes_logged(path)
    assert_same(HammingIndex.load(path), ref, rng)


def test_a_fold_whose_log_cannot_be_rewritten_keeps_the_old_log(setup, monkeypatch):
    path, ref, rng = setup
    live = LiveIndex.open(path, policy=FoldPolicy(added=5, background=False))
    random_ops(rng, ref, live, 3)
    real_write_log = LiveIndex._write_log

    def full_disk(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LiveIndex, "_write_log", full_disk)
    while live.folds == 0:
        random_ops(rng, ref, live, 1)
    monkeypatch.setattr(LiveIndex, "_write_log", real_write_log)
    random_ops(rng, ref, live, 10)  # appended to the old log, which still extends the new file
    assert_same(live, ref, rng)
    live.close(fold=False)
    with LiveIndex.open(path, writable=False) as reader:
        assert_same(reader, ref, rng)


def test_a_background_fold_that_fails_loses_nothing_and_is_tried_again(setup, monkeypatch):
    path, ref, rng = setup
    real_save = HammingIndex.save
    failures = []

    def failing_save(self, *args, **kwargs):
        failures.append(1)
        raise DataError(f"{args[0]}: cannot write: out of space")

    monkeypatch.setattr(HammingIndex, "save", failing_save)
    live = LiveIndex.open(path, policy=FoldPolicy(added=5, retry_seconds=0.0))
    while not failures:
        random_ops(rng, ref, live, 1)
    live.wait_for_fold(60)
    assert live.folds == 0 and "out of space" in live.last_fold_error
    random_ops(rng, ref, live, 5)
    assert_same(live, ref, rng)
    monkeypatch.setattr(HammingIndex, "save", real_save)
    live.wait_for_fold(60)
    random_ops(rng, ref, live, 1)  # past the limit still: the policy tries again
    live.wait_for_fold(60)
    assert live.folds == 1 and live.last_fold_error is None
    live.close(fold=False)
    with LiveIndex.open(path, writable=False) as reader:
        assert_same(reader, ref, rng)


def test_a_log_of_the_earlier_format_is_replayed_and_rewritten(setup):
    path, ref, rng = setup
    import struct
    import zlib

    from dsh.index.live import _file_identity

    codes = random_codes(rng, 2)
    added = [{"op": "add", "ids": [500, 501], "codes": codes.tobytes().hex(), "labels": [1, 2]},
             {"op": "remove", "ids": [int(ref.ids[0])]}]
    body = b""
    for rec in added:
        payload = json.dumps(rec).encode()
        body += struct.pack("<4sII", b"RECD", len(payload), zlib.crc32(payload)) + payload
    log_path(path).write_bytes(struct.pack("<8sIQ8s", b"DSHILOG1", NBITS, *_file_identity(path)) + body)
    ref.add(codes, [500, 501], labels=[1, 2])
    ref.remove([int(ref.ids[0])])
    with LiveIndex.open(path, writable=False) as reader:
        assert_same(reader, ref, rng)
    with LiveIndex.open(path) as writer:
        assert log_path(path).read_bytes()[:8] == b"DSHILOG2"
        assert_same(writer, ref, rng)
        writer.close(fold=False)
    with LiveIndex.open(path, writable=False) as reader:
        assert_same(reader, ref, rng)


FULL_DISK = """
import resource, sys
import numpy as np
from dsh.index.live import LiveIndex, log_path
from dsh.errors import DataError
live = LiveIndex.open(sys.argv[1])
size = log_path(sys.argv[1]).stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, size + 20))  # room for part of a record, not all of it
try:
    live.add(np.zeros((1, 2), np.uint8), paths=["/" + "x" * 200])
except DataError as e:
    print("refused:", e)
live.close(fold=False)
"""


def test_a_full_disk_during_an_add_changes_nothing(setup):
    path, ref, rng = setup
    with LiveIndex.open(path) as live:
        random_ops(rng, ref, live, 5)
        live.close(fold=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "cannot write the change" in out.stdout and "File too large" in out.stdout
    with LiveIndex.open(path, writable=False) as reader:
        assert_same(reader, ref, rng)

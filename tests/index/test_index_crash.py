"""An index and its catalog are one unit on disk: a save that crashes at any point leaves the old pair or the new
one, loadable, and the next save leaves nothing else behind.

The crash is real: a forked child saves with every step that changes the folder (``mkstemp``, ``fsync``,
``replace``, ``unlink``) counted, and ends itself with ``os._exit`` just before step ``k``, running no cleanup, as
a killed process would. ``k`` goes over every step of a save.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from dsh import HammingIndex
from dsh.errors import DataError
from dsh.index.catalog import catalog_file, catalog_path

NBITS = 24
LEGACY = Path(__file__).parent / "data" / "legacy.dshidx"


def make_index(n: int, seed: int) -> HammingIndex:
    rng = np.random.default_rng(seed)
    index = HammingIndex(NBITS)
    index.add(rng.integers(0, 256, (n, 3), dtype=np.uint8), labels=rng.integers(-1, 4, n),
              paths=[f"state{seed}/{i}.jpg" for i in range(n)], class_names=["a", "b", "c", "d"])
    return index


def state_of(path: Path) -> tuple:
    """What a loaded index holds, codes and records: equal states mean equal indexes."""
    got = HammingIndex.load(path)
    return got.codes.tobytes(), repr(got.lookup(got.ids))


def steps_of_a_save(index: HammingIndex, path: Path, crash_at: int | None) -> int:
    """Save in a forked child that exits just before its step ``crash_at`` (``None``: never); returns the number
    of steps the save took (when it ran to the end) or -1 (when it was cut off)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count steps, die at the chosen one, never return into pytest
        os.close(r)
        try:
            count = [0]

            def step(fn):
                def wrapped(*a, **k):
                    if count[0] == crash_at:
                        os._exit(0)
                    count[0] += 1
                    return fn(*a, **k)
                return wrapped

            os.replace, os.unlink, os.fsync = step(os.replace), step(os.unlink), step(os.fsync)
            tempfile.mkstemp = step(tempfile.mkstemp)
            index.save(path)
            os.write(w, str(count[0]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return int(text) if text else -1


def folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_crash_at_every_step_of_a_save_leaves_the_old_or_the_new_pair(tmp_path):
    old, new, next_ = make_index(30, 1), make_index(50, 2), make_index(40, 3)
    want = {}
    for name, index in (("old", old), ("new", new), ("next", next_)):
        index.save(tmp_path / f"{name}.dshidx")
        want[name] = state_of(tmp_path / f"{name}.dshidx")
    assert len(set(want.values())) == 3

    folder = tmp_path / "work"
    folder.mkdir()
    path = folder / "db.dshidx"
    old.save(path)
    total = steps_of_a_save(new, path, None)
    assert total >= 8  # catalog: mkstemp, fsync, replace, folder fsync; index: the same; removal of the old one
    seen = []
    for k in range(total + 1):
        shutil.rmtree(folder)
        folder.mkdir()
        old.save(path)
        assert steps_of_a_save(new, path, k) == (-1 if k < total else total)
        got = state_of(path)  # loads, with its catalog, whatever was left
        assert got in (want["old"], want["new"]), k
        seen.append("new" if got == want["new"] else "old")
        # the next save (of another state) leaves exactly the index and its catalog
        next_.save(path)
        assert state_of(path) == want["next"]
        assert folder_files(folder) == sorted([path.name, catalog_file(path, next_.metadata["catalog"]["uid"]).name])
    # the old pair until the index's rename, the new one from then on: the rename is the commit point
    switch = seen.index("new")
    assert seen == ["old"] * switch + ["new"] * (total + 1 - switch) and 0 < switch < total


def test_a_failed_index_write_removes_its_new_catalog(tmp_path, monkeypatch):
    path = tmp_path / "db.dshidx"
    make_index(30, 1).save(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import dsh.index.flat as flat

    def refuse(*a, **k):
        raise DataError(f"{path}: cannot write (refused by the test)")

    monkeypatch.setattr(flat, "atomic_write", refuse)
    with pytest.raises(DataError, match="refused by the test"):
        make_index(50, 2).save(path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_index_of_an_earlier_dsh_loads_and_its_catalog_goes_at_the_next_save(tmp_path):
    # written by dsh before catalogs had a name per save: the catalog is LEGACY.catalog
    for p in (LEGACY, catalog_path(LEGACY)):
        shutil.copy(p, tmp_path / p.name)
    path = tmp_path / LEGACY.name
    index = HammingIndex.load(path)
    assert index.ntotal == 12 and index.metadata["catalog"]["file"] == catalog_path(path).name
    assert [r["path"] for r in index.lookup(index.ids)] == [f"img/{i:02d}.jpg" for i in range(12)]
    index.add(np.full((1, 2), 255, np.uint8), labels=[2], paths=["img/new.jpg"])
    index.save(path)
    assert folder_files(tmp_path) == sorted([path.name, catalog_file(path, index.metadata["catalog"]["uid"]).name])
    assert HammingIndex.load(path).lookup([12]) == [{"id": 12, "label": 2, "class": "c", "path": "img/new.jpg"}]


def test_only_catalogs_of_this_index_are_removed(tmp_path):
    path = tmp_path / "db.dshidx"
    other = tmp_path / "db.dshidx.0123456789abcdef"  # another index whose name looks like a per-save catalog's
    small = make_index(10, 4)
    small.save(other)
    (tmp_path / "db.dshidx.fedcba9876543210.catalog").write_bytes(b"not a catalog")
    # a catalog under the earlier dsh's name for `other`: it matches the per-save pattern of db.dshidx, but the
    # uid inside is not the one its name holds
    shutil.copy(catalog_file(other, small.metadata["catalog"]["uid"]), catalog_path(other))
    kept = folder_files(tmp_path)
    index = make_index(20, 5)
    index.save(path)
    index.save(path)  # the first save's catalog is removed, nothing else is
    own = catalog_file(path, index.metadata["catalog"]["uid"])
    assert folder_files(tmp_path) == sorted(kept + [path.name, own.name])
    assert HammingIndex.load(other).ntotal == 10


def test_saving_without_a_catalog_removes_the_old_one(tmp_path):
    path = tmp_path / "db.dshidx"
    make_index(30, 1).save(path)
    bare = HammingIndex(NBITS)
    bare.add(np.zeros((3, 3), np.uint8))
    bare.save(path)
    assert folder_files(tmp_path) == [path.name] and HammingIndex.load(path).catalog is None

"""The catalog of per-item records that travels with a HammingIndex, against a plain dict id -> record kept by the
same sequence of add / remove calls."""

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsh.index.catalog as catalog_module
from dsh import HammingIndex
from dsh.errors import DataError, InputError
from dsh.index.catalog import Catalog, StringColumn, catalog_file

NBITS = 32
NAMES = ["cat", "dog", "emu", "gnu"]
ODD_STRINGS = ["", "plain.jpg", "ü/Straße.png", "日本語/画像.png", "emoji 🐍.jpg", "e\u0301", "a\nb",
               "nul\0inside", "x" * 5000, "tab\tand space "]


# -- the slow, obvious reference -----------------------------------------------------------------------------------


class Reference:
    """id -> the fields given for it; a column once given exists for every row, with the fill value where a row
    was added without it."""

    def __init__(self, multi_hot_classes: int = 0):
        self.rows: dict[int, dict] = {}
        self.fields: set[str] = set()
        self.names: list[str] = []
        self.C = multi_hot_classes  # 0: class-id labels

    def add(self, ids, labels=None, paths=None, keys=None, class_names=None):
        given = {"label": labels, "path": paths, "key": keys}
        for j, i in enumerate(ids):
            assert int(i) not in self.rows
            self.rows[int(i)] = {f: (list(v[j]) if f == "label" and self.C else v[j])
                                 for f, v in given.items() if v is not None}
        self.fields |= {f for f, v in given.items() if v is not None}
        if class_names:
            self.names = list(class_names)

    def remove(self, ids):
        for i in ids:
            self.rows.pop(int(i), None)

    def record(self, i: int) -> dict:
        row, rec = self.rows[i], {"id": i}
        if "label" in self.fields:
            if self.C:
                hot = row.get("label", [0] * self.C)
                rec["label"] = [c for c in range(self.C) if hot[c]]
                if self.names:
                    rec["class"] = [self.names[c] for c in rec["label"]]
            else:
                rec["label"] = int(row.get("label", -1))
                if 0 <= rec["label"] < len(self.names):
                    rec["class"] = self.names[rec["label"]]
        if "path" in self.fields:
            rec["path"] = str(row.get("path", ""))
        if "key" in self.fields:
            rec["key"] = row.get("key", "")
        return rec

    def records(self) -> list[dict]:
        return [self.record(i) for i in sorted(self.rows)]


def pool_codes(n, seed=0):
    """Codes drawn from a pool of 8 values: many exact duplicates, so radius-0 searches find several matches."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (8, NBITS // 8), dtype=np.uint8)
    return pool[rng.integers(0, len(pool), n)]


def one_line_error(e) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


def check_against(index: HammingIndex, ref: Reference):
    assert sorted(ref.rows) == index.ids.tolist()
    assert index.lookup(index.ids) == ref.records()
    assert index.catalog is None or len(index.catalog) == index.ntotal


# -- round trips ---------------------------------------------------------------------------------------------------


def build_index(n=600, seed=1):
    rng = np.random.default_rng(seed)
    codes = pool_codes(n, seed)
    ids = rng.permutation(5000)[:n]  # arbitrary order: the index re-sorts rows, the records must follow
    labels = rng.integers(-1, len(NAMES) + 1, n)  # -1 unlabelled, len(NAMES) a class with no name
    paths = [f"{ODD_STRINGS[i % len(ODD_STRINGS)]}/{i}.jpg" for i in range(n)]
    keys = [f"user-key-{int(i):05d}" for i in ids]
    index, ref = HammingIndex(NBITS), Reference()
    cuts = [0, n // 3, n // 2, n]
    for a, b in zip(cuts, cuts[1:]):
        index.add(codes[a:b], ids=ids[a:b], labels=labels[a:b], paths=paths[a:b], keys=keys[a:b],
                  class_names=NAMES)
        ref.add(ids[a:b], labels[a:b], paths[a:b], keys[a:b], NAMES)
    return index, ref, codes, ids


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip(tmp_path, mmap):
    index, ref, codes, ids = build_index()
    check_against(index, ref)
    path = tmp_path / "db.dshidx"
    index.save(path, metadata={"run": "r1"})
    entry = index.metadata["catalog"]
    cpath = catalog_file(path, entry["uid"])
    assert cpath.name == f"db.dshidx.{entry['uid']}.catalog" and cpath.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["db.dshidx", cpath.name])
    assert entry["file"] == cpath.name and entry["count"] == len(ids) and index.metadata["run"] == "r1"

    loaded = HammingIndex.load(path, mmap=mmap)
    assert loaded.metadata == index.metadata
    check_against(loaded, ref)
    cat = loaded.catalog
    for arr in (cat.labels, cat.paths.offsets, cat.paths.blob, cat.keys.offsets, cat.keys.blob):
        assert isinstance(arr, np.memmap) == mmap
    assert cat.class_names == NAMES and cat.label_kind == "class"

    # the records of search results: a query's own code finds it, among other exact duplicates
    q = codes[:20]
    lims, D, I = loaded.range_search(q, 0)
    assert (np.diff(lims) > 1).all()
    for j in range(len(q)):
        found = loaded.lookup(I[lims[j] : lims[j + 1]])
        assert found == [ref.record(int(i)) for i in I[lims[j] : lims[j + 1]]]
        assert ref.record(int(ids[j])) in found

    # a loaded (memory-mapped) index still changes, and the catalog with it
    loaded.remove(ids[::4])
    ref.remove(ids[::4])
    gap = int(np.setdiff1d(np.arange(5000), loaded.ids)[0])  # an id among those held, not after them
    added = [9001, gap, 9000]
    loaded.add(pool_codes(3, 9), ids=added, paths=["n1", "n2", "n3"])
    ref.add(added, paths=["n1", "n2", "n3"])
    check_against(loaded, ref)
    loaded.save(path)
    check_against(HammingIndex.load(path, mmap=mmap), ref)


def test_add_remove_add_keeps_records_with_their_ids(tmp_path):
    index, ref = HammingIndex(NBITS), Reference()
    index.add(pool_codes(5), ids=[40, 10, 30, 0, 20])  # no records yet: no catalog
    ref.add([40, 10, 30, 0, 20])
    assert index.catalog is None and index.lookup([30]) == [{"id": 30}]
    index.add(pool_codes(4, 1), ids=[25, 5, 45, 15], labels=[3, 1, 2, 0], paths=["p25", "p5", "p45", "p15"])
    ref.add([25, 5, 45, 15], labels=[3, 1, 2, 0], paths=["p25", "p5", "p45", "p15"])
    check_against(index, ref)  # earlier rows got label -1 and path ""
    assert index.remove([10, 45, 999]) == 2
    ref.remove([10, 45])
    check_against(index, ref)
    index.add(pool_codes(3, 2), ids=[12, 2, 50], keys=["k12", "k2", "k50"], class_names=NAMES)
    ref.add([12, 2, 50], keys=["k12", "k2", "k50"], class_names=NAMES)
    check_against(index, ref)
    index.add(pool_codes(2, 3))  # default ids, no records: fill values
    ref.add([51, 52])
    check_against(index, ref)
    assert index.lookup([25, 2]) == [ref.record(25), ref.record(2)]
    with pytest.raises(KeyError):
        index.lookup([10])  # removed
    with pytest.raises(KeyError):
        index.lookup([5, 1000])
    index.save(tmp_path / "i.idx")
    check_against(HammingIndex.load(tmp_path / "i.idx"), ref)

    index.reset()  # the columns stay, with no rows
    assert index.ntotal == 0 and len(index.catalog) == 0 and index.catalog.columns == ("labels", "paths", "keys")
    index.add(pool_codes(2, 4), ids=[3, 1])
    assert index.lookup([3, 1]) == [{"id": 3, "label": -1, "path": "", "key": ""},
                                    {"id": 1, "label": -1, "path": "", "key": ""}]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_add_remove_sequences(data):
    index, ref = HammingIndex(NBITS), Reference()
    used: set[int] = set()
    for step in range(data.draw(st.integers(1, 8))):
        if ref.rows and data.draw(st.booleans()):
            held = sorted(ref.rows)
            gone = data.draw(st.lists(st.sampled_from(held), max_size=len(held)))
            gone += data.draw(st.lists(st.integers(0, 300), max_size=3))  # ids not held are ignored
            assert index.remove(gone) == len(set(gone) & set(held))
            ref.remove(gone)
        else:
            ids = data.draw(st.lists(st.integers(0, 200).filter(lambda i: i not in used), max_size=12,
                                     unique=True))
            used.update(ids)
            n = len(ids)
            fields = {}
            if data.draw(st.booleans()):
                fields["labels"] = data.draw(st.lists(st.integers(-1, 5), min_size=n, max_size=n))
            if data.draw(st.booleans()):
                fields["paths"] = data.draw(st.lists(st.sampled_from(ODD_STRINGS), min_size=n, max_size=n))
            if data.draw(st.booleans()):
                fields["keys"] = data.draw(st.lists(st.text(max_size=6), min_size=n, max_size=n))
            names = NAMES if data.draw(st.booleans()) else None
            index.add(pool_codes(n, step), ids=np.array(ids, np.int64), class_names=names, **fields)
            ref.add(ids, fields.get("labels"), fields.get("paths"), fields.get("keys"), names)
        if index.catalog is not None:
            check_against(index, ref)
        else:
            assert not ref.fields and index.ids.tolist() == sorted(ref.rows)


def test_multi_hot_labels(tmp_path):
    C = len(NAMES)
    rng = np.random.default_rng(5)
    hot = (rng.random((50, C)) < 0.4).astype(np.uint8)
    hot[0] = 0  # a row with no label at all
    ids = rng.permutation(1000)[:50]
    index, ref = HammingIndex(NBITS), Reference(multi_hot_classes=C)
    index.add(pool_codes(30), ids=ids[:30], labels=hot[:30].astype(bool), class_names=NAMES)
    ref.add(ids[:30], labels=hot[:30], class_names=NAMES)
    index.add(pool_codes(20, 1), ids=ids[30:], paths=[f"im{i}" for i in range(20)])  # no labels: all-zero rows
    ref.add(ids[30:], paths=[f"im{i}" for i in range(20)])
    index.remove(ids[::7])
    ref.remove(ids[::7])
    check_against(index, ref)
    assert any(len(r["label"]) > 1 for r in ref.records())
    assert index.catalog.label_kind == "multi-hot" and index.catalog.labels.dtype == np.uint8
    index.save(tmp_path / "m.idx")
    for mmap in (False, True):
        loaded = HammingIndex.load(tmp_path / "m.idx", mmap=mmap)
        check_against(loaded, ref)
        assert loaded.catalog.labels.shape == (index.ntotal, C)
        assert isinstance(loaded.catalog.labels, np.memmap) == mmap
    with pytest.raises(InputError) as e:  # class ids onto multi-hot rows
        index.add(pool_codes(1), ids=[5000], labels=[1])
    one_line_error(e)
    with pytest.raises(InputError) as e:  # another number of classes
        index.add(pool_codes(1), ids=[5000], labels=np.ones((1, C + 1), np.uint8))
    one_line_error(e)
    check_against(index, ref)  # refused adds change nothing


def test_unicode_strings_take_and_concat(monkeypatch, tmp_path):
    strings = ODD_STRINGS * 7 + [Path("a/b.png")]
    want = [str(s) for s in strings]
    col = StringColumn.from_strings(strings)
    assert col.tolist() == want and col.offsets.dtype == np.int64 and col.blob.dtype == np.uint8
    assert col[-1] == "a/b.png" and col[3] == "日本語/画像.png"
    rng = np.random.default_rng(0)
    # small pieces, so take's gather works across piece boundaries, and within one very long string
    for piece in (1, 5, 4096, 1 << 22):
        monkeypatch.setattr(catalog_module, "_PIECE", piece)
        pos = rng.integers(0, len(want), 200)
        assert col.take(pos).tolist() == [want[p] for p in pos]
        assert col.take(np.zeros(0, np.int64)).tolist() == []
    other = StringColumn.from_strings(["z", "", "ωmega"])
    assert col.concat(other).tolist() == want + ["z", "", "ωmega"]
    assert StringColumn.empty(3).concat(other).tolist() == ["", "", "", "z", "", "ωmega"]

    # through an index file, written in small pieces
    monkeypatch.setattr(catalog_module, "_PIECE", 7)
    index = HammingIndex(NBITS)
    index.add(pool_codes(len(want)), ids=np.arange(len(want))[::-1] * 3, paths=strings, keys=strings)
    ref = Reference()
    ref.add(np.arange(len(want))[::-1] * 3, paths=want, keys=want)
    index.save(tmp_path / "u.idx")
    for mmap in (False, True):
        check_against(HammingIndex.load(tmp_path / "u.idx", mmap=mmap), ref)


# -- files that do not belong --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [False, True])
def test_a_catalog_from_another_index_is_refused(tmp_path, mmap):
    a, ref, _, ids = build_index(n=50, seed=1)
    b = HammingIndex(NBITS)
    b.add(a.codes, ids=a.ids, labels=np.zeros(a.ntotal, int))  # the same ids: only the uid tells them apart
    pa, pb = tmp_path / "a.idx", tmp_path / "b.idx"
    a.save(pa)
    b.save(pb)
    ca, cb = saved_catalog(a, pa), saved_catalog(b, pb)
    good = ca.read_bytes()
    ca.write_bytes(cb.read_bytes())
    with pytest.raises(DataError, match="do not belong together") as e:
        HammingIndex.load(pa, mmap=mmap)
    assert str(pa) in one_line_error(e) and str(ca) in str(e.value)

    # the right uid, but other ids (a catalog written for another state of the index)
    cat, cids, uid = Catalog.load(cb)
    cat.save(ca, cids + 1, a.metadata["catalog"]["uid"])
    with pytest.raises(DataError, match="do not belong together") as e:
        HammingIndex.load(pa, mmap=mmap)
    assert str(pa) in one_line_error(e) and str(ca) in str(e.value)
    cat.take(np.arange(10)).save(ca, cids[:10], a.metadata["catalog"]["uid"])
    with pytest.raises(DataError, match="do not belong together"):
        HammingIndex.load(pa, mmap=mmap)

    ca.write_bytes(good)
    check_against(HammingIndex.load(pa, mmap=mmap), ref)
    ca.unlink()
    with pytest.raises(DataError, match="no such catalog file") as e:
        HammingIndex.load(pa, mmap=mmap)
    assert str(ca) in one_line_error(e)


def saved_catalog(index: HammingIndex, path: Path) -> Path:
    """The catalog file the last save of ``index`` to ``path`` wrote."""
    return catalog_file(path, index.metadata["catalog"]["uid"])


def small_catalog_file(tmp_path) -> tuple[Path, bytes]:
    cat = Catalog.from_columns(3, labels=[2, -1, 0], paths=["ü.jpg", "", "b"], keys=["k", "kk", ""],
                               class_names=["x", "y", "z"])
    path = tmp_path / "good.catalog"
    cat.save(path, np.array([1, 5, 9]), "cafe")
    return path, path.read_bytes()


def refused(path, mmap=False) -> str:
    with pytest.raises(DataError) as e:
        Catalog.load(path, mmap=mmap)
    text = one_line_error(e)
    assert str(path) in text
    return text


def test_good_small_catalog_loads(tmp_path):
    path, _ = small_catalog_file(tmp_path)
    for mmap in (False, True):
        cat, ids, uid = Catalog.load(path, mmap=mmap)
        assert ids.tolist() == [1, 5, 9] and uid == "cafe"
        assert [cat.record(i) for i in range(3)] == [
            {"label": 2, "class": "z", "path": "ü.jpg", "key": "k"}, {"label": -1, "path": "", "key": "kk"},
            {"label": 0, "class": "x", "path": "b", "key": ""}]


def test_every_truncation_is_refused(tmp_path):
    path, blob = small_catalog_file(tmp_path)
    bad = tmp_path / "bad.catalog"
    for length in range(len(blob)):
        bad.write_bytes(blob[:length])
        text = refused(bad, mmap=length % 2 == 1)
        if length >= 8:
            assert "truncated" in text
    for extra in (b"\0", bytes(64), b"DSHE"):
        bad.write_bytes(blob + extra)
        assert "trailing bytes" in refused(bad)


def test_every_bit_flip_is_refused(tmp_path):
    path, blob = small_catalog_file(tmp_path)
    bad = tmp_path / "flipped.catalog"
    for byte in range(len(blob)):  # every bit of every byte: the file is small
        for bit in range(8):
            data = bytearray(blob)
            data[byte] ^= 1 << bit
            bad.write_bytes(bytes(data))
            refused(bad, mmap=bit == 0)


def test_wrong_magic_and_other_files_are_refused(tmp_path):
    path, blob = small_catalog_file(tmp_path)
    bad = tmp_path / "bad.catalog"
    for data in (b"DSHINDEX" + blob[8:], b"not a catalog at all", bytes(4096),
                 np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()):
        bad.write_bytes(data)
        assert "not a dsh catalog file" in refused(bad)
    assert "no such catalog file" in refused(tmp_path / "missing.catalog")
    # a damaged catalog beside an index: the index load says so, naming the catalog
    index, _, _, _ = build_index(n=20)
    index.save(tmp_path / "i.idx")
    cpath = saved_catalog(index, tmp_path / "i.idx")
    cpath.write_bytes(cpath.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated") as e:
        HammingIndex.load(tmp_path / "i.idx")
    assert str(cpath) in one_line_error(e)


# -- memory mapping is lazy ----------------------------------------------------------------------------------------


def test_mmap_load_of_100k_paths_decodes_none_until_asked(tmp_path):
    n = 100_000
    index = HammingIndex(NBITS)
    paths = [f"/data/images/class_{i % 10}/img_{i:07d}.jpg" for i in range(n)]
    index.add(pool_codes(n), labels=np.arange(n) % 10, paths=paths)
    index.save(tmp_path / "big.idx")
    del paths

    # Python objects (a str per decoded path, a list to hold them) come from pymalloc blocks; numpy buffers
    # and memory maps do not. Loading must not build anything per item...
    gc.collect()
    before = sys.getallocatedblocks()
    loaded = HammingIndex.load(tmp_path / "big.idx", mmap=True)
    gc.collect()
    grown = sys.getallocatedblocks() - before
    assert grown < 5_000, f"loading allocated {grown} Python objects"
    assert isinstance(loaded.catalog.paths.blob, np.memmap) and isinstance(loaded.catalog.paths.offsets, np.memmap)
    # ...and this measure does see a decoded list of paths when one is built
    gc.collect()
    before = sys.getallocatedblocks()
    decoded = loaded.catalog.paths.tolist()
    assert sys.getallocatedblocks() - before > n
    assert decoded[12345] == "/data/images/class_5/img_0012345.jpg"
    del decoded
    assert loaded.lookup([99_999]) == [{"id": 99_999, "label": 9, "path": "/data/images/class_9/img_0099999.jpg"}]


# -- bad arguments -------------------------------------------------------------------------------------------------


def test_bad_columns_are_one_line_input_errors():
    bad_calls = [
        lambda: Catalog.from_columns(-1),
        lambda: Catalog.from_columns(2.5),
        lambda: Catalog.from_columns(3, labels=[1, 2]),
        lambda: Catalog.from_columns(2, labels=[0.5, 1.0]),
        lambda: Catalog.from_columns(2, labels=[0, -2]),
        lambda: Catalog.from_columns(2, labels=[[0, 2], [1, 0]]),  # multi-hot must be 0/1
        lambda: Catalog.from_columns(2, labels=np.zeros((2, 0), np.uint8)),
        lambda: Catalog.from_columns(2, labels=np.zeros((2, 2, 2), np.uint8)),
        lambda: Catalog.from_columns(2, labels=np.zeros((2, 3), np.uint8), class_names=["a", "b"]),
        lambda: Catalog.from_columns(2, paths=["a"]),
        lambda: Catalog.from_columns(1, paths="a"),
        lambda: Catalog.from_columns(2, paths=["a", None]),
        lambda: Catalog.from_columns(1, keys=[b"bytes"]),
        lambda: Catalog.from_columns(1, keys=["lone \udc80 surrogate"]),
        lambda: Catalog.from_columns(1, class_names="abc"),
        lambda: Catalog.from_columns(1, class_names=[1, 2]),
        lambda: Catalog.from_columns(1, labels=[1]).concat(Catalog.from_columns(1, labels=[[1, 0]])),
        lambda: Catalog.from_columns(1, class_names=["a"]).concat(Catalog.from_columns(1, class_names=["b"])),
        lambda: Catalog.from_columns(3).take([0, 3]),
        lambda: Catalog.from_columns(3).take([[0]]),
        lambda: Catalog.from_columns(2).save("/nonexistent/never", [1, 1], "u"),  # ids not ascending
    ]
    for call in bad_calls:
        with pytest.raises(InputError) as e:
            call()
        one_line_error(e)

    index = HammingIndex(NBITS)
    index.add(pool_codes(3), labels=[0, 1, 2], class_names=NAMES)
    before = index.lookup(index.ids)
    for call in [lambda: index.add(pool_codes(2), labels=[0]),
                 lambda: index.add(pool_codes(2), paths=["a", 3]),
                 lambda: index.add(pool_codes(2), class_names=["other", "names"]),
                 lambda: setattr(index, "catalog", Catalog.from_columns(2))]:
        with pytest.raises(InputError) as e:
            call()
        one_line_error(e)
    assert index.ntotal == 3 and index.lookup(index.ids) == before


def test_setting_and_dropping_a_catalog(tmp_path):
    index = HammingIndex(NBITS)
    index.add(pool_codes(4), ids=[8, 2, 6, 4])
    index.catalog = Catalog.from_columns(4, keys=["a", "b", "c", "d"])  # rows in ascending id order
    assert [r["key"] for r in index.lookup([2, 4, 6, 8])] == ["a", "b", "c", "d"]
    path = tmp_path / "s.idx"
    index.save(path)
    assert "catalog" in index.metadata
    with pytest.raises(TypeError):
        index.save(path, metadata={"not json": object()})
    assert HammingIndex.load(path).lookup([2])[0]["key"] == "a"  # the refused save left both files alone
    index.catalog = None
    index.save(path, metadata={})  # no catalog now, so the file must not name one
    assert "catalog" not in index.metadata
    assert HammingIndex.load(path).catalog is None


def test_catalog_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from dsh.index.catalog import Catalog\n"
        "c = Catalog.from_columns(2, labels=[0, 1], paths=['a', 'b']).take([1, 0]); c.record(0)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

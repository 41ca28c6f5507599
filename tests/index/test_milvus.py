"""Milvus as a search backend (dsh.index.milvus), each test twice: on Milvus Lite (a local file) and on a real
Milvus server (the ``milvus_server_uri`` fixture: an embedded Milvus 2.3 server on 127.0.0.1). Search, range
search and the catalog through Milvus equal HammingIndex's exactly (ties by id), on codes with many ties and on
clustered codes; remove and re-index; bad input (an unreachable server on 127.0.0.1 only, a collection of another
nbits, an existing one without consent) as one-line errors, with no half-written collection left behind; the CLI
end to end.

Skipped where the ``milvus`` extra (pymilvus, milvus-lite) is not installed, the server half where no server
starts (saying why). About 30 s on 2 cores for each half."""

from __future__ import annotations

import time

import numpy as np
import pytest

pymilvus = pytest.importorskip("pymilvus", reason="the milvus extra is not installed: pip install 'dsh[milvus]'")

import dsh.index.milvus as mi  # noqa: E402
from dsh.cli import main  # noqa: E402
from dsh.codes.codefile import CodeFile, save_codes  # noqa: E402
from dsh.errors import DataError, InputError  # noqa: E402
from dsh.index.flat import HammingIndex  # noqa: E402
from dsh.index.milvus import MilvusIndex  # noqa: E402
from dsh.runtime.searcher import Searcher  # noqa: E402

UNREACHABLE = "http://127.0.0.1:1"  # loopback, a port nothing listens on: the only address these tests contact


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def tie_data(rng):
    """16-bit codes drawn from 12 distinct codes: every distance is a big tie. Ids not 0..n-1, class labels
    (some unlabelled), class names, paths and keys."""
    n = 3000
    distinct = rng.integers(0, 256, (12, 2), dtype=np.uint8)
    codes = distinct[rng.integers(0, 12, n)]
    ids = np.sort(rng.choice(10 * n, n, replace=False))
    index = HammingIndex(16)
    index.add(codes, ids, labels=rng.integers(-1, 4, n), class_names=["ant", "bee", "cat", "dog"],
              paths=[f"/img/{i}.png" for i in range(n)], keys=[f"k{i}" for i in range(n)])
    queries = np.concatenate([distinct[:4], distinct[4:8] ^ np.array([[1, 4]], np.uint8),
                              rng.integers(0, 256, (4, 2), dtype=np.uint8)])
    return index, queries


def clustered_data(rng):
    """64-bit codes near 25 centres (each bit flipped with probability 0.04), multi-hot labels, paths."""
    n, nbits = 4000, 64
    centres = rng.integers(0, 256, (25, 8), dtype=np.uint8)
    codes = centres[rng.integers(0, 25, n)] ^ np.packbits(rng.random((n, nbits)) < 0.04, axis=1, bitorder="little")
    index = HammingIndex(nbits)
    labels = (rng.random((n, 5)) < 0.3).astype(np.uint8)
    index.add(codes, labels=labels, class_names=["a", "b", "c", "d", "e"], paths=[f"p/{i}.jpg" for i in range(n)])
    index.metadata["model"] = {"path": "/models/m.onnx", "fingerprint": "f" * 64}
    queries = np.concatenate([codes[:6], codes[6:12] ^ np.packbits(rng.random((6, nbits)) < 0.05, axis=1,
                                                                   bitorder="little")])
    return index, queries


@pytest.fixture(scope="module", params=["lite", "server"])
def db(request, tmp_path_factory):
    """Where the collections go: a Milvus Lite file, or a Milvus server's URI."""
    if request.param == "server":
        return request.getfixturevalue("milvus_server_uri")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (or needs setuptools<81): "
                        "pip install 'dsh[milvus]'")
    return str(tmp_path_factory.mktemp("milvus-lite-with-a-long-folder-name-is-fine") / "t.db")  # name <= 36


def is_server(uri: str) -> bool:
    return uri.startswith("http://")


@pytest.fixture(scope="module")
def written(db):
    """Both data sets written to Milvus once: {name: (HammingIndex, queries, MilvusIndex)}."""
    rng = np.random.default_rng(0)
    out = {}
    for name, make in (("ties", tie_data), ("clustered", clustered_data)):
        index, queries = make(rng)
        out[name] = (index, queries, MilvusIndex.from_index(index, db, name, overwrite=True, batch_size=1000))
    yield out
    for _, _, m in out.values():
        m.close()


@pytest.mark.parametrize("name", ["ties", "clustered"])
def test_search_and_range_search_equal_hamming_index(written, name):
    index, q, m = written[name]
    assert (m.nbits, m.ntotal) == (index.nbits, index.ntotal)
    for k in (1, 10, 100):
        D, I = m.search(q, k)
        assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == (len(q), k)
        assert same((D, I), index.search(q, k)), k
    for radius in (0, 2, 8):
        lims, D, I = m.range_search(q, radius)
        assert lims.dtype == np.int64 and D.dtype == np.int32 and I.dtype == np.int64
        assert same((lims, D, I), index.range_search(q, radius)), radius
    # more than the index holds: the tail is -1, as HammingIndex's
    assert same(m.search(q[:2], index.ntotal + 5), index.search(q[:2], index.ntotal + 5))


def test_overflowing_requests_are_gathered_exactly(written, monkeypatch):
    """Ties at the k-th distance and range results beyond what one Milvus request returns (16,384; made 40 here)
    are gathered a distance at a time, in split id ranges, and still equal HammingIndex's."""
    monkeypatch.setattr(mi, "TOPK_MAX", 40)
    buckets = []
    real = MilvusIndex._bucket

    def counted(self, *a, **k):
        buckets.append(k.get("lo", a[3] if len(a) > 3 else 0))
        return real(self, *a, **k)

    monkeypatch.setattr(MilvusIndex, "_bucket", counted)
    index, q, m = written["ties"]
    for k in (10, 100):
        assert same(m.search(q, k), index.search(q, k)), k
    assert buckets and max(buckets) > 0  # ties overflowed, and an id range was split
    for radius in (0, 2):
        assert same(m.range_search(q, radius), index.range_search(q, radius)), radius


@pytest.mark.parametrize("name", ["ties", "clustered"])
def test_catalog_comes_back_with_the_results(written, name):
    index, q, m = written[name]
    _, I = index.search(q, 10)
    ids = I.ravel()
    assert m.lookup(ids) == index.lookup(ids)
    assert np.array_equal(m.reconstruct(ids[:20]), index.reconstruct(ids[:20]))
    with pytest.raises(KeyError):
        m.lookup([int(index.ids.max()) + 1])
    assert m.metadata == index.metadata and m.class_names == index.catalog.class_names
    # the Searcher takes a MilvusIndex as it takes a HammingIndex: the same results, records and all
    a, b = Searcher(index), Searcher.open(m)
    for kw in ({"k": 10}, {"radius": 2}):
        assert [r.to_dict() for r in b.search_codes(q, **kw)] == [r.to_dict() for r in a.search_codes(q, **kw)]


def test_remove_add_and_reindex(db):
    rng = np.random.default_rng(1)
    index, q = tie_data(rng)
    m = MilvusIndex.from_index(index, db, "edits", overwrite=True)
    try:
        drop = np.concatenate([index.ids[::7], [index.ids[-1], 999_999_999]])  # the largest id and one not held
        assert m.remove(drop) == index.remove(drop)
        assert m.ntotal == index.ntotal
        assert same(m.search(q, 50), index.search(q, 50)) and same(m.range_search(q, 2), index.range_search(q, 2))
        # default ids: in a Lite file they continue after the largest held, as HammingIndex's; on a server
        # (several writers) they are random, new, and returned; a clash is refused and changes nothing
        new = rng.integers(0, 256, (5, 2), dtype=np.uint8)
        new_ids = m.add(new, labels=[0, 1, 2, 3, -1])
        if is_server(db):
            assert new_ids.dtype == np.int64 and len(set(new_ids.tolist()) | set(index.ids.tolist())) == \
                index.ntotal + 5 and new_ids.max() < 2**53
        else:
            assert new_ids.tolist() == (int(index.ids.max()) + 1 + np.arange(5)).tolist()
        index.add(new, new_ids, labels=[0, 1, 2, 3, -1])
        assert m.lookup(new_ids) == index.lookup(new_ids)
        with pytest.raises(InputError, match="already in the index"):
            m.add(new[:1], ids=index.ids[:1])
        with pytest.raises(InputError):
            m.add(np.zeros((1, 8), np.uint8))  # 64-bit codes into a 16-bit index
        assert m.ntotal == index.ntotal and same(m.search(q, 20), index.search(q, 20))
        # re-index: without consent refused and the collection intact; with overwrite replaced
        other = HammingIndex(16)
        other.add(rng.integers(0, 256, (300, 2), dtype=np.uint8))
        with pytest.raises(DataError, match="already exists"):
            MilvusIndex.from_index(other, db, "edits")
        assert m.ntotal == index.ntotal
        m.close()
        m = MilvusIndex.from_index(other, db, "edits", overwrite=True)
        assert m.ntotal == 300 and same(m.search(q, 10), other.search(q, 10))
        assert m.lookup([0]) == [{"id": 0}] and m.columns == ()
        m.reset()
        assert m.ntotal == 0 and same(m.search(q, 3), HammingIndex(16).search(q, 3))
    finally:
        m.drop()


def test_bad_input_one_line_errors(db, written):
    t = time.perf_counter()
    with pytest.raises(DataError, match="cannot reach Milvus at http://127.0.0.1:1") as e:
        MilvusIndex.open(UNREACHABLE, "ties", timeout=1)
    assert time.perf_counter() - t < 10 and "\n" not in str(e.value)
    for uri in ("x" * 40 + ".db", "codes.sqlite", "ftp://127.0.0.1/x", ""):
        with pytest.raises(InputError):
            MilvusIndex.open(uri, "ties")
    for name in ("1abc", "a-b", "dsh_meta", ""):
        with pytest.raises(InputError):
            MilvusIndex.open(db, name)
    with pytest.raises(DataError, match="holds 16-bit codes, not 64-bit"):
        MilvusIndex.open(db, "ties", nbits=64)
    with pytest.raises(DataError, match="no collection 'absent'"):
        MilvusIndex.open(db, "absent")
    index, q, m = written["ties"]
    with pytest.raises(InputError):
        m.search(np.zeros((1, 8), np.uint8), 3)  # queries of another width
    with pytest.raises(InputError):
        m.search(q, 0)
    with pytest.raises(InputError):
        m.range_search(q, -1)
    # a collection dsh did not write is neither read nor replaced
    c = m.client
    c.create_collection("foreign", dimension=4)
    try:
        with pytest.raises(DataError, match="not written by dsh"):
            MilvusIndex.open(db, "foreign")
        with pytest.raises(DataError, match="not written by dsh"):
            MilvusIndex.from_index(index, db, "foreign", overwrite=True)
        assert c.has_collection("foreign")
    finally:
        c.drop_collection("foreign")


def test_no_half_written_collection(db, monkeypatch):
    rng = np.random.default_rng(2)
    index, _ = tie_data(rng)
    c = pymilvus.MilvusClient(db)

    # a write that fails half way drops what it wrote
    real, calls = MilvusIndex._rows, []

    def failing(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise DataError("the server went away (simulated)")
        return real(self, *a, **k)

    monkeypatch.setattr(MilvusIndex, "_rows", failing)
    with pytest.raises(DataError, match="simulated"):
        MilvusIndex.from_index(index, db, "half", batch_size=1000)
    monkeypatch.setattr(MilvusIndex, "_rows", real)
    assert not c.has_collection("half")
    assert not c.query(mi.META_COLLECTION, ids=["half"], output_fields=["name"])

    # a write killed half way (here: never finished) is refused, until written again with consent
    unfinished = MilvusIndex._new(db, "killed", 16, overwrite=False, metadata={}, timeout=10, token=None,
                                  complete=False)
    unfinished.close()
    with pytest.raises(DataError, match="incomplete"):
        MilvusIndex.open(db, "killed")
    with pytest.raises(DataError, match="incomplete"):
        MilvusIndex.from_index(index, db, "killed")
    with MilvusIndex.from_index(index, db, "killed", overwrite=True) as m:
        assert m.ntotal == index.ntotal
        m.drop()
    c.close()


def test_cli_index_and_search(db, tmp_path, capsys):
    rng = np.random.default_rng(3)
    index, q = tie_data(rng)
    cat = index.catalog
    db_npz, q_npz = tmp_path / "db.npz", tmp_path / "q.npz"
    save_codes(db_npz, CodeFile(np.asarray(index.codes), 16, labels=np.asarray(cat.labels),
                                paths=np.array(cat.paths.tolist()), class_names=np.array(cat.class_names)))
    save_codes(q_npz, CodeFile(q, 16))
    target = ["--store", "milvus", "--uri", db, "--collection", "cli"]
    assert main(["index", "--codes", str(db_npz), "--out", str(tmp_path / "db.dshidx")]) == 0
    assert main(["index", "--codes", str(db_npz), *target, "--overwrite"]) == 0
    assert "into Milvus collection 'cli'" in capsys.readouterr().out
    for how in (["-k", "10"], ["--radius", "2"]):
        assert main(["search", "--index", str(tmp_path / "db.dshidx"), "--codes", str(q_npz), "--json", *how]) == 0
        want = capsys.readouterr().out
        assert main(["search", *target, "--codes", str(q_npz), "--json", *how]) == 0
        assert capsys.readouterr().out == want

    def error(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dsh: error: ") and len(err.splitlines()) == 1, err
        return err

    assert "already exists" in error(["index", "--codes", str(db_npz), *target])
    assert "cannot reach Milvus" in error(["search", "--store", "milvus", "--uri", UNREACHABLE, "--collection", "cli",
                                           "--hex", "00FF", "--timeout", "1"])
    other = tmp_path / "other.npz"
    save_codes(other, CodeFile(np.zeros((3, 1), np.uint8), 8))
    assert "holds 16-bit codes" in error(["index", "--codes", str(other), *target, "--append"])
    assert "8-bit codes" in error(["search", *target, "--codes", str(other)])
    assert "needs --uri" in error(["search", "--store", "milvus", "--hex", "00FF"])
    assert "is for --store milvus" in error(["index", "--codes", str(db_npz), "--out", "x.dshidx", "--uri", db])
    # appending gives new ids (counting on in a Lite file, random on a server); the collection still searches as
    # the index with both halves would
    assert main(["index", "--codes", str(db_npz), *target, "--append"]) == 0
    capsys.readouterr()
    n = index.ntotal
    both = HammingIndex(16)
    both.add(np.asarray(index.codes))
    with MilvusIndex.open(db, "cli") as m:
        assert m.ntotal == 2 * n
        new = m.ids[~np.isin(m.ids, np.arange(n))]
        assert new.size == n
        if not is_server(db):
            assert new.tolist() == list(range(n, 2 * n))
        again = m.reconstruct(new)
        assert np.array_equal(np.unique(again, axis=0, return_counts=True)[1],
                              np.unique(np.asarray(index.codes), axis=0, return_counts=True)[1])
        both.add(again, new)
        assert same(m.search(q, 30), both.search(q, 30))
        m.drop()


def test_appending_an_index_keeps_one_model_and_one_code_length(db):
    rng = np.random.default_rng(4)
    index, q = tie_data(rng)
    index.metadata["model"] = {"path": "/models/a.onnx", "fingerprint": "a" * 64}
    with MilvusIndex.from_index(index, db, "append", overwrite=True) as m:
        other = HammingIndex(16)
        other.add(np.asarray(index.codes[:5]))
        other.metadata["model"] = {"path": "/models/b.onnx", "fingerprint": "b" * 64}
        with pytest.raises(InputError, match="holds codes of another model .fingerprint aaaaaaaaaaaa vs bbbbbbbbbbbb"):
            m.add_index(other)
        short = HammingIndex(8)
        short.add(np.zeros((2, 1), np.uint8))
        with pytest.raises(InputError, match="holds 16-bit codes; these are 8-bit"):
            m.add_index(short)
        assert m.ntotal == index.ntotal  # nothing went in
        # the same model: appended with new ids after the largest, its catalog with it; the collection then
        # searches as one HammingIndex holding both
        more = HammingIndex(16)
        more.add(np.asarray(index.codes[:5]), labels=[0, 1, 2, 3, -1], class_names=["ant", "bee", "cat", "dog"],
                 paths=[f"/more/{i}.png" for i in range(5)], keys=[f"m{i}" for i in range(5)])
        more.metadata["model"] = dict(index.metadata["model"])
        assert m.add_index(more) == 5
        new_ids = m.ids[~np.isin(m.ids, index.ids)]
        new_ids = new_ids[np.argsort([r["path"] for r in m.lookup(new_ids)])]
        if not is_server(db):
            assert new_ids.tolist() == (int(index.ids.max()) + 1 + np.arange(5)).tolist()
        assert [r["path"] for r in m.lookup(new_ids)] == [f"/more/{i}.png" for i in range(5)]
        assert [r.get("class") for r in m.lookup(new_ids)] == ["ant", "bee", "cat", "dog", None]
        both = HammingIndex(16)
        both.add(np.asarray(index.codes), np.asarray(index.ids))
        both.add(np.asarray(index.codes[:5]), new_ids)
        assert same(m.search(q, 40), both.search(q, 40))
        m.drop()


def test_cli_images_and_search_by_image(db, tmp_path, capsys, digits_run):
    """An image folder indexed into Milvus with a run; searching by image uses the model the collection records,
    and answers as the index file does."""
    from conftest import write_digit_folder

    files = write_digit_folder(tmp_path / "imgs", 40)
    run = ["--images", str(tmp_path / "imgs"), "--run", str(digits_run), "--quiet"]
    target = ["--store", "milvus", "--uri", db, "--collection", "imgs"]
    assert main(["index", *run, "--out", str(tmp_path / "imgs.dshidx")]) == 0
    assert main(["index", *run, *target, "--overwrite"]) == 0
    capsys.readouterr()
    outputs = []
    for where in (["--index", str(tmp_path / "imgs.dshidx")], target):
        assert main(["search", *where, "--image", str(files[0]), str(files[7]), "-k", "5", "--json"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and str(files[0].resolve()) in outputs[1]
    with MilvusIndex.open(db, "imgs") as m:
        assert m.metadata["model"]["fingerprint"] and m.columns == ("labels", "paths")
        m.drop()


def test_codes_not_a_multiple_of_8_bits(db):
    """dsh's packed bytes go in as they are (least significant bit first, padding bits 0): a 12-bit code is a
    16-dimension binary vector, and the distances are dsh's."""
    rng = np.random.default_rng(4)
    codes = np.packbits(rng.random((500, 12)) < 0.5, axis=1, bitorder="little")
    index = HammingIndex(12)
    index.add(codes)
    with MilvusIndex.from_index(index, db, "twelve", overwrite=True) as m:
        assert m.nbits == 12 and m.client.describe_collection("twelve")["fields"][1]["params"]["dim"] == 16
        q = np.packbits(rng.random((6, 12)) < 0.5, axis=1, bitorder="little")
        assert same(m.search(q, 25), index.search(q, 25)) and same(m.range_search(q, 3), index.range_search(q, 3))
        with pytest.raises(InputError, match="bits set past nbits"):
            m.search(np.full((1, 2), 255, np.uint8), 1)
        m.drop()

"""Every index backend answers alike: one battery (k = 1, 10, 100; radius 0, 2, 8; heavy ties; the catalog after a
remove) run on each backend that is installed, compared with a brute-force popcount reference and so with each
other. Backends: HammingIndex's scan (numba, and faiss's engine where faiss is installed), HammingIndex with
multi-index hashing for range search, a faiss binary index file opened by open_index, a Milvus Lite collection
(skipped, with the reason, without the milvus extra) and a collection on a real Milvus server (the
``milvus_server_uri`` fixture; skipped, with the reason, where none starts). Then open_index's refusals, and dsh
serve over a Milvus collection answering as over the index file."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from dsh.errors import DataError, InputError
from dsh.index import HammingIndex, Index, IndexSpec, open_index, write_index
from dsh.index.base import SearchThenLookup

HAVE_FAISS = importlib.util.find_spec("faiss") is not None


def _have_milvus() -> str | None:
    """None where pymilvus and Milvus Lite import, else why not."""
    try:
        import pymilvus  # noqa: F401
    except ImportError:
        return "the milvus extra is not installed: pip install 'dsh[milvus]'"
    try:
        import milvus_lite  # noqa: F401
    except ImportError:
        return "milvus-lite is not installed (or needs setuptools<81): pip install 'dsh[milvus]'"
    return None


NO_MILVUS = _have_milvus()
KS = (1, 10, 100)
RADII = (0, 2, 8)


# -- the data and the reference ------------------------------------------------------------------------------------


def tie_data(rng):
    """16-bit codes drawn from 9 distinct codes (every distance a big tie), ids spread out (not 0..n-1), a catalog
    with class labels (some unlabelled), paths and keys."""
    n = 1500
    distinct = rng.integers(0, 256, (9, 2), dtype=np.uint8)
    codes = distinct[rng.integers(0, 9, n)]
    ids = np.sort(rng.choice(20 * n, n, replace=False))
    index = HammingIndex(16)
    index.add(codes, ids, labels=rng.integers(-1, 3, n), class_names=["ant", "bee", "cat"],
              paths=[f"/img/{i}.png" for i in range(n)], keys=[f"k{i}" for i in range(n)])
    queries = np.concatenate([distinct[:3], distinct[3:6] ^ np.array([[1, 0]], np.uint8),
                              rng.integers(0, 256, (3, 2), dtype=np.uint8)])
    return index, queries


def clustered_data(rng):
    """40-bit codes near 20 centres, ids 0..n-1, multi-hot labels and paths."""
    n, nbits = 2000, 40
    centres = rng.integers(0, 256, (20, 5), dtype=np.uint8)
    flips = np.packbits(rng.random((n, nbits)) < 0.05, axis=1, bitorder="little")
    codes = centres[rng.integers(0, 20, n)] ^ flips
    index = HammingIndex(nbits)
    index.add(codes, labels=(rng.random((n, 4)) < 0.3).astype(np.uint8), class_names=["a", "b", "c", "d"],
              paths=[f"p/{i}.jpg" for i in range(n)])
    index.metadata["model"] = {"path": "/models/m.onnx", "fingerprint": "f" * 64}
    queries = np.concatenate([codes[:5], codes[5:10] ^ np.packbits(rng.random((5, nbits)) < 0.05, axis=1,
                                                                   bitorder="little")])
    return index, queries


def distances(q: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Brute force: popcount of every XOR, ``int64[nq, n]``."""
    x = q[:, None, :] ^ codes[None, :, :]
    return np.unpackbits(x, axis=2).sum(axis=2).astype(np.int64)


def reference_knn(q, codes, ids, k):
    dist = distances(q, codes)
    D = np.full((len(q), k), -1, np.int32)
    I = np.full((len(q), k), -1, np.int64)
    for j, row in enumerate(dist):
        order = np.lexsort((ids, row))[:k]
        D[j, : order.size], I[j, : order.size] = row[order], ids[order]
    return D, I


def reference_range(q, codes, ids, radius):
    dist = distances(q, codes)
    lims, Ds, Is = [0], [], []
    for row in dist:
        sel = np.flatnonzero(row <= radius)
        sel = sel[np.lexsort((ids[sel], row[sel]))]
        Ds.append(row[sel])
        Is.append(ids[sel])
        lims.append(lims[-1] + sel.size)
    return np.array(lims, np.int64), np.concatenate(Ds).astype(np.int32), np.concatenate(Is).astype(np.int64)


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


# -- the backends --------------------------------------------------------------------------------------------------


class MIHRange(SearchThenLookup):
    """A HammingIndex whose range searches go through its multi-index hashing tables (range_search_records
    too)."""

    def __init__(self, index: HammingIndex):
        self._index = index

    def range_search(self, q, radius):
        return self._index.range_search(q, radius, method="mih")

    def __getattr__(self, name):
        return getattr(self._index, name)


def subset(index: HammingIndex, n: int) -> HammingIndex:
    """A copy of ``index``'s first ``n`` items, catalog and metadata with them."""
    out = HammingIndex(index.nbits)
    cat = index.catalog.take(np.arange(n))
    out.add(np.asarray(index.codes[:n]), np.asarray(index.ids[:n]), labels=cat.labels, paths=cat.paths,
            keys=cat.keys, class_names=cat.class_names or None)
    out.metadata = dict(index.metadata)
    return out


def copy_of(index: HammingIndex, engine: str = "auto") -> HammingIndex:
    out = HammingIndex(index.nbits, engine=engine)
    cat = index.catalog
    out.add(np.asarray(index.codes), np.asarray(index.ids), labels=cat.labels, paths=cat.paths, keys=cat.keys,
            class_names=cat.class_names or None)
    out.metadata = dict(index.metadata)
    return out


BACKENDS = ["flat", "mih", "faiss-engine", "faiss-file", "faiss-shuffled", "faiss-ivf", "milvus", "milvus-server"]
READ_ONLY = ("faiss-file", "faiss-shuffled", "faiss-ivf")  # faiss files, searched through FaissBinaryIndex


@pytest.fixture(scope="module")
def milvus_db(tmp_path_factory):
    if NO_MILVUS:
        pytest.skip(NO_MILVUS)
    return str(tmp_path_factory.mktemp("agreement") / "agree.db")


def available(name: str, request) -> bool:
    """Whether backend ``name`` can be had here (for the tests that go through all of them in one)."""
    if name == "milvus":
        return NO_MILVUS is None
    if name == "milvus-server":
        try:
            request.getfixturevalue("milvus_server_uri")
        except pytest.skip.Exception:
            return False
        return True
    return HAVE_FAISS or not name.startswith("faiss")


def open_backend(name: str, index: HammingIndex, where, request):
    """``index``'s codes and catalog in backend ``name``: a fresh copy (each test may change it), opened through
    open_index where it is a file or a collection."""
    if name == "flat":
        return copy_of(index)
    if name == "mih":
        return MIHRange(copy_of(index))
    if name.startswith("faiss") and not HAVE_FAISS:
        pytest.skip("faiss is not installed: pip install 'dsh[faiss]'")
    if name == "faiss-engine":
        return copy_of(index, engine="faiss")
    if name in READ_ONLY:
        from dsh.index import write_faiss

        path = where / f"{name}.faissbin"
        if name == "faiss-file":  # as dsh index --format faiss writes it
            write_index(index, path, format="faiss")
        elif name == "faiss-shuffled":  # made elsewhere: ids added out of order, so faiss's own ties are not by id
            order = np.random.default_rng(1).permutation(index.ntotal)
            write_faiss(path, np.asarray(index.codes)[order], index.nbits, ids=np.asarray(index.ids)[order])
        else:  # inverted lists, every one probed: exhaustive, so exact
            write_faiss(path, index, kind="ivf", nlist=8, nprobe=8)
        return open_index(path, nbits=index.nbits)
    db = request.getfixturevalue("milvus_db" if name == "milvus" else "milvus_server_uri")
    collection = "c_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:60]
    write_index(index, IndexSpec(db, collection), overwrite=True)
    return open_index(db, collection=collection)


DATA = {"ties": tie_data, "clustered": clustered_data}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {name: make(rng) for name, make in DATA.items()}


# -- the battery ---------------------------------------------------------------------------------------------------


def test_the_data_has_matches_and_ties(data):
    """Nothing below passes vacuously: radius 0 finds codes, k = 10 cuts through a tie, radius 8 finds many."""
    for name, (index, q) in data.items():
        codes, ids = np.asarray(index.codes), np.asarray(index.ids)
        lims, D, _ = reference_range(q, codes, ids, 0)
        assert (np.diff(lims) > 0).sum() >= 3, name
        assert reference_range(q, codes, ids, 8)[0][-1] > 10 * len(q), name
        Dk, _ = reference_knn(q, codes, ids, 10)
        dist = distances(q, codes)
        cut = [(row <= Dk[j, -1]).sum() > 10 for j, row in enumerate(dist)]  # more codes at the k-th distance
        assert sum(cut) >= 3, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", sorted(DATA))
def test_search_and_range_search_equal_brute_force(backend, which, data, tmp_path, request):
    index, q = data[which]
    b = open_backend(backend, index, tmp_path, request)
    assert isinstance(b, Index)
    assert b.nbits == index.nbits and b.ntotal == index.ntotal
    codes, ids = np.asarray(index.codes), np.asarray(index.ids)
    for k in KS:
        assert same(b.search(q, k), reference_knn(q, codes, ids, k)), (backend, which, k)
    for r in RADII:
        assert same(b.range_search(q, r), reference_range(q, codes, ids, r)), (backend, which, r)
    # the results with their records in one call: the same hits, laid out as a range search's, each with the
    # record its lookup gives
    for k in KS:
        lims, D, I, records = b.search_records(q, k)
        Dk, Ik = reference_knn(q, codes, ids, k)
        held = Ik >= 0
        assert np.array_equal(np.diff(lims), held.sum(axis=1)) and same((D, I), (Dk[held], Ik[held])), (backend, k)
        assert records == b.lookup(I), (backend, which, k)
    for r in RADII:
        *got, records = b.range_search_records(q, r)
        assert same(got, reference_range(q, codes, ids, r)) and records == b.lookup(got[2]), (backend, which, r)
    # the shared checks, in every backend's words
    for bad in (0, -1, 2.5, True, "3"):
        for call in (b.search, b.search_records):
            with pytest.raises(InputError, match="k must be an integer >= 1"):
                call(q, bad)
    for bad in (-1, 1.5, False):
        for call in (b.range_search, b.range_search_records):
            with pytest.raises(InputError, match="radius must be an integer >= 0"):
                call(q, bad)
    # every id a search returns has a record, its catalog's where the backend keeps one
    _, I = b.search(q, 10)
    records = b.lookup(I[I >= 0])
    assert [r["id"] for r in records] == I[I >= 0].tolist()
    if b.catalog is not None:
        pos = np.searchsorted(ids, I[I >= 0])
        assert records == [{"id": int(i), **index.catalog.record(int(p))} for i, p in zip(I[I >= 0], pos)]
    b.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_catalog_after_remove(backend, data, tmp_path, request):
    """Remove some codes (among them a query's nearest and a whole block of one tie): search, range search,
    lookup and the catalog then answer as brute force over what is left; a read-only backend refuses."""
    index, q = data["ties"]
    b = open_backend(backend, index, tmp_path, request)
    ids = np.asarray(index.ids)
    gone = np.concatenate([b.search(q[:2], 5)[1].ravel(), ids[::7], [10**9]])  # one id that was never held
    if backend in READ_ONLY:
        with pytest.raises(InputError, match="read-only"):
            b.remove(gone)
        with pytest.raises(InputError, match="read-only"):
            b.add(np.zeros((1, 2), np.uint8))
        assert b.catalog is None and b.lookup(ids[:3]) == [{"id": int(i)} for i in ids[:3]]
        with pytest.raises(KeyError):
            b.lookup([10**9])
        return
    held = np.unique(gone[np.isin(gone, ids)])
    assert b.remove(gone) == held.size and held.size > 200
    keep = ~np.isin(ids, held)
    codes_left, ids_left = np.asarray(index.codes)[keep], ids[keep]
    cat_left = index.catalog.take(np.flatnonzero(keep))
    assert b.ntotal == keep.sum()
    for k in KS:
        assert same(b.search(q, k), reference_knn(q, codes_left, ids_left, k)), (backend, k)
    for r in RADII:
        assert same(b.range_search(q, r), reference_range(q, codes_left, ids_left, r)), (backend, r)
    cat = b.catalog
    assert np.array_equal(cat.labels, cat_left.labels) and cat.paths.tolist() == cat_left.paths.tolist()
    assert cat.keys.tolist() == cat_left.keys.tolist() and cat.class_names == cat_left.class_names
    some = ids_left[::50]
    assert b.lookup(some) == [{"id": int(i), **cat_left.record(j)} for j, i in zip(range(0, len(ids_left), 50),
                                                                                   some)]
    with pytest.raises(KeyError):
        b.lookup(held[:1])
    # new codes take new ids (after the largest held, but on a Milvus server, which several clients may write
    # at once: random ones, which add returns), and are found
    got = b.add(np.asarray(index.codes[:2]), labels=[2, -1], paths=["/new/0.png", "/new/1.png"], keys=["n0", "n1"])
    if backend == "milvus-server":
        new = np.asarray(got)
        assert new.shape == (2,) and not np.isin(new, ids_left).any() and new.min() >= 0
    else:
        new = int(ids_left.max()) + 1 + np.arange(2)
    assert [r["path"] for r in b.lookup(new)] == ["/new/0.png", "/new/1.png"]
    lims, _, I = b.range_search(np.asarray(index.codes[:1]), 0)
    assert new[0] in I.tolist()
    b.close()


def test_backends_equal_each_other(data, tmp_path, request):
    """The arrays of every available backend side by side: all equal (the reference aside)."""
    index, q = data["clustered"]
    answers = {}
    for name in BACKENDS:
        if not available(name, request):
            continue
        b = open_backend(name, index, tmp_path, request)
        answers[name] = [b.search(q, k) for k in KS] + [b.range_search(q, r) for r in RADII]
        b.close()
    assert len(answers) >= 2
    first, *rest = answers.values()
    for name, got in zip(list(answers)[1:], rest):
        assert all(same(a, b) for a, b in zip(first, got)), name


def test_searcher_over_every_backend(data, tmp_path, request):
    """Searcher takes any Index: the same neighbours (and the same records where there is a catalog)."""
    from dsh.runtime.searcher import Searcher

    index, q = data["ties"]
    want = [r.to_dict() for r in Searcher(copy_of(index)).search_codes(q, k=12)]
    want_r = [r.to_dict() for r in Searcher(copy_of(index)).search_codes(q, k=None, radius=2)]
    for name in BACKENDS[1:]:
        if not available(name, request):
            continue
        b = open_backend(name, index, tmp_path, request)
        s = Searcher(b)
        got = [r.to_dict() for r in s.search_codes(q, k=12)]
        got_r = [r.to_dict() for r in s.search_codes(q, k=None, radius=2)]
        if b.catalog is None:  # a faiss file: ids and distances only
            strip = [{**r, "results": [{"id": n["id"], "distance": n["distance"]} for n in r["results"]]}
                     for r in want]
            strip_r = [{**r, "results": [{"id": n["id"], "distance": n["distance"]} for n in r["results"]]}
                       for r in want_r]
            assert got == strip and got_r == strip_r, name
        else:
            assert got == want and got_r == want_r, name
        b.close()


# -- opening -------------------------------------------------------------------------------------------------------


def test_open_index_tells_files_apart_and_refuses_in_one_line(data, tmp_path):
    index, q = data["ties"]
    index.save(tmp_path / "db.dshidx")
    opened = open_index(tmp_path / "db.dshidx")
    assert isinstance(opened, HammingIndex) and same(opened.search(q, 10), index.search(q, 10))
    with pytest.raises(DataError, match="holds 16-bit codes, not 8-bit"):
        open_index(tmp_path / "db.dshidx", nbits=8)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "cut.dshidx").write_bytes((tmp_path / "db.dshidx").read_bytes()[:100])
    for path, words in ((tmp_path / "notes.txt", "not an index file"), (tmp_path / "missing.dshidx", "no such"),
                        (tmp_path / "cut.dshidx", "cut.dshidx")):
        with pytest.raises(DataError, match=words) as e:
            open_index(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="name the collection"):
        open_index(tmp_path / "codes.db")
    with pytest.raises(InputError, match="not both"):
        open_index(IndexSpec(tmp_path / "codes.db", "c"), collection="c")
    if HAVE_FAISS:
        write_index(index, tmp_path / "db.faissbin", format="faiss")
        (tmp_path / "cut.faissbin").write_bytes((tmp_path / "db.faissbin").read_bytes()[:40])
        with pytest.raises(DataError, match="not a readable faiss binary index") as e:
            open_index(tmp_path / "cut.faissbin")
        assert str(tmp_path / "cut.faissbin") in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(InputError, match="16 dimensions, which 8-bit codes are not"):
            open_index(tmp_path / "db.faissbin", nbits=8)
        assert open_index(tmp_path / "db.faissbin", nbits=12).nbits == 12  # 12 bits are kept in 16 dimensions


def test_index_spec_from_flags():
    assert IndexSpec.from_flags("serve", index="db.dshidx") == IndexSpec("db.dshidx")
    spec = IndexSpec.from_flags("serve", store="milvus", uri="x.db", collection="c", timeout=3.0)
    assert spec == IndexSpec("x.db", "c", 3.0) and str(spec) == "Milvus collection 'c' in x.db"
    for kwargs, words in (({"store": "milvus", "uri": "x.db"}, "serve --store milvus needs --uri"),
                          ({"store": "milvus", "uri": "x.db", "collection": "c", "index": "i"}, "--index is an"),
                          ({}, "serve needs --index FILE"), ({"index": "i", "uri": "x.db"}, "--uri is for")):
        with pytest.raises(InputError, match=words):
            IndexSpec.from_flags("serve", **kwargs)


@pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed: pip install 'dsh[faiss]'")
def test_dsh_search_reads_a_faiss_file_as_the_index_file(data, tmp_path, capsys):
    """`dsh index --format faiss` then `dsh search --index FILE.faissbin`: the same neighbours and distances as
    the dsh index file (a faiss file has no catalog, so no labels or paths)."""
    from dsh.cli import main
    from dsh.codes.codefile import CodeFile, save_codes

    index, q = data["ties"]
    save_codes(tmp_path / "db.npz", CodeFile(np.asarray(index.codes), 16))
    save_codes(tmp_path / "q.npz", CodeFile(q, 16))
    out = {}
    for name, flags in (("dsh", []), ("faiss", ["--format", "faiss"])):
        path = str(tmp_path / f"db.{name}")
        assert main(["index", "--codes", str(tmp_path / "db.npz"), "--out", path, *flags]) == 0
        for how in (["-k", "25"], ["--radius", "2"]):
            assert main(["search", "--index", path, "--codes", str(tmp_path / "q.npz"), "--json", *how]) == 0
            out[name, how[0]] = json.loads(capsys.readouterr().out.splitlines()[-1])
    for how in ("-k", "--radius"):
        assert out["dsh", how] == out["faiss", how]
        assert sum(len(r["results"]) for r in out["dsh", how]["queries"]) > len(q)


# -- dsh serve over Milvus -----------------------------------------------------------------------------------------


def ask(app, files) -> dict:
    """The answers of the app to a fixed set of requests: info, searches by image (k and radius) and by hex, an
    item, a missing item, health."""
    from fastapi.testclient import TestClient

    c = TestClient(app)
    out = {"info": c.get("/api/info").json(), "healthz": c.get("/healthz").json()}
    for f in files[:6]:
        for query in ("k=1", "k=10", "k=60", "radius=0", "radius=2"):
            r = c.post(f"/api/search?{query}", files={"image": (f.name, f.read_bytes(), "image/png")})
            out[f"{f.name} {query}"] = (r.status_code, r.json())
        hexed = c.post("/api/search?k=15", json={"hex": r.json()["query"]["hex"]})
        out[f"{f.name} hex"] = (hexed.status_code, hexed.json())
    first = out[f"{files[0].name} k=1"][1]["results"][0]["id"]
    for item in (first, 999_999):
        r = c.get(f"/api/items/{item}")
        out[f"item {item}"] = (r.status_code, r.json())
    return out


@pytest.fixture(scope="module")
def digit_index(tmp_path_factory, digits_run):
    """60 digit images and the index file `dsh index` makes of them with a run: ``(folder, index file, images)``."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
    from conftest import write_digit_folder

    from dsh.cli import main

    root = tmp_path_factory.mktemp("serve-milvus")
    files = write_digit_folder(root / "imgs", 60)
    index = root / "db.dshidx"
    assert main(["index", "--images", str(root / "imgs"), "--run", str(digits_run), "--out", str(index),
                 "--quiet"]) == 0
    return root / "imgs", index, files


@pytest.fixture(scope="module")
def served_pair(digit_index, digits_run, milvus_db):
    """`dsh serve` over an index file of 60 digit images made with a run, and over the same items in a Milvus
    Lite collection (`--store milvus --uri --collection`, the flags of dsh search): uvicorn.run is replaced by a
    function that puts the app through :func:`ask` while the command holds it, so no socket is opened."""
    import uvicorn

    from dsh.cli import main

    images, index, files = digit_index
    milvus = ["--store", "milvus", "--uri", milvus_db, "--collection", "served"]
    assert main(["index", "--images", str(images), "--run", str(digits_run), *milvus, "--overwrite",
                 "--quiet"]) == 0
    answers = {}
    real_run = uvicorn.run
    try:
        for name, where in (("file", ["--index", str(index)]), ("milvus", milvus)):
            uvicorn.run = lambda app, name=name, **kw: answers.__setitem__(name, ask(app, files))
            assert main(["serve", *where, "--quiet"]) == 0
    finally:
        uvicorn.run = real_run
    return answers


def test_serve_over_milvus_answers_as_over_the_file(served_pair):
    assert set(served_pair) == {"file", "milvus"}
    file, milvus = served_pair["file"], served_pair["milvus"]
    assert file == milvus
    assert file["info"]["index"]["items"] == 60 and file["info"]["class_table"] and file["info"]["index"]["has_catalog"]
    assert file["healthz"] == {"status": "ok", "items": 60}
    searches = [v for k, v in file.items() if " k=" in k or " radius=" in k or k.endswith(" hex")]
    assert all(status == 200 for status, _ in searches)
    assert sum(len(body["results"]) for _, body in searches) > 6 * 60  # the searches found items
    assert any(file[k][1]["results"] for k in file if k.endswith("radius=0"))
    found = [v for k, v in file.items() if k.startswith("item ")]
    assert found[0][0] == 200 and found[0][1]["path"].endswith(".png") and found[1][0] == 404


def milvus_requests(monkeypatch) -> list[str]:
    """From now on, the name of every pymilvus ``MilvusClient`` method called (each one a request to Milvus), in
    order, in a list that the caller may clear."""
    import inspect

    import pymilvus

    calls: list[str] = []
    for name in dir(pymilvus.MilvusClient):
        method = inspect.getattr_static(pymilvus.MilvusClient, name)
        if name.startswith("_") or not inspect.isfunction(method):
            continue  # helpers, and static or class methods (a schema, index parameters: no request)

        def spy(self, *args, _name=name, _method=method, **kwargs):
            calls.append(_name)
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(pymilvus.MilvusClient, name, spy)
    return calls


@pytest.mark.parametrize("backend", ["milvus", "milvus-server"])
def test_a_service_search_is_one_milvus_request(backend, digit_index, tmp_path, request, monkeypatch):
    """Each search through a writable `dsh serve` over a Milvus collection (Milvus Lite, and a server where one
    starts) asks Milvus once: a search that brings back its hits' records, no count before it and no lookup
    after it; and it answers as the service over the index file: the same hits with the same records. The index
    holds 20 items, fewer than a k-NN's first request asks for (k + 32), so ties never call for a second search
    (test_searcher_asks_milvus_only_to_search has ties that do)."""
    from fastapi.testclient import TestClient

    from dsh.runtime.searcher import Searcher
    from dsh.serve.app import ServeSettings, create_app

    _, path, files = digit_index
    with open_index(path) as full:
        small = subset(full, 20)
    small.save(tmp_path / "small.dshidx")
    db = request.getfixturevalue("milvus_db" if backend == "milvus" else "milvus_server_uri")
    spec = IndexSpec(db, "one_request")
    write_index(small, spec, overwrite=True)
    calls = milvus_requests(monkeypatch)
    answers: dict[str, dict] = {}
    for name, where in (("file", tmp_path / "small.dshidx"), ("milvus", spec)):
        with Searcher.open(where) as searcher:
            c = TestClient(create_app(searcher, ServeSettings(writable=True, data_dir=str(tmp_path / name))))
            for f in files[:5]:
                for query in ("k=1", "k=10", "radius=2"):
                    calls.clear()
                    r = c.post(f"/api/search?{query}", files={"image": (f.name, f.read_bytes(), "image/png")})
                    answers.setdefault(name, {})[f"{f.name} {query}"] = (r.status_code, r.json(), list(calls))
                calls.clear()
                r = c.post("/api/search?k=7", json={"hex": r.json()["query"]["hex"]})
                answers[name][f"{f.name} hex"] = (r.status_code, r.json(), list(calls))
    with open_index(spec) as index:
        index.drop()
    assert answers["file"].keys() == answers["milvus"].keys()
    for what, (status, body, asked) in answers["milvus"].items():
        assert status == 200 and asked == ["search"], what
        assert body == answers["file"][what][1], what
        assert answers["file"][what][2] == []  # the file index asks no one
    found = [n for _, body, _ in answers["file"].values() for n in body["results"]]
    assert len(found) > 5 * 12 and all(n["path"].endswith(".png") and "label" in n for n in found)
    assert any(body["results"] for what, (_, body, _) in answers["file"].items() if "radius" in what)


def test_searcher_asks_milvus_only_to_search(data, tmp_path, request, monkeypatch):
    """With heavy ties (a k-NN's ties overflow its first request, so it asks again with a larger limit) and range
    searches, a Searcher over Milvus sends searches only, each bringing its hits' records: never a lookup."""
    from dsh.runtime.searcher import Searcher

    index, q = data["ties"]
    want = {(k, r): [x.to_dict() for x in Searcher(copy_of(index)).search_codes(q, k=k, radius=r)]
            for k, r in ((12, None), (1000, None), (None, 2))}
    ran = 0
    for name in ("milvus", "milvus-server"):
        if not available(name, request):
            continue
        b = open_backend(name, index, tmp_path, request)
        calls = milvus_requests(monkeypatch)
        for (k, r), expected in want.items():
            calls.clear()
            assert [x.to_dict() for x in Searcher(b).search_codes(q, k=k, radius=r)] == expected, (name, k, r)
            assert calls and set(calls) == {"search"}, (name, k, r, calls)
            if k == 12:
                assert len(calls) > 1  # the ties did overflow the first request
        monkeypatch.undo()
        b.close()
        ran += 1
    if not ran:
        pytest.skip(NO_MILVUS or "no Milvus here")


def test_no_front_end_imports_a_backend():
    """The command line and the service name a place (open_index, IndexSpec, Searcher); only dsh.index chooses
    the backend. Every import counts, those inside functions too."""
    import ast
    from pathlib import Path

    import dsh

    src = Path(dsh.__file__).parent
    backends = {"flat", "milvus", "faiss_file", "mih", "kernels"}
    checked = 0
    for part in ("cli", "serve"):
        for path in (src / part).rglob("*.py"):
            checked += 1
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    parts = name.split(".")
                    assert not ("index" in parts and parts[-1] in backends), f"{path.name} imports {name}"
                    assert not {"pymilvus", "faiss"} & set(parts), f"{path.name} imports {name}"
    assert checked >= 3

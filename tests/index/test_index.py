"""HammingIndex against a brute-force popcount with a stable sort, on data full of exact ties."""

import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from dsh import HammingIndex
from dsh.errors import DataError
from dsh.index.mih import prefer_mih

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

NBITS = [8, 12, 32, 64, 128, 256]
ENGINES = ["numba", "numpy"] + (["faiss"] if HAVE_FAISS else [])
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed (pip install faiss-cpu)")


# -- the slow, obvious reference -----------------------------------------------------------------------------------


def brute_distances(q, db):
    """int32[nq, n]: differing bits, counted on the unpacked bits (padding bits are 0 on both sides)."""
    return np.unpackbits(q[:, None, :] ^ db[None, :, :], axis=2).sum(axis=2).astype(np.int32)


def brute_knn(q, db, ids, k):
    """Per query: all codes sorted by (distance, id), first k, padded with -1."""
    dist = brute_distances(q, db)
    D = np.full((len(q), k), -1, np.int32)
    I = np.full((len(q), k), -1, np.int64)
    for i, row in enumerate(dist):
        order = np.lexsort((ids, row))[:k]
        D[i, : len(order)], I[i, : len(order)] = row[order], ids[order]
    return D, I


def brute_range(q, db, ids, radius):
    dist = brute_distances(q, db)
    lims, D, I = [0], [], []
    for row in dist:
        sel = np.flatnonzero(row <= radius)
        sel = sel[np.lexsort((ids[sel], row[sel]))]
        D.append(row[sel])
        I.append(ids[sel])
        lims.append(lims[-1] + len(sel))
    return np.array(lims, np.int64), np.concatenate(D).astype(np.int32), np.concatenate(I).astype(np.int64)


def tie_data(nbits, n=1500, nq=24, seed=0):
    """Codes drawn from a small pool of distinct values, some with a bit or two flipped: many exact duplicates,
    so many tied distances. Queries are pool members, near-misses and random codes."""
    rng = np.random.default_rng(seed + nbits)
    w = (nbits + 7) // 8
    mask = np.full(w, 255, np.uint8)
    if nbits % 8:
        mask[-1] = (1 << (nbits % 8)) - 1

    def flip(codes, p):
        bits = rng.random((len(codes), nbits)) < p
        return codes ^ np.packbits(bits, axis=1, bitorder="little")

    pool = rng.integers(0, 256, (12, w), dtype=np.uint8) & mask
    db = pool[rng.integers(0, len(pool), n)]
    db[: n // 3] = flip(db[: n // 3], 1.5 / nbits)
    q = np.concatenate([pool[: nq // 3], flip(pool[rng.integers(0, len(pool), nq // 3)], 2 / nbits),
                        rng.integers(0, 256, (nq - 2 * (nq // 3), w), dtype=np.uint8) & mask])
    return q, db


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# -- exact results -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", NBITS)
def test_knn_matches_brute_force_with_ties(nbits):
    q, db = tie_data(nbits)
    index = HammingIndex(nbits)
    index.add(db)
    ids = np.arange(len(db))
    dist = np.sort(brute_distances(q, db), axis=1)
    for k in (1, 10, 100):
        # not vacuous: for some query the k-th and (k+1)-th distances tie, so order among ties decides
        assert (dist[:, k - 1] == dist[:, k]).any()
        D, I = index.search(q, k)
        assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == (len(q), k)
        assert_same((D, I), brute_knn(q, db, ids, k))


def test_knn_when_every_code_beats_the_last():
    # Codes ordered by falling distance from the query: every code enters the top-k buffer, so the scan must
    # compact its buffer mid-scan (more than k + 1024 accepted codes) and still return the exact top k.
    nbits, n, k = 256, 4000, 50
    rng = np.random.default_rng(3)
    q = np.zeros((1, nbits // 8), np.uint8)
    bits = np.zeros((n, nbits), bool)
    for j in range(n):
        d = nbits - 1 - (j * 250) // n  # non-increasing, 16 codes at each distance
        bits[j, rng.choice(nbits, d, replace=False)] = True
    db = np.packbits(bits, axis=1, bitorder="little")
    dist = brute_distances(q, db)[0]
    assert (np.diff(dist) <= 0).all() and dist[0] - dist[-1] > 200
    index = HammingIndex(nbits)
    index.add(db)
    assert_same(index.search(q, k), brute_knn(q, db, np.arange(n), k))


@pytest.mark.parametrize("nbits", NBITS)
def test_range_matches_brute_force_with_ties(nbits):
    q, db = tie_data(nbits)
    index = HammingIndex(nbits)
    index.add(db)
    ids = np.arange(len(db))
    for radius in (0, 1, 3, nbits // 4, nbits):
        want = brute_range(q, db, ids, radius)
        assert want[0][-1] > 0  # some query has matches
        for method in ("flat", "mih", "auto"):
            assert_same(index.range_search(q, radius, method=method), want)


def test_k_larger_than_ntotal_pads_with_minus_one():
    q, db = tie_data(64, n=7)
    index = HammingIndex(64)
    index.add(db)
    D, I = index.search(q, 10)
    assert_same((D, I), brute_knn(q, db, np.arange(7), 10))
    assert (I[:, 7:] == -1).all() and (D[:, 7:] == -1).all() and (I[:, :7] >= 0).all()
    D, I = HammingIndex(64).search(q, 3)  # empty index
    assert (I == -1).all() and (D == -1).all()
    lims, D, I = HammingIndex(64).range_search(q, 5)
    assert lims.shape == (len(q) + 1,) and not lims.any() and D.size == I.size == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_custom_ids_and_remove(engine):
    q, db = tie_data(32, n=900)
    rng = np.random.default_rng(3)
    ids = rng.permutation(10_000)[: len(db)].astype(np.int64)  # arbitrary order, not positions
    index = HammingIndex(32, engine=engine)
    index.add(db[:400], ids=ids[:400])
    index.add(db[400:], ids=ids[400:])
    assert index.ntotal == len(db) and np.all(np.diff(index.ids) > 0)
    np.testing.assert_array_equal(index.reconstruct(ids[:50]), db[:50])
    for k in (5, 60):
        assert_same(index.search(q, k), brute_knn(q, db, ids, k))
    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [10_001, 10_002]])) == len(gone)  # unknown ids are ignored
    keep = np.ones(len(db), bool)
    keep[::3] = False
    assert index.ntotal == keep.sum()
    assert_same(index.search(q, 60), brute_knn(q, db[keep], ids[keep], 60))
    assert_same(index.range_search(q, 3), brute_range(q, db[keep], ids[keep], 3))
    # default ids continue after the largest id held, so they never clash after a removal
    index.add(db[:2])
    assert index.ids[-2:].tolist() == [int(ids[keep].max()) + 1, int(ids[keep].max()) + 2]
    with pytest.raises(KeyError):
        index.reconstruct(gone[:1])
    index.reset()
    assert index.ntotal == 0 and index.search(q, 1)[1].max() == -1


def test_default_ids_are_running_positions():
    _, db = tie_data(64, n=30)
    index = HammingIndex(64)
    index.add(db[:10])
    index.add(db[10:])
    np.testing.assert_array_equal(index.ids, np.arange(30))
    np.testing.assert_array_equal(index.codes, db)


# -- multi-index hashing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits,nsubs", [(12, [1, 2, 3, 12]), (64, [2, 3, 4, 7]), (128, [4, 5, 8]),
                                         (256, [8, 11, 16])])
def test_mih_equals_flat(nbits, nsubs):
    q, db = tie_data(nbits, n=3000)
    index = HammingIndex(nbits)
    index.add(db)
    flat = {r: index.range_search(q, r, method="flat") for r in range(4)}
    assert all(flat[r][0][-1] > 0 for r in range(4))
    kinds = set()
    for nsub in nsubs:
        tables = index.build_mih(nsub)
        assert tables.nsub == nsub and index.mih is tables
        kinds.update(tables.dense.tolist())
        for r in range(4):
            assert_same(index.range_search(q, r, method="mih"), flat[r])
    if nbits == 64:
        assert kinds == {True, False}  # both the direct-addressed and the binary-searched tables were used


def test_mih_tables_dropped_on_change():
    q, db = tie_data(64, n=2000)
    index = HammingIndex(64)
    index.add(db[:1500])
    index.build_mih(4)
    index.add(db[1500:])
    assert index.mih is None
    assert_same(index.range_search(q, 2, method="mih"), brute_range(q, db, np.arange(len(db)), 2))
    index.remove(np.arange(0, 2000, 2))
    assert index.mih is None
    assert_same(index.range_search(q, 2, method="mih"), brute_range(q, db[1::2], np.arange(1, 2000, 2), 2))


def test_auto_prefers_mih_only_where_it_pays():
    assert prefer_mih(10_000_000, 64, 2, 1000, None)
    assert not prefer_mih(10_000_000, 64, 16, 1000, None)
    assert not prefer_mih(1000, 64, 0, 1000, None)  # too small to bother


# -- engines -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [12, 64, 128])
def test_engines_agree(nbits):
    q, db = tie_data(nbits)
    results = {}
    for engine in ENGINES:
        index = HammingIndex(nbits, engine=engine)
        index.add(db)
        results[engine] = [index.search(q, k) for k in (1, 7, 100, len(db) + 5)]
        results[engine] += [index.range_search(q, r, method="flat") for r in (0, 2, nbits // 3)]
    for engine in ENGINES:
        for got, want in zip(results[engine], results["numba"]):
            assert_same(got, want)


@needs_faiss
def test_faiss_engine_exact_when_better_codes_arrive_after_ties():
    """The case a heap gets wrong unless it breaks ties by id: the first codes all tie at a distance that later,
    closer codes push to the k boundary, so which tied code survives depends on eviction order."""
    rng = np.random.default_rng(0)
    far, near = rng.integers(0, 256, (2, 8), dtype=np.uint8)
    db = np.concatenate([np.repeat(far[None], 300, axis=0), np.repeat(near[None], 7, axis=0),
                         np.repeat(far[None], 300, axis=0)])
    q = np.concatenate([near[None], near[None] ^ np.uint8(1)])
    index = HammingIndex(64, engine="faiss")
    index.add(db)
    for k in (8, 10, 100):
        D, I = index.search(q, k)
        assert_same((D, I), brute_knn(q, db, np.arange(len(db)), k))
        assert (I[:, 7:] == np.arange(k - 7)).all()  # the earliest of the tied far codes


def test_faiss_engine_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="faiss-cpu"):
        HammingIndex(64, engine="faiss")


# -- bad input -----------------------------------------------------------------------------------------------------


def test_bad_input_is_a_one_line_value_error():
    index = HammingIndex(12)
    good = np.zeros((3, 2), np.uint8)
    index.add(good)
    bad_calls = [
        lambda: HammingIndex(0),
        lambda: HammingIndex(64, engine="gpu"),
        lambda: index.add(np.zeros((3, 3), np.uint8)),  # another width
        lambda: index.add(np.full((3, 2), 0xF0, np.uint8)),  # bits past nbits=12
        lambda: index.add(good.astype(np.int16)),
        lambda: index.add(np.zeros((2, 3, 2), np.uint8)),
        lambda: index.add(good, ids=[5, 5, 6]),
        lambda: index.add(good, ids=[0, 7, 8]),  # 0 is held
        lambda: index.add(good, ids=[-1, 7, 8]),
        lambda: index.add(good, ids=[7, 8]),
        lambda: index.search(np.zeros((3, 8), np.uint8), 1),
        lambda: index.search(good, 0),
        lambda: index.range_search(good, -1),
        lambda: index.range_search(good, 1, method="lsh"),
        lambda: index.build_mih(0),
        lambda: index.build_mih(13),  # more substrings than bits
    ]
    for call in bad_calls:
        with pytest.raises(ValueError) as e:
            call()
        assert "\n" not in str(e.value)
    assert index.ntotal == 3


# -- files ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [12, 64, 128])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(tmp_path, nbits, mmap):
    q, db = tie_data(nbits)
    ids = np.random.default_rng(1).permutation(5000)[: len(db)]
    index = HammingIndex(nbits)
    index.add(db, ids=ids)
    meta = {"labels": [1, 2, 3], "paths": ["a.jpg", "ü.png"], "run": {"seed": 0}}
    path = tmp_path / "db.dshidx"
    index.save(path, metadata=meta)
    loaded = HammingIndex.load(path, mmap=mmap)
    assert loaded.nbits == nbits and loaded.ntotal == len(db) and loaded.metadata == meta
    np.testing.assert_array_equal(loaded.codes, index.codes)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    assert_same(loaded.search(q, 20), index.search(q, 20))
    assert_same(loaded.range_search(q, 2, method="mih"), index.range_search(q, 2, method="flat"))
    loaded.add(db[:3])  # a memory-mapped index can still grow (in memory)
    assert loaded.ntotal == len(db) + 3


def test_empty_index_round_trip(tmp_path):
    HammingIndex(64).save(tmp_path / "e.idx")
    for mmap in (False, True):
        loaded = HammingIndex.load(tmp_path / "e.idx", mmap=mmap)
        assert loaded.ntotal == 0 and loaded.metadata == {}


def test_bad_files_are_refused(tmp_path):
    _, db = tie_data(64, n=500)
    index = HammingIndex(64)
    index.add(db)
    good = tmp_path / "good.idx"
    index.save(good, metadata={"k": "v"})
    blob = good.read_bytes()

    cases = {
        "truncated": blob[:-100],
        "checksum": blob[:200] + bytes([blob[200] ^ 1]) + blob[201:],  # a bit flipped in the codes
        "not a dsh index": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "trailing": blob + b"\0",
        "truncated index file (3 bytes)": blob[:3],  # cut inside the magic
        "truncated index file (40 bytes, header alone": blob[:40],
        "index format version 99, this dsh reads version": blob[:8] + struct.pack("<I", 99) + blob[12:],
    }
    for problem, data in cases.items():
        path = tmp_path / f"{problem.replace(' ', '_')}.idx"
        path.write_bytes(data)
        with pytest.raises(DataError, match=re.escape(problem)) as e:
            HammingIndex.load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="no such"):
        HammingIndex.load(tmp_path / "missing.idx")


def test_index_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import dsh.index.flat\n"
        "from dsh import HammingIndex\n"
        "i = HammingIndex(16); i.add(np.zeros((4, 2), np.uint8)); i.search(np.zeros((1, 2), np.uint8), 2)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

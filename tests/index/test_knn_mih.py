"""k-NN by multi-index hashing and the distinct-code layer, against a brute-force popcount with the (distance, id)
order: random, clustered and heavily tied codes, after adds, removes, a save and a load."""

import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_index import assert_same, brute_knn, brute_range

from dsh import HammingIndex
from dsh.codes.kernels import as_words
from dsh.errors import DataError, InputError
from dsh.index.distinct import Groups


def make_codes(rng, kind: str, n: int, nbits: int) -> np.ndarray:
    """``uint8[n, ceil(nbits/8)]``: random, clustered (a few centres, bits flipped with p = 1.5 / nbits) or tied
    (three values)."""
    w = (nbits + 7) // 8
    mask = np.full(w, 255, np.uint8)
    if nbits % 8:
        mask[-1] = (1 << (nbits % 8)) - 1
    if kind == "random":
        return rng.integers(0, 256, (n, w), dtype=np.uint8) & mask
    pool = rng.integers(0, 256, (3 if kind == "tied" else 6, w), dtype=np.uint8) & mask
    codes = pool[rng.integers(0, len(pool), n)]
    if kind == "clustered":
        codes ^= np.packbits(rng.random((n, nbits)) < 1.5 / nbits, axis=1, bitorder="little")
    return codes


def check_index(index: HammingIndex, codes: np.ndarray, ids: np.ndarray, q: np.ndarray, ks, radii, nsub):
    """Every method of k-NN and radius search equals the brute force over (codes, ids)."""
    order = np.argsort(ids)
    codes, ids = codes[order], ids[order]
    np.testing.assert_array_equal(index.ids, ids)
    np.testing.assert_array_equal(index.codes, codes)
    if len(ids):
        np.testing.assert_array_equal(index.reconstruct(ids[::3]), codes[::3])
        index.build_mih(nsub)
    for k in ks:
        want = brute_knn(q, codes, ids, k)
        for method in ("flat", "mih", "auto"):
            assert_same(index.search(q, k, method=method), want)
    for r in radii:
        want = brute_range(q, codes, ids, r)
        for method in ("flat", "mih"):
            assert_same(index.range_search(q, r, method=method), want)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["random", "clustered", "tied"]), nbits=st.sampled_from([12, 33, 64, 128]),
       n=st.integers(0, 260), seed=st.integers(0, 2**16), nsub_frac=st.floats(0, 1),
       k=st.integers(1, 40), radius=st.integers(0, 5), reload=st.booleans())
def test_knn_and_range_equal_brute_force_after_changes(tmp_path, kind, nbits, n, seed, nsub_frac, k, radius,
                                                       reload):
    rng = np.random.default_rng(seed)
    codes = make_codes(rng, kind, n, nbits)
    ids = rng.permutation(4 * n + 1)[:n].astype(np.int64)  # ids in no order, with gaps
    q = np.concatenate([codes[:4], make_codes(rng, kind, 4, nbits)])
    # substrings of 4 to 12 bits: a forced MIH search far from every code probes every key within the radius
    nsub = -(-nbits // 12) + int(nsub_frac * (nbits // 4 - -(-nbits // 12)))
    ks, radii = (k, 1, n + 2), (radius,)
    index = HammingIndex(nbits)
    half = n // 2
    index.add(codes[:half], ids[:half])
    index.add(codes[half:], ids[half:])
    check_index(index, codes, ids, q, ks, radii, nsub)
    gone = ids[rng.random(n) < 0.3]
    assert index.remove(gone) == len(gone)
    keep = ~np.isin(ids, gone)
    check_index(index, codes[keep], ids[keep], q, ks, radii, nsub)
    if reload:
        index.save(tmp_path / "i.idx")
        for mmap in (False, True):
            check_index(HammingIndex.load(tmp_path / "i.idx", mmap=mmap), codes[keep], ids[keep], q, ks, radii,
                        nsub)


def test_data_has_matches_and_ties():
    """The generators make what the property test needs: repeated codes and tied distances."""
    rng = np.random.default_rng(1)
    tied = make_codes(rng, "tied", 200, 64)
    assert len(np.unique(tied, axis=0)) == 3
    clustered = make_codes(rng, "clustered", 200, 64)
    assert 6 < len(np.unique(clustered, axis=0)) < 200
    index = HammingIndex(64)
    index.add(clustered)
    assert index.distinct == len(np.unique(clustered, axis=0))
    D, _ = index.search(clustered[:5], 30)
    assert (D[:, 0] == 0).all() and (D[:, 1:] == D[:, :-1]).any()


def test_groups_keep_each_distinct_code_once():
    codes = np.array([[5], [3], [5], [7], [3], [5]], np.uint8)
    g = Groups.build(codes)
    assert g.ucodes[:, 0].tolist() == [5, 3, 7]  # by first item
    assert g.goff.tolist() == [0, 3, 5, 6] and g.gpos.tolist() == [0, 2, 5, 1, 4, 3]
    np.testing.assert_array_equal(g.item_codes(), codes)
    assert g.check() is None
    assert Groups.build(np.arange(4, dtype=np.uint8)[:, None]).identity


def test_an_index_built_batch_by_batch_groups_its_codes_once_and_answers_as_one_built_at_once():
    rng = np.random.default_rng(3)
    codes = make_codes(rng, "clustered", 3000, 48)
    whole, batched = HammingIndex(48), HammingIndex(48)
    whole.add(codes)
    for a in range(0, len(codes), 256):  # as dsh index --images adds each encoded batch
        batched.add(codes[a : a + 256])
    assert batched._built_groups is None  # adds only appended rows: nothing grouped yet
    q = np.concatenate([codes[::97], make_codes(rng, "random", 10, 48)])
    check_index(batched, codes, np.arange(len(codes)), q, ks=(1, 10, 100), radii=(0, 2), nsub=None)
    assert batched.distinct == whole.distinct < len(codes)
    batched.remove(np.arange(0, 3000, 7))
    keep = np.setdiff1d(np.arange(3000), np.arange(0, 3000, 7))
    check_index(batched, codes[keep], keep, q, ks=(10,), radii=(1,), nsub=None)


@pytest.mark.parametrize("scan", ["sorted", "in index order"])
@pytest.mark.parametrize("nbits", [48, 33, 128, 256, 300])
def test_learned_like_codes_take_the_sorted_scan_and_exact_lookups_with_the_brute_force_results(nbits, scan,
                                                                                                 monkeypatch):
    """Codes that repeat heavily around a few centres (as learned codes do) are kept in sorted order too: repeated
    queries are answered once, and the scan either skips tiles and blocks whose codes all differ from the query in
    more bits than the k-th distance (many distinct codes; queries equal to a code that holds k items are looked
    up first) or reads the codes in index order, keeping at the k-th distance only the first codes k needs there
    (a few); every answer is the brute force's."""
    from dsh.codes.group_kernels import TILE
    from dsh.index import flat
    from dsh.index.sorted_codes import SortedCodes

    monkeypatch.setattr(flat, "SORTED_SCAN_MIN", 0 if scan == "sorted" else 1 << 62)
    sorted_scans = []
    knn_into = SortedCodes.knn_into
    monkeypatch.setattr(SortedCodes, "knn_into", lambda *a, **kw: sorted_scans.append(1) or knn_into(*a, **kw))

    rng = np.random.default_rng(nbits)
    w = (nbits + 7) // 8
    centres = make_codes(rng, "random", 8, nbits)
    distinct = centres[rng.integers(0, 8, 600)] ^ np.packbits(rng.random((600, nbits)) < 3 / nbits, axis=1,
                                                               bitorder="little")[:, :w]
    distinct[:, -1] &= (1 << (nbits % 8)) - 1 if nbits % 8 else 255  # the last byte's padding bits stay 0
    weights = rng.zipf(1.6, len(distinct)).clip(1, 300)  # a few codes hold many items, most hold one or two
    codes = np.repeat(distinct, weights, axis=0)[rng.permutation(int(weights.sum()))]
    ids = rng.permutation(3 * len(codes))[: len(codes)].astype(np.int64)
    index = HammingIndex(nbits)
    index.add(codes, ids)
    sorted_codes = index._sorted_codes()
    assert sorted_codes is not None and index.distinct > 2 * TILE
    assert sorted_codes.agreed_bits > 4  # tiles share bits, so bounds prune
    popular = distinct[np.argsort(-weights)[:5]]
    q = np.concatenate([popular, popular[:2], codes[:40], make_codes(rng, "clustered", 10, nbits),
                        make_codes(rng, "random", 5, nbits)])
    q[:, -1] &= (1 << (nbits % 8)) - 1 if nbits % 8 else 255
    for k in (1, 7, 60, 700):
        want = brute_knn(q, codes, ids, k)
        hits = index._prepared(q, k, "auto").hits  # per distinct query
        if scan == "sorted" or k * index.distinct <= len(codes):  # both paths where a code holds k
            assert (hits < 0).any() and (hits >= 0).any() == (k <= weights.max())
        else:  # the scan in index order answers a query equal to a code about as fast as a look-up
            assert hits is None
        for method in ("auto", "flat", "mih"):
            assert_same(index.search(q, k, method=method), want)
    info = index.explain(q, 7)
    looked_up = scan == "sorted" or 7 * index.distinct <= len(codes)
    assert info["distinct_queries"] < len(q) and (info["exact_hits"] > 0) == looked_up
    assert bool(sorted_scans) == (scan == "sorted")


@pytest.mark.parametrize("nbits", [64, 100, 192, 256])
def test_the_sorted_scan_and_the_scan_in_index_order_find_the_same_items(nbits):
    """The tile- and block-skipping scan over sorted codes and the scan in index order, for one, two and three
    words a code, over several tiles and a partly filled last one: each returns its runs grouped by distance, the
    sorted scan every code within the k-th distance, the scan in index order the same but at that distance only
    the first codes k needs, and both expand to the same k nearest items."""
    from dsh.codes import group_kernels as G
    from dsh.index.sorted_codes import SortedCodes

    rng = np.random.default_rng(nbits)
    codes = np.repeat(make_codes(rng, "clustered", 1500, nbits), rng.integers(1, 6, 1500), axis=0)
    g = Groups.build(codes)
    X = as_words(g.ucodes)
    W = X.shape[1]
    assert g.u > 2 * G.TILE and g.u % G.TILE
    Q = as_words(np.concatenate([codes[::37], make_codes(rng, "random", 6, nbits)]))
    s = SortedCodes.build(X)
    np.testing.assert_array_equal(s.words, X[np.lexsort(X.T[::-1])])  # the tiles hold the codes in sorted order

    def runs(found):
        """Per query its run as a set of (distance, code), after checking it comes grouped by distance."""
        counts, D, U = found
        lims = np.concatenate([[0], np.cumsum(counts)])
        out = []
        for a, b in zip(lims[:-1], lims[1:]):
            assert np.all(np.diff(D[a:b]) >= 0)
            out.append(set(zip(D[a:b].tolist(), U[a:b].tolist())))
        return out

    distances = np.unpackbits((Q[:, None, :] ^ X[None, :, :]).view(np.uint8), axis=2).sum(axis=2)
    weights = np.diff(g.goff)
    fewer_at_t = 0
    for k in (1, 5, 40, 3000):
        in_order = G.knn_scan_groups(X.reshape(-1), g.u, W, Q, 0, len(Q), k, nbits, g.goff)
        tiled = s.knn(Q, k, nbits, g.goff)
        for i, (a, b) in enumerate(zip(runs(in_order), runs(tiled))):
            d = distances[i]
            t = d[np.argsort(d, kind="stable")][np.searchsorted(np.cumsum(weights[np.argsort(d, kind="stable")]),
                                                                min(k, g.n))]
            assert b == {(int(d[c]), c) for c in np.flatnonzero(d <= t)}  # every code within t
            assert {x for x in b if x[0] < t} <= a <= b
            fewer_at_t += len(a) < len(b)
        results = []
        for found in (in_order, tiled):
            D, P = np.empty((len(Q), k), np.int32), np.empty((len(Q), k), np.int64)
            g.expand_into(found, k, D, P)
            results.append((D, P))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
    assert fewer_at_t  # the scan in index order did leave codes at t unread


def test_memory_per_item_goes_down_where_codes_repeat():
    rng = np.random.default_rng(0)
    repeated = np.repeat(rng.integers(0, 256, (100, 8), dtype=np.uint8), 50, axis=0)
    distinct = rng.integers(0, 256, (5000, 8), dtype=np.uint8)
    a, b = HammingIndex(64), HammingIndex(64)
    a.add(repeated)
    b.add(distinct)
    assert a.distinct == 100 and b.distinct == 5000
    assert a.nbytes < 8 + 4 + 5000 * 8 + 8 * 5000 and b.nbytes == 5000 * (8 + 8)


def test_explain_shows_the_plan_and_method_overrides_it(caplog):
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, (5000, 8), dtype=np.uint8)  # MIH pays where a scan has many codes to read
    db = centres[rng.integers(0, 5000, 100_000)] ^ np.packbits(rng.random((100_000, 64)) < 0.02, axis=1,
                                                               bitorder="little")
    index = HammingIndex(64)
    index.add(db)
    q = db[:64]
    assert index.explain(q, 10)["method"] == "flat" and index.mih is None  # the tables' build would not pay
    index.build_mih()
    plan = index.explain(q, 10)
    assert plan["method"] == "mih" and plan["pilot"] == 16 and plan["mih_ns"] < plan["flat_ns"]
    assert plan["distinct"] == index.distinct < 100_000
    assert index.explain(q, 10, method="flat")["method"] == "flat"
    random_q = rng.integers(0, 256, (64, 8), dtype=np.uint8)
    rand = HammingIndex(64)
    rand.add(rng.integers(0, 256, (20000, 8), dtype=np.uint8))
    rand.build_mih()
    assert rand.explain(random_q, 100)["method"] == "flat"  # MIH would probe too many keys
    with caplog.at_level("DEBUG", logger="dsh.index"):
        index.search(q, 10)
    assert any("k-NN plan" in r.getMessage() for r in caplog.records)
    want = brute_knn(q[:20], db, np.arange(len(db)), 10)
    for method in ("flat", "mih", "auto"):
        assert_same(index.search(q[:20], 10, method=method), want)


def test_a_pilot_that_chose_the_scan_is_trusted_for_a_while():
    """Where PILOT_AGREE pilots in a row with their full budget find MIH would not pay, the next batches of that k
    take the scan without piloting again (explain says so and does not count as a batch); after PILOT_REUSE
    batches, or new tables, it pilots again. A small batch's pilot, whose budget is tight, does not count. Results
    stay the scan's."""
    from dsh.codes.kernels import num_threads
    from dsh.index.mih import PILOT_AGREE, PILOT_BUDGET, PILOT_QUERIES, PILOT_REUSE, PILOT_SHARE, pilot_size

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (20000, 8), dtype=np.uint8)  # random codes: MIH does not pay at k = 100
    index = HammingIndex(64)
    index.add(codes)
    index.build_mih()
    small = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    assert pilot_size(len(small), num_threads())[1] < PILOT_BUDGET
    index.search(small, 100)
    assert index.explain(small, 100)["pilot"] == len(small)  # a small batch's pilot is not reused
    full = int(np.ceil(PILOT_BUDGET / PILOT_SHARE * PILOT_QUERIES * num_threads()))  # a batch whose pilot has it all
    q = rng.integers(0, 256, (full, 8), dtype=np.uint8)
    assert pilot_size(len(q), num_threads())[1] == PILOT_BUDGET
    assert index.explain(q, 100)["pilot"] == 16  # explain pilots, and leaves no verdict behind
    want = brute_knn(q, codes, np.arange(len(codes)), 100)
    for _ in range(PILOT_AGREE):  # these batches' pilots choose the scan
        assert index.explain(q, 100)["pilot"] == 16
        assert_same(index.search(q, 100), want)
    for _ in range(PILOT_REUSE):
        plan = index.explain(q, 100)
        assert plan["method"] == "flat" and plan["pilot"] == 0 and "would not pay" in plan["reason"]
        assert_same(index.search(q, 100), want)
    assert index.explain(q, 100)["pilot"] == 16  # the reused verdicts are spent
    for _ in range(PILOT_AGREE):
        index.search(q, 100)
    assert index.explain(q, 100)["pilot"] == 0 and index.explain(q, 10)["pilot"] == 16  # verdicts are per k
    index.build_mih()
    assert index.explain(q, 100)["pilot"] == 16  # new tables are piloted at once


def test_plans_weigh_the_times_the_index_measured():
    """Once the index has timed a scan for a k, a plan's scan cost is that time, not the built-in estimate; MIH's
    estimated work is scaled by the real time it took."""
    from dsh.index.mih import _TimeRatio

    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (20000, 8), dtype=np.uint8)
    index = HammingIndex(64)
    index.add(codes)
    index.build_mih()
    q = rng.integers(0, 256, (64, 8), dtype=np.uint8)
    assert 5 not in index._scan_ns
    index.search(q, 5, method="flat")
    timed = index._scan_ns[5]
    assert timed > 0 and index.explain(q, 5)["flat_ns"] == pytest.approx(timed)
    assert index.explain(q, 5)["method"] == "flat"  # random codes: MIH does not pay
    ratio = _TimeRatio()
    assert ratio.ratio == 1.0
    ratio.observe(1e3, 5e3)  # too little work to trust the clock
    assert ratio.ratio == 1.0
    ratio.observe(1e6, 3e6)
    ratio.observe(1e6, 1e6)
    assert ratio.ratio == pytest.approx(0.7 * 3 + 0.3 * 1)


@pytest.mark.parametrize("call", [lambda i, q: i.search(q, 0), lambda i, q: i.search(q, 2.5),
                                  lambda i, q: i.search(q, 3, method="fast"), lambda i, q: i.explain(q, -1),
                                  lambda i, q: i.range_search(q, -1), lambda i, q: i.range_search(q, 1, "mi")])
def test_bad_k_radius_method_are_one_line_errors(call):
    index = HammingIndex(16)
    index.add(np.zeros((5, 2), np.uint8))
    with pytest.raises(InputError) as e:
        call(index, np.zeros((1, 2), np.uint8))
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="nbits"):
        HammingIndex(0)


def saved(tmp_path, codes):
    index = HammingIndex(64)
    index.add(codes)
    path = tmp_path / "g.idx"
    index.save(path)
    return path, index


def test_damaged_grouped_file_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    codes = np.repeat(rng.integers(0, 256, (40, 8), dtype=np.uint8), 5, axis=0)
    path, index = saved(tmp_path, codes)
    assert index.distinct == 40
    blob = bytearray(path.read_bytes())
    _, version, hsize, *_, u, goff_off, gpos_off = struct.unpack_from("<8sIIIIQQQQQQQQ", blob)
    assert version == 2 and u == 40 and gpos_off > goff_off > 0
    cases = {"checksum mismatch": (gpos_off + 8, 1), "group positions are not each item once": (gpos_off + 8, 1),
             "group offsets do not cover": (goff_off + 8 * 40, 1), "corrupt index header": (hsize - 8, 1)}
    for i, (problem, (at, bit)) in enumerate(cases.items()):
        bad = bytearray(blob)
        bad[at] ^= bit
        p = tmp_path / f"bad{i}.idx"
        p.write_bytes(bytes(bad))
        verify = problem.startswith("checksum")
        with pytest.raises(DataError, match=re.escape(problem)) as e:
            HammingIndex.load(p, verify=verify)
        assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_version_1_files_are_still_read(tmp_path):
    """A file in the first layout (every code per item, 64-byte header) loads and searches as before."""
    rng = np.random.default_rng(0)
    codes = np.repeat(rng.integers(0, 256, (30, 8), dtype=np.uint8), 4, axis=0)
    ids = np.arange(0, 240, 2, dtype=np.int64)
    meta = b'{"k": "v"}'
    n = len(codes)
    head = struct.pack("<8sIIIIQQQQQ", b"DSHINDEX", 1, 64, 64, 8, n, 0, 64, 64 + n * 8, len(meta))
    body = head + codes.tobytes() + ids.astype("<i8").tobytes() + meta
    path = tmp_path / "v1.idx"
    path.write_bytes(body + struct.pack("<I4s", zlib.crc32(body), b"DSHE"))
    for mmap in (False, True):
        index = HammingIndex.load(path, mmap=mmap)
        assert index.metadata == {"k": "v"} and index.distinct == 30
        q = codes[::7]
        assert_same(index.search(q, 9), brute_knn(q, codes, ids, 9))


def test_warm_up_compiles_every_kernel_a_later_search_uses(monkeypatch):
    """After :func:`warm_up_kernels`, searches of either layout (codes distinct or repeating), other lengths and
    sizes, every method, the sorted scan of indexes with many distinct codes included, compile nothing new: a
    service that warmed up never stalls on a compile."""
    from dsh.codes import group_kernels, kernels
    from dsh.index import flat
    from dsh.index.flat import warm_up_kernels

    dispatchers = [f for m in (kernels, group_kernels) for f in vars(m).values() if hasattr(f, "signatures")]
    warm_up_kernels()
    before = {f: len(f.signatures) for f in dispatchers}
    rng = np.random.default_rng(5)
    for kind, nbits, n in (("random", 33, 300), ("tied", 128, 200), ("clustered", 12, 500), ("pairs", 48, 300),
                           ("sorted scan", 64, 400)):
        codes = (np.repeat(make_codes(rng, "random", n // 2, nbits), 2, axis=0) if kind == "pairs"
                 else np.repeat(make_codes(rng, "clustered", n // 8, nbits), 8, axis=0) if kind == "sorted scan"
                 else make_codes(rng, kind, n, nbits))
        monkeypatch.setattr(flat, "SORTED_SCAN_MIN", 0 if kind == "sorted scan" else 1 << 15)
        index = HammingIndex(nbits)
        index.add(codes)
        assert (index._sorted_codes() is not None) == (kind in ("tied", "sorted scan"))
        check_index(index, codes, np.arange(n), codes[::50], ks=(1, 7), radii=(0, 2), nsub=None)
    assert sum(before.values()) > 0
    assert {f.__name__: len(f.signatures) for f in dispatchers} == {f.__name__: n for f, n in before.items()}

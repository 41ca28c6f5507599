"""Retrieval metrics: hand-computed examples, a slow obvious reference on random data with ties, plots and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dsh.codes import pack_bits, unpack_codes
from dsh.metrics import (
    average_precision,
    evaluate,
    mean_average_precision,
    pr_curve_by_radius,
    precision_at_k,
    precision_at_radius,
    recall_at_radius,
    relevance,
)
from dsh.plots import plot_pr_curve, plot_precision_at_k, save_curves_json


def codes8(*values: int) -> np.ndarray:
    """8-bit codes from integers (bit i of the code is bit i of the integer)."""
    return np.array(values, dtype=np.uint8)[:, None]


# ----------------------------------------------------------------------------------------------------------------
# hand-computed examples

# Query: code 0b00000000, label 0. Database (j: code -> distance, label, relevant?):
#   j0: 0b011 -> 2, label 0, rel
#   j1: 0b001 -> 1, label 1, -
#   j2: 0b000 -> 0, label 0, rel
#   j3: 0b001 -> 1, label 0, rel
#   j4: 0b111 -> 3, label 1, -
#   j5: 0b010 -> 1, label 0, rel
# Stable ranking (ties by database position): j2 (d0) | j1, j3, j5 (d1) | j0 (d2) | j4 (d3)
#   rank:      1   2   3   4   5   6
#   relevant:  1   0   1   1   1   0
# precision at the relevant ranks: 1/1, 2/3, 3/4, 4/5
#   AP@all = (1 + 2/3 + 3/4 + 4/5) / 4 = (60 + 40 + 45 + 48) / 60 / 4 = 193/240
#   AP@3   = (1 + 2/3) / 2 = 5/6          (relevant items within the top 3: ranks 1 and 3)
#   AP@2   = AP@1 = 1                     (only rank 1 is relevant within the top 2)
# An unstable sort that put j1 after j3 in the distance-1 tie would give a larger AP: the tie-break is tested.
Q1 = codes8(0b0)
DB1 = codes8(0b011, 0b001, 0b000, 0b001, 0b111, 0b010)
QL1 = np.array([0])
DBL1 = np.array([0, 1, 0, 0, 1, 0])


def test_ap_hand_example_all_and_topk():
    assert average_precision(Q1, DB1, QL1, DBL1, 8)[0] == pytest.approx(193 / 240)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=3)[0] == pytest.approx(5 / 6)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=2)[0] == pytest.approx(1.0)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=1)[0] == pytest.approx(1.0)
    # topk = n and topk > n both mean the whole database
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=6)[0] == pytest.approx(193 / 240)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=1000)[0] == pytest.approx(193 / 240)


def test_precision_at_k_hand_example():
    # relevant flags in rank order 1 0 1 1 1 0: hits within the top k = 1 1 2 3 4 4
    got = precision_at_k(Q1, DB1, QL1, DBL1, 8, ks=[1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(got, [1 / 1, 1 / 2, 2 / 3, 3 / 4, 4 / 5, 4 / 6])
    # order of ks is kept, duplicates allowed
    np.testing.assert_allclose(precision_at_k(Q1, DB1, QL1, DBL1, 8, ks=[6, 3, 3]), [4 / 6, 2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="1..6"):
        precision_at_k(Q1, DB1, QL1, DBL1, 8, ks=[7])
    for bad in ([0], 3, [], [2.0]):
        with pytest.raises(ValueError, match="k"):
            precision_at_k(Q1, DB1, QL1, DBL1, 8, ks=bad)


# The last item, in the database and in the ranking, is the only relevant one:
#   j0: d1 label 1 | j1: d0 label 1 | j2: d1 label 0 (rel)
# Ranking: j1 (d0), j0 (d1), j2 (d1, after j0 by position). The relevant item has rank 3: AP = 1/3.
# DeepHash's topK=-1 (gnd[0:-1]) would drop it and report 0; an unstable tie-break could report 1/2.
Q2 = codes8(0b0)
DB2 = codes8(0b100, 0b000, 0b001)
QL2 = np.array([0])
DBL2 = np.array([1, 1, 0])


def test_last_database_item_counts():
    assert average_precision(Q2, DB2, QL2, DBL2, 8)[0] == pytest.approx(1 / 3)
    assert average_precision(Q2, DB2, QL2, DBL2, 8, topk=3)[0] == pytest.approx(1 / 3)
    assert average_precision(Q2, DB2, QL2, DBL2, 8, topk=4)[0] == pytest.approx(1 / 3)
    # within the top 2 there is no relevant item: AP@2 = 0
    assert average_precision(Q2, DB2, QL2, DBL2, 8, topk=2)[0] == 0.0
    np.testing.assert_allclose(precision_at_k(Q2, DB2, QL2, DBL2, 8, ks=[2, 3]), [0.0, 1 / 3])


def test_topk_below_one_is_an_error():
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="topk"):
            average_precision(Q1, DB1, QL1, DBL1, 8, topk=bad)


def test_query_without_relevant_item_counts_as_zero():
    # second query has label 7, which no database item has: AP 0, and it stays in the mean
    q = np.concatenate([Q1, Q1])
    ql = np.array([0, 7])
    ap = average_precision(q, DB1, ql, DBL1, 8)
    np.testing.assert_allclose(ap, [193 / 240, 0.0])
    assert mean_average_precision(q, DB1, ql, DBL1, 8) == pytest.approx(193 / 480)
    # same with topk: the first query has relevant items in its top 3, the second none
    assert mean_average_precision(q, DB1, ql, DBL1, 8, topk=3) == pytest.approx(5 / 12)
    res = evaluate(q, DB1, ql, DBL1, 8)
    assert res["queries_without_relevant"] == 1


def test_multi_label_relevance_hand_example():
    # query labels {0, 2}; database labels: {1} -, {2} rel, {0, 1} rel, {} -
    # distances 0, 1, 2, 1 -> ranking j0 (d0), j1 (d1), j3 (d1), j2 (d2)
    # relevant flags in rank order 0 1 0 1: AP = (1/2 + 2/4) / 2 = 1/2
    q = codes8(0b0)
    db = codes8(0b000, 0b001, 0b011, 0b100)
    ql = np.array([[1, 0, 1]], dtype=np.uint8)
    dl = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(relevance(ql, dl), [[False, True, True, False]])
    assert average_precision(q, db, ql, dl, 8)[0] == pytest.approx(0.5)
    assert average_precision(q, db, ql.astype(bool), dl.astype(bool), 8)[0] == pytest.approx(0.5)
    assert average_precision(q, db, ql, dl, 8, topk=2)[0] == pytest.approx(0.5)  # only rank 2 within top 2
    assert evaluate(q, db, ql, dl, 8)["labels"] == "multi"


def test_one_hot_rows_equal_class_ids():
    onehot = np.eye(2, dtype=np.uint8)
    a = average_precision(Q1, DB1, QL1, DBL1, 8)
    b = average_precision(Q1, DB1, onehot[QL1], onehot[DBL1], 8)
    np.testing.assert_allclose(a, b)


def test_label_validation():
    with pytest.raises(ValueError, match="class ids"):
        average_precision(Q1, DB1, QL1, np.eye(2, dtype=np.uint8)[DBL1], 8)
    with pytest.raises(ValueError, match="0 and 1"):
        average_precision(Q1, DB1, np.array([[2, 0]]), np.eye(2, dtype=np.uint8)[DBL1], 8)
    with pytest.raises(ValueError, match="labels"):
        average_precision(Q1, DB1, QL1, DBL1[:-1], 8)
    with pytest.raises(ValueError, match="past nbits"):
        average_precision(Q1, DB1, QL1, DBL1, 2)  # 0b111 has bit 2 set


# Radius: Q1 as above (distances 2, 1, 0, 1, 3, 1 with 4 relevant) and a second query 0b11111111, label 0, whose
# distances are 6, 7, 8, 7, 5, 7: nothing within radius 2, so its precision@2 counts as 0.
#   query 1 within r=2: j0, j1, j2, j3, j5 -> 4 relevant of 5: precision 4/5, recall 4/4
#   query 2 within r=2: empty -> precision 0, recall 0
def test_precision_and_recall_at_radius_with_empty_radius_query():
    q = codes8(0b0, 0xFF)
    ql = np.array([0, 0])
    assert precision_at_radius(q, DB1, ql, DBL1, 8, radius=2) == pytest.approx((4 / 5 + 0) / 2)
    assert recall_at_radius(q, DB1, ql, DBL1, 8, radius=2) == pytest.approx((1 + 0) / 2)
    # radius 0 for query 1: {j2}, relevant: precision 1, recall 1/4
    assert precision_at_radius(Q1, DB1, QL1, DBL1, 8, radius=0) == pytest.approx(1.0)
    assert recall_at_radius(Q1, DB1, QL1, DBL1, 8, radius=0) == pytest.approx(1 / 4)
    # radius past nbits is the whole database
    assert precision_at_radius(Q1, DB1, QL1, DBL1, 8, radius=100) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="radius"):
        precision_at_radius(Q1, DB1, QL1, DBL1, 8, radius=-1)


def test_pr_curve_hand_example():
    c = pr_curve_by_radius(Q1, DB1, QL1, DBL1, 8)
    np.testing.assert_array_equal(c["radius"], np.arange(9))
    # r=0: {j2}; r=1: + j1 j3 j5; r=2: + j0; r>=3: + j4
    np.testing.assert_allclose(c["precision"], [1, 3 / 4, 4 / 5] + [4 / 6] * 6)
    np.testing.assert_allclose(c["recall"], [1 / 4, 3 / 4, 1] + [1] * 6)


# ----------------------------------------------------------------------------------------------------------------
# a slow, obvious reference on random data with many ties


def reference(q_codes, db_codes, q_labels, db_labels, nbits, topk, ks, radius):
    """Python loops over a stable-sorted ranking; distances from the unpacked bits (independent of the kernel)."""
    qb, dbb = unpack_codes(q_codes, nbits), unpack_codes(db_codes, nbits)
    multi = np.asarray(q_labels).ndim == 2

    def rel(a, b):
        if multi:
            return bool(set(np.flatnonzero(a)) & set(np.flatnonzero(b)))
        return a == b

    aps, aps_k, pks, prec_r, rec_r, curve_p, curve_r = [], [], [], [], [], [], []
    for i in range(len(qb)):
        dist = [int(np.sum(qb[i] != dbb[j])) for j in range(len(dbb))]
        is_rel = [rel(q_labels[i], db_labels[j]) for j in range(len(dbb))]
        order = sorted(range(len(dbb)), key=lambda j: (dist[j], j))  # stable: ties by position
        flags = [is_rel[j] for j in order]
        total = sum(flags)
        for cut, out in ((len(order), aps), (topk, aps_k)):
            hits, s = 0, 0.0
            for r, f in enumerate(flags[:cut], start=1):
                if f:
                    hits += 1
                    s += hits / r
            out.append(s / hits if hits else 0.0)
        pks.append([sum(flags[:k]) / k for k in ks])
        row_p, row_r = [], []
        for rr in range(nbits + 1):
            inside = [is_rel[j] for j in range(len(dbb)) if dist[j] <= rr]
            row_p.append(sum(inside) / len(inside) if inside else 0.0)
            row_r.append(sum(inside) / total if total else 0.0)
        curve_p.append(row_p)
        curve_r.append(row_r)
        prec_r.append(row_p[min(radius, nbits)])
        rec_r.append(row_r[min(radius, nbits)])
    return dict(
        ap=np.array(aps),
        ap_k=np.array(aps_k),
        pk=np.mean(pks, axis=0),
        prec_r=np.mean(prec_r),
        rec_r=np.mean(rec_r),
        curve_p=np.mean(curve_p, axis=0),
        curve_r=np.mean(curve_r, axis=0),
    )


def tied_data(rng, nbits, nq, n, multi):
    # few bits set (p = 0.06): distances crowd into a handful of values, so most items tie with others
    bits = rng.random((nq + n, nbits)) < 0.06
    codes = pack_bits(bits)
    if multi:
        # 70 classes (two 64-bit label words), about 2 labels per row, some rows with none
        labels = (rng.random((nq + n, 70)) < 0.03).astype(np.uint8)
        labels[: nq // 2, :3] = 1  # half the queries surely have relevant items
        labels[nq : nq + n // 4, 1] = 1
    else:
        labels = rng.integers(0, 4, nq + n)
    return codes[:nq], codes[nq:], labels[:nq], labels[nq:]


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("nbits", [8, 12, 64, 128])  # 128: codes of more than one 64-bit word
def test_fast_path_matches_reference(nbits, multi):
    rng = np.random.default_rng(nbits + 100 * multi)
    nq, n = 12, 250
    q, db, ql, dl = tied_data(rng, nbits, nq, n, multi)
    rel = relevance(ql, dl)
    dist = (unpack_codes(q, nbits)[:, None, :] != unpack_codes(db, nbits)[None, :, :]).sum(axis=2)
    # not vacuous: relevant items exist, and ties mix relevant with irrelevant items, so a wrong tie-break shows
    assert (rel.sum(axis=1) > 0).sum() >= nq // 2
    mixed_ties = sum(
        len(set(rel[i, dist[i] == d].tolist())) == 2 for i in range(nq) for d in np.unique(dist[i])
    )
    assert mixed_ties >= nq
    topk, ks, radius = 40, [1, 5, 40, 100, n], 2
    ref = reference(q, db, ql, dl, nbits, topk, ks, radius)
    assert ref["ap"].max() > 0 and ref["ap"].min() < 1

    np.testing.assert_allclose(average_precision(q, db, ql, dl, nbits), ref["ap"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(average_precision(q, db, ql, dl, nbits, topk=topk), ref["ap_k"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(precision_at_k(q, db, ql, dl, nbits, ks), ref["pk"], rtol=1e-12)
    assert precision_at_radius(q, db, ql, dl, nbits, radius) == pytest.approx(ref["prec_r"], rel=1e-12)
    assert recall_at_radius(q, db, ql, dl, nbits, radius) == pytest.approx(ref["rec_r"], rel=1e-12)
    c = pr_curve_by_radius(q, db, ql, dl, nbits)
    np.testing.assert_allclose(c["precision"], ref["curve_p"], rtol=1e-12)
    np.testing.assert_allclose(c["recall"], ref["curve_r"], rtol=1e-12)

    res = evaluate(q, db, ql, dl, nbits, topk=topk, radius=radius, ks=ks)
    assert res["map"] == pytest.approx(ref["ap"].mean(), rel=1e-12)
    assert res["map_at_k"] == pytest.approx(ref["ap_k"].mean(), rel=1e-12)
    assert res[f"precision_at_radius_{radius}"] == pytest.approx(ref["prec_r"], rel=1e-12)


def test_database_order_breaks_ties():
    # moving an irrelevant item from after a tied relevant one to before it lowers AP: the order is the tie-break
    q = codes8(0b0)
    ql = np.array([0])
    after = average_precision(q, codes8(0b1, 0b1), ql, np.array([0, 1]), 8)[0]  # rel at rank 1
    before = average_precision(q, codes8(0b1, 0b1), ql, np.array([1, 0]), 8)[0]  # rel at rank 2
    assert (after, before) == (1.0, 0.5)


def test_pr_curve_recall_monotone_and_reaches_one():
    rng = np.random.default_rng(3)
    q, db, ql, dl = tied_data(rng, 16, 20, 300, multi=False)
    assert relevance(ql, dl).any(axis=1).all()  # every query has a relevant item, so recall must reach 1
    c = pr_curve_by_radius(q, db, ql, dl, 16)
    assert len(c["radius"]) == 17
    assert np.all(np.diff(c["recall"]) >= 0)
    assert c["recall"][-1] == pytest.approx(1.0)
    assert 0 < c["recall"][0] < 1
    # at radius nbits the set is the whole database: precision = fraction of relevant items
    assert c["precision"][-1] == pytest.approx(relevance(ql, dl).mean())


# ----------------------------------------------------------------------------------------------------------------
# evaluate, plots, JSON, no torch


def test_evaluate_keys_and_json():
    q = codes8(0b0, 0xFF)
    ql = np.array([0, 0])
    res = evaluate(q, DB1, ql, DBL1, 8, radius=3)
    json.dumps(res)  # plain Python numbers only
    assert "map_at_k" not in res and "topk" not in res
    assert {"map", "precision_at_radius_3", "recall_at_radius_3", "pr_curve", "precision_at_k"} <= res.keys()
    assert res["precision_at_k"]["k"] == [1]  # default ks larger than the 6-item database are dropped
    assert len(res["pr_curve"]["radius"]) == 9
    res_k = evaluate(Q1, DB1, QL1, DBL1, 8, topk=3)
    assert res_k["topk"] == 3 and res_k["map_at_k"] == pytest.approx(5 / 6)
    assert res_k["map"] == pytest.approx(193 / 240)
    assert evaluate(Q1, DB1, QL1, DBL1, 8, topk=50)["map_at_k"] == pytest.approx(193 / 240)


def test_plots_and_json_files(tmp_path):
    rng = np.random.default_rng(0)
    runs = {}
    for nbits in (8, 16):
        q, db, ql, dl = tied_data(rng, nbits, 5, 60, multi=False)
        runs[f"{nbits} bits"] = evaluate(q, db, ql, dl, nbits, ks=[1, 5, 10, 50])
    plot_pr_curve(runs, tmp_path / "pr.png", title="test")
    plot_precision_at_k({k: v["precision_at_k"] for k, v in runs.items()}, tmp_path / "pk.png")
    save_curves_json({"runs": runs, "np": np.arange(3), "f": np.float32(0.5)}, tmp_path / "curves.json")
    for name in ("pr.png", "pk.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads((tmp_path / "curves.json").read_text())
    assert back["runs"]["8 bits"]["map"] == runs["8 bits"]["map"] and back["np"] == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["curves.json", "pk.png", "pr.png"]  # no temporary files left
    with pytest.raises(ValueError, match="precision"):
        plot_pr_curve({"bad": {"k": [1]}}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_metrics_and_protocols_do_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import dsh.metrics, dsh.protocols, dsh.plots\n"
        "dsh.metrics.evaluate(np.zeros((1, 1), np.uint8), np.zeros((2, 1), np.uint8), [0], [0, 1], 8)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

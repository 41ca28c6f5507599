"""Retrieval metrics: hand-computed examples, a slow obvious reference on random data with ties, plots and JSON."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from dsh.codes.bits import pack_bits, unpack_codes
from dsh.eval.metrics import (
    _stats,
    average_precision,
    evaluate,
    mean_average_precision,
    pr_curve_by_radius,
    precision_at_k,
    precision_at_radius,
    recall_at_radius,
)
from dsh.eval.plots import plot_pr_curve, plot_precision_at_k, save_curves_json


def relevance(q_labels, db_labels) -> np.ndarray:
    """The reference from the definition: ``bool[nq, n]``, equal class ids (``int[n]``) or at least one shared
    label (multi-hot ``[n, C]``)."""
    q, db = np.asarray(q_labels), np.asarray(db_labels)
    if q.ndim == 1:
        return q[:, None] == db[None, :]
    return ((q[:, None, :] != 0) & (db[None, :, :] != 0)).any(axis=2)


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
    P = "position"
    assert average_precision(Q1, DB1, QL1, DBL1, 8, ties=P)[0] == pytest.approx(193 / 240)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=3, ties=P)[0] == pytest.approx(5 / 6)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=2, ties=P)[0] == pytest.approx(1.0)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=1, ties=P)[0] == pytest.approx(1.0)
    # topk = n and topk > n both mean the whole database
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=6, ties=P)[0] == pytest.approx(193 / 240)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=1000, ties=P)[0] == pytest.approx(193 / 240)


def test_precision_at_k_hand_example():
    # relevant flags in rank order 1 0 1 1 1 0: hits within the top k = 1 1 2 3 4 4
    got = precision_at_k(Q1, DB1, QL1, DBL1, 8, ks=[1, 2, 3, 4, 5, 6], ties="position")
    np.testing.assert_allclose(got, [1 / 1, 1 / 2, 2 / 3, 3 / 4, 4 / 5, 4 / 6])
    # order of ks is kept, duplicates allowed
    np.testing.assert_allclose(precision_at_k(Q1, DB1, QL1, DBL1, 8, ks=[6, 3, 3], ties="position"),
                               [4 / 6, 2 / 3, 2 / 3])
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
    P = "position"
    assert average_precision(Q2, DB2, QL2, DBL2, 8, ties=P)[0] == pytest.approx(1 / 3)
    assert average_precision(Q2, DB2, QL2, DBL2, 8, topk=3, ties=P)[0] == pytest.approx(1 / 3)
    assert average_precision(Q2, DB2, QL2, DBL2, 8, topk=4, ties=P)[0] == pytest.approx(1 / 3)
    # within the top 2 there is no relevant item: AP@2 = 0
    assert average_precision(Q2, DB2, QL2, DBL2, 8, topk=2, ties=P)[0] == 0.0
    np.testing.assert_allclose(precision_at_k(Q2, DB2, QL2, DBL2, 8, ks=[2, 3], ties=P), [0.0, 1 / 3])


def test_topk_below_one_is_an_error():
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="topk"):
            average_precision(Q1, DB1, QL1, DBL1, 8, topk=bad)


def test_query_without_relevant_item_counts_as_zero():
    # second query has label 7, which no database item has: AP 0, and it stays in the mean
    q = np.concatenate([Q1, Q1])
    ql = np.array([0, 7])
    ap = average_precision(q, DB1, ql, DBL1, 8, ties="position")
    np.testing.assert_allclose(ap, [193 / 240, 0.0])
    assert mean_average_precision(q, DB1, ql, DBL1, 8, ties="position") == pytest.approx(193 / 480)
    # same with topk: the first query has relevant items in its top 3, the second none
    assert mean_average_precision(q, DB1, ql, DBL1, 8, topk=3, ties="position") == pytest.approx(5 / 12)
    res = evaluate(q, DB1, ql, DBL1, 8)
    assert res.queries_without_relevant == 1


def test_multi_label_relevance_hand_example():
    # query labels {0, 2}; database labels: {1} -, {2} rel, {0, 1} rel, {} -
    # distances 0, 1, 2, 1 -> ranking j0 (d0), j1 (d1), j3 (d1), j2 (d2)
    # relevant flags in rank order 0 1 0 1: AP = (1/2 + 2/4) / 2 = 1/2
    q = codes8(0b0)
    db = codes8(0b000, 0b001, 0b011, 0b100)
    ql = np.array([[1, 0, 1]], dtype=np.uint8)
    dl = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(relevance(ql, dl), [[False, True, True, False]])
    assert average_precision(q, db, ql, dl, 8, ties="position")[0] == pytest.approx(0.5)
    assert average_precision(q, db, ql.astype(bool), dl.astype(bool), 8, ties="position")[0] == pytest.approx(0.5)
    # only rank 2 within top 2
    assert average_precision(q, db, ql, dl, 8, topk=2, ties="position")[0] == pytest.approx(0.5)
    assert evaluate(q, db, ql, dl, 8).labels == "multi"


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

    P = "position"  # the reference sorts stably: ties by database position
    np.testing.assert_allclose(average_precision(q, db, ql, dl, nbits, ties=P), ref["ap"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(average_precision(q, db, ql, dl, nbits, topk=topk, ties=P), ref["ap_k"],
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(precision_at_k(q, db, ql, dl, nbits, ks, ties=P), ref["pk"], rtol=1e-12)
    assert precision_at_radius(q, db, ql, dl, nbits, radius) == pytest.approx(ref["prec_r"], rel=1e-12)
    assert recall_at_radius(q, db, ql, dl, nbits, radius) == pytest.approx(ref["rec_r"], rel=1e-12)
    c = pr_curve_by_radius(q, db, ql, dl, nbits)
    np.testing.assert_allclose(c["precision"], ref["curve_p"], rtol=1e-12)
    np.testing.assert_allclose(c["recall"], ref["curve_r"], rtol=1e-12)

    res = evaluate(q, db, ql, dl, nbits, topk=topk, radius=radius, ks=ks, ties=P)
    assert res.map == pytest.approx(ref["ap"].mean(), rel=1e-12)
    assert res.map_at_k == pytest.approx(ref["ap_k"].mean(), rel=1e-12)
    assert res.precision_at_radius == pytest.approx(ref["prec_r"], rel=1e-12)


def test_database_order_breaks_ties():
    # moving an irrelevant item from after a tied relevant one to before it lowers AP: the order is the tie-break
    q = codes8(0b0)
    ql = np.array([0])
    after = average_precision(q, codes8(0b1, 0b1), ql, np.array([0, 1]), 8, ties="position")[0]  # rel at rank 1
    before = average_precision(q, codes8(0b1, 0b1), ql, np.array([1, 0]), 8, ties="position")[0]  # rel at rank 2
    assert (after, before) == (1.0, 0.5)
    # the expectation over both orders is the same whichever order the file has: (1 + 1/2) / 2
    for labels in ([0, 1], [1, 0]):
        assert average_precision(q, codes8(0b1, 0b1), ql, np.array(labels), 8)[0] == pytest.approx(0.75)


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
# tie-aware figures (ties="expected", the default): the expectation over a random order of equal distances


def test_expected_hand_example():
    # Q1/DB1 by distance bucket: d0 {j2 rel} | d1 {j1 -, j3 rel, j5 rel} | d2 {j0 rel} | d3 {j4 -}
    # AP@all: the d1 bucket's three orders give precision sums 2/3+3/4, 2/2+3/4, 2/2+3/3, mean 31/18, so
    #   E[AP] = (1 + 31/18 + 4/5) / 4 = 317/360
    # AP@3 cuts d1 after 2 of its 3 items: X (relevant among them) is 2 with prob. 1/3 -> (1 + 1 + 1) / 3 = 1,
    #   and 1 with prob. 2/3 -> (1 + (1 + 2/3)/2) / 2 = 11/12: E[AP@3] = 1/3 + (2/3)(11/12) = 17/18
    # precision@k: expected hits 1, 1 + 2/3, 1 + 4/3, 3, 4, 4 in the top 1..6
    assert average_precision(Q1, DB1, QL1, DBL1, 8)[0] == pytest.approx(317 / 360, rel=1e-14)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=3)[0] == pytest.approx(17 / 18, rel=1e-14)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=1)[0] == 1.0
    # AP@2: X ~ 1 relevant in 1 draw of d1 w.p. 2/3 -> (1 + 1)/2 = 1; else AP = 1: E = 1
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=2)[0] == pytest.approx(1.0, rel=1e-14)
    assert average_precision(Q1, DB1, QL1, DBL1, 8, topk=6)[0] == average_precision(Q1, DB1, QL1, DBL1, 8)[0]
    np.testing.assert_allclose(precision_at_k(Q1, DB1, QL1, DBL1, 8, ks=[1, 2, 3, 4, 5, 6]),
                               [1, (5 / 3) / 2, (7 / 3) / 3, 3 / 4, 4 / 5, 4 / 6], rtol=1e-14)
    res = evaluate(Q1, DB1, QL1, DBL1, 8, topk=3, ks=[2])
    assert res.ties == "expected" and res.map == pytest.approx(317 / 360, rel=1e-14)
    assert res.map_at_k == pytest.approx(17 / 18, rel=1e-14)
    assert res.precision_at_k.precision == [pytest.approx(5 / 6, rel=1e-14)]


def position_figures(dist, rel, ks):
    """AP@all, AP@k for each k, precision@k for each k of one query whose database is in the order given, ties by
    that order: the plain definitions, in Python."""
    order = sorted(range(len(dist)), key=lambda j: (dist[j], j))
    flags = [bool(rel[j]) for j in order]

    def ap(cut):
        hits, s = 0, 0.0
        for r, f in enumerate(flags[:cut], start=1):
            if f:
                hits += 1
                s += hits / r
        return s / hits if hits else 0.0

    return [ap(len(flags))] + [ap(k) for k in ks] + [sum(flags[:k]) / k for k in ks]


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_expected_equals_mean_over_every_ordering(multi):
    # 6 items: all 720 orders of the database, each ranked with ties by position, averaged; every k from 1 to 6
    rng = np.random.default_rng(5 + multi)
    n, nbits, ks = 6, 8, list(range(1, 7))
    for _ in range(12):
        db = codes8(*rng.integers(0, 8, n))  # bits 0-2 only: distances 0..3 to a query, heavy ties
        q = codes8(*rng.integers(0, 8, 3))
        if multi:
            dl = (rng.random((n, 3)) < 0.4).astype(np.uint8)
            ql = (rng.random((3, 3)) < 0.5).astype(np.uint8)
        else:
            dl, ql = rng.integers(0, 2, n), rng.integers(0, 2, 3)
        rel = relevance(ql, dl)
        dist = (unpack_codes(q, nbits)[:, None, :] != unpack_codes(db, nbits)[None, :, :]).sum(axis=2)
        want = np.array([np.mean([position_figures(dist[i][list(p)], rel[i][list(p)], ks)
                                  for p in itertools.permutations(range(n))], axis=0) for i in range(len(q))])
        got_ap = average_precision(q, db, ql, dl, nbits)
        got_apk = np.stack([average_precision(q, db, ql, dl, nbits, topk=k) for k in ks], axis=1)
        np.testing.assert_allclose(got_ap, want[:, 0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got_apk, want[:, 1:1 + n], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(precision_at_k(q, db, ql, dl, nbits, ks), want[:, 1 + n:].mean(axis=0),
                                   rtol=1e-12, atol=1e-15)


def heavy_ties(rng, nq, n, n_codes=5, n_classes=3):
    """8-bit codes drawn from ``n_codes`` distinct values, labels that agree with the code most of the time, and
    the database sorted by class, as an image-folder dataset comes: position ties are biased here."""
    values = rng.choice(256, n_codes, replace=False)
    cls = rng.integers(0, n_classes, nq + n)
    pick = np.where(rng.random(nq + n) < 0.6, cls % n_codes, rng.integers(0, n_codes, nq + n))
    codes = codes8(*values[pick])
    order = np.argsort(cls[nq:], kind="stable")
    return codes[:nq], codes[nq:][order], cls[:nq], cls[nq:][order]


@pytest.mark.parametrize("nq, n, topk", [(8, 240, 37), (2, 3000, 1100)], ids=["small", "large-buckets"])
def test_expected_is_the_mean_over_random_permutations(nq, n, topk):
    """Monte Carlo: the expected figures against the mean of the position figures over P random permutations of
    the database. The tolerance is 5 standard errors, each from the observed spread of that figure over the
    permutations (std / sqrt(P)): for a mean of P = 1500 independent draws the CLT makes a 5-SE miss a
    6e-7 event per figure, so a failure means a wrong expectation, not bad luck (and the seed is fixed). The
    position figure on the class-sorted file is many SEs off the expectation: the test is not vacuous."""
    rng = np.random.default_rng(n)
    q, db, ql, dl = heavy_ties(rng, nq, n)
    ks = [1, topk, n // 2]
    # not vacuous: for most queries k lands strictly inside a distance bucket that mixes relevant and irrelevant
    # items (so AP@k's denominator is random)
    dist = (unpack_codes(q, 8)[:, None, :] != unpack_codes(db, 8)[None, :, :]).sum(axis=2)
    rel = relevance(ql, dl)
    inside = 0
    for i in range(nq):
        d_k = np.sort(dist[i])[topk - 1]
        closer, bucket = (dist[i] < d_k).sum(), dist[i] == d_k
        inside += closer < topk < closer + bucket.sum() and 0 < rel[i, bucket].sum() < bucket.sum()
    assert inside >= max(1, nq // 2)

    P = 1500
    draws = []  # per permutation: AP@all and AP@topk of each query, mean precision@k for each k
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # many tiny calls: no thread hand-offs (the cores may be busy with other work)
    try:
        for _ in range(P):
            perm = rng.permutation(n)
            s = _stats(q, db[perm], ql, dl[perm], 8, topk, np.array(ks), ties="position")  # one pass for all
            draws.append(np.concatenate([s.ap, s.ap_at_k, s.precision_at_k()[np.searchsorted(s.ks, ks)]]))
    finally:
        numba.set_num_threads(threads)
    draws = np.array(draws)
    mean, se = draws.mean(axis=0), draws.std(axis=0, ddof=1) / np.sqrt(P)
    got = np.concatenate([average_precision(q, db, ql, dl, 8), average_precision(q, db, ql, dl, 8, topk=topk),
                          precision_at_k(q, db, ql, dl, 8, ks)])
    assert np.all(np.abs(got - mean) <= 5 * se + 1e-12), np.max(np.abs(got - mean) / (se + 1e-300))
    # the position figures of the class-sorted file are far off: sorted by class, ties favour class 0's queries
    pos = np.concatenate([average_precision(q, db, ql, dl, 8, ties="position"),
                          average_precision(q, db, ql, dl, 8, topk=topk, ties="position")])
    assert np.max(np.abs(pos - got[: 2 * nq]) / (se[: 2 * nq] + 1e-300)) > 20


@pytest.mark.parametrize("nbits", [64, 128])
def test_expected_equals_position_without_ties(nbits):
    # each query gets a database whose distances to it are 0, 1, ..., nbits, all distinct, in a shuffled order:
    # with no ties the two rules are the same ranking
    rng = np.random.default_rng(nbits)
    for _ in range(4):
        qbits = rng.random(nbits) < 0.5
        masks = np.zeros((nbits + 1, nbits), bool)
        for j in range(nbits + 1):
            masks[j, rng.permutation(nbits)[:j]] = True  # popcount j: distance j
        db = pack_bits(masks[rng.permutation(nbits + 1)] ^ qbits)
        q = pack_bits(qbits[None])
        dl, ql = rng.integers(0, 3, nbits + 1), np.array([1])
        assert len(np.unique((unpack_codes(db, nbits) != qbits).sum(axis=1))) == nbits + 1
        ks = [1, 7, nbits // 2, nbits + 1]
        for t in (None, 5, nbits // 3, nbits + 1):
            np.testing.assert_allclose(average_precision(q, db, ql, dl, nbits, topk=t),
                                       average_precision(q, db, ql, dl, nbits, topk=t, ties="position"), rtol=1e-12)
        np.testing.assert_allclose(precision_at_k(q, db, ql, dl, nbits, ks),
                                   precision_at_k(q, db, ql, dl, nbits, ks, ties="position"), rtol=1e-12)


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_expected_does_not_change_when_database_rows_are_permuted(multi):
    rng = np.random.default_rng(11 + multi)
    q, db, ql, dl = tied_data(rng, 12, 10, 300, multi)
    perm = rng.permutation(len(db))
    a = evaluate(q, db, ql, dl, 12, topk=45, ks=[1, 10, 45, 100])
    b = evaluate(q, db[perm], ql, dl[perm], 12, topk=45, ks=[1, 10, 45, 100])
    assert a == b  # the same counts give bit-identical figures
    p_a = evaluate(q, db, ql, dl, 12, topk=45, ties="position")
    p_b = evaluate(q, db[perm], ql, dl[perm], 12, topk=45, ties="position")
    assert p_a.map != p_b.map  # whereas the position rule moves with the file order
    # radius figures and the curve over radii are the same under both rules
    for key in ("precision_at_radius", "recall_at_radius", "pr_curve"):
        assert getattr(a, key) == getattr(p_a, key) == getattr(p_b, key)


def test_ties_argument_is_checked():
    for bad in ("random", "Position", None, 1):
        for call in (
            lambda t: average_precision(Q1, DB1, QL1, DBL1, 8, ties=t),
            lambda t: precision_at_k(Q1, DB1, QL1, DBL1, 8, [1], ties=t),
            lambda t: precision_at_radius(Q1, DB1, QL1, DBL1, 8, ties=t),
            lambda t: evaluate(Q1, DB1, QL1, DBL1, 8, ties=t),
        ):
            with pytest.raises(ValueError, match="ties must be one of 'expected', 'position'"):
                call(bad)


def test_expected_topk_at_least_n_is_ap_all_and_precision_at_n_is_the_share_relevant():
    rng = np.random.default_rng(2)
    q, db, ql, dl = tied_data(rng, 8, 15, 200, multi=False)
    ap = average_precision(q, db, ql, dl, 8)
    np.testing.assert_array_equal(average_precision(q, db, ql, dl, 8, topk=200), ap)
    np.testing.assert_array_equal(average_precision(q, db, ql, dl, 8, topk=10**6), ap)
    assert precision_at_k(q, db, ql, dl, 8, [200])[0] == pytest.approx(relevance(ql, dl).mean(), rel=1e-14)


def test_harmonic_difference_is_accurate():
    from dsh.eval.metrics import _harmonic_diff

    rng = np.random.default_rng(0)
    cases = [(N, m) for N in (0, 1, 63, 64, 65, 1000, 49_999) for m in (0, 1, 32, 33, 100, 60_000)]
    cases += [tuple(int(v) for v in rng.integers(0, 100_000, 2)) for _ in range(50)]
    for N, m in cases:
        want = math.fsum(1.0 / (N + t) for t in range(1, m + 1))
        assert _harmonic_diff(N, m) == pytest.approx(want, rel=2e-15, abs=0), (N, m)


def test_cli_eval_ties(tmp_path, capsys):
    from dsh.cli import main
    from dsh.codes.codefile import CodeFile, save_codes

    rng = np.random.default_rng(4)
    q, db, ql, dl = heavy_ties(rng, 20, 300)
    save_codes(tmp_path / "q.npz", CodeFile(q, 8, ql))
    save_codes(tmp_path / "db.npz", CodeFile(db, 8, dl))
    args = ["eval", "--query", str(tmp_path / "q.npz"), "--database", str(tmp_path / "db.npz"), "--topk", "50"]
    for extra, ties in (([], "expected"), (["--ties", "expected"], "expected"), (["--ties", "position"], "position")):
        assert main(args + extra + ["--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        want = evaluate(q, db, ql, dl, 8, topk=50, ties=ties)
        assert got["ties"] == ties and got["map"] == want.map and got["map_at_k"] == want.map_at_k
    assert main(args) == 0
    assert "expected" in capsys.readouterr().out
    capsys.readouterr()
    assert main(args + ["--ties", "random"]) == 2  # argparse's refusal, as one line
    err = capsys.readouterr().err.strip()
    assert "--ties" in err and "random" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------------
# evaluate, plots, JSON, no torch


def test_evaluate_keys_and_json():
    q = codes8(0b0, 0xFF)
    ql = np.array([0, 0])
    res = evaluate(q, DB1, ql, DBL1, 8, radius=3)
    d = res.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain Python numbers only
    assert "map_at_k" not in d and "topk" not in d and res.topk is None and res.map_at_k is None
    assert {"map", "radius", "precision_at_radius", "recall_at_radius", "pr_curve", "precision_at_k"} <= d.keys()
    assert d["radius"] == 3 and d["precision_at_radius"] == res.precision_at_radius
    assert res.precision_at_radius == precision_at_radius(q, DB1, ql, DBL1, 8, radius=3)
    assert res.precision_at_k.k == [1]  # default ks larger than the 6-item database are dropped
    assert d["precision_at_k"] == {"k": [1], "precision": res.precision_at_k.precision}
    assert res.precision_at_k.at(1) == res.precision_at_k.precision[0] and res.precision_at_k.at(2) is None
    assert len(res.pr_curve.radius) == 9
    assert res.ties == "expected"
    res_k = evaluate(Q1, DB1, QL1, DBL1, 8, topk=3, ties="position")
    assert res_k.topk == 3 and res_k.map_at_k == pytest.approx(5 / 6)
    assert res_k.map == pytest.approx(193 / 240) and res_k.ties == "position"
    assert evaluate(Q1, DB1, QL1, DBL1, 8, topk=50, ties="position").map_at_k == pytest.approx(193 / 240)


def test_plots_and_json_files(tmp_path):
    rng = np.random.default_rng(0)
    runs = {}
    for nbits in (8, 16):
        q, db, ql, dl = tied_data(rng, nbits, 5, 60, multi=False)
        runs[f"{nbits} bits"] = evaluate(q, db, ql, dl, nbits, ks=[1, 5, 10, 50])
    plot_pr_curve(runs, tmp_path / "pr.png", title="test")
    plot_precision_at_k({k: v.precision_at_k for k, v in runs.items()}, tmp_path / "pk.png")
    save_curves_json({"runs": runs, "np": np.arange(3), "f": np.float32(0.5)}, tmp_path / "curves.json")
    for name in ("pr.png", "pk.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads((tmp_path / "curves.json").read_text())
    assert back["runs"]["8 bits"] == runs["8 bits"].to_dict() and back["np"] == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["curves.json", "pk.png", "pr.png"]  # no temporary files left
    with pytest.raises(ValueError, match="precision"):
        plot_pr_curve({"bad": {"k": [1]}}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_metrics_and_protocols_do_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import dsh.eval.metrics, dsh.data.protocols, dsh.eval.plots\n"
        "dsh.eval.metrics.evaluate(np.zeros((1, 1), np.uint8), np.zeros((2, 1), np.uint8), [0], [0, 1], 8)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

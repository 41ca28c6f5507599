"""Retrieval metrics over packed codes and labels: mAP, mAP@k, precision@k, precision/recall within a Hamming radius.

Pure functions, no torch. Every function takes ``(q_codes, db_codes, q_labels, db_labels, nbits, ...)`` with codes
packed as in :mod:`dsh.codes.bits` (``uint8[n, ceil(nbits/8)]``).

Conventions (the ones the field uses, made exact):

- **Relevance.** Labels are either class ids, ``int[n]`` (a database item is relevant to a query iff the ids are
  equal), or multi-hot rows, ``uint8/bool[n, C]`` with values 0/1 (relevant iff the two rows share at least one
  label; a one-hot row therefore behaves like a class id). Queries and database use the same kind.
- **Ties.** Hamming distances take only ``nbits + 1`` values, so most items of a ranking tie with others, and
  *how* ties are ordered moves every rank-based figure. Every function takes ``ties``:

  - ``ties="expected"`` (the default): the figure is its **expected value when the items at equal distance come in
    a uniformly random order** (McSherry and Najork, "Computing information retrieval performance measures
    efficiently in the presence of tied scores", ECIR 2008). It is computed exactly, in closed form, from the
    per-distance counts of items and of relevant items alone, so it is deterministic and does not change when the
    database rows are permuted: a property of the codes, not of the file order. (On a class-sorted database, as
    every image-folder dataset gives, the position rule below biases mAP: 12-bit CIFAR-10 codes of the paper
    benchmark have mAP@all 0.7062 by position, 0.7216 expected; mAP@1000 0.666 by position, 0.760 expected.)
  - ``ties="position"``: ties are broken by database position (a stable sort): the rank of database item ``j`` is
    ``1 + #(items closer than j) + #(items at the same distance that come before j in the database)``. This is
    what a stable-sorting evaluation reports for one particular order; DeepHash-pytorch's ``CalcTopMap`` uses an
    unstable ``np.argsort``, which is some order again, neither this one nor the expectation.

  Precision and recall within a radius do not depend on the order of ties (a radius takes a whole distance bucket
  or none of it), so both rules give the same figures there; those functions take ``ties`` only for uniformity.
- **AP@k** (``average_precision(..., topk=k)``) is the mean of precision@rank over the relevant items ranked
  within the top ``k``, i.e. divided by the number of relevant items *within the top k* (``CalcTopMap``'s
  definition). ``topk=None`` or ``topk >= n`` means the whole database (AP@all); ``topk < 1`` is an error. The last
  database item always counts (DeepHash's ``topK=-1`` silently dropped it via ``[0:-1]``). A query with no relevant
  item within the top ``k`` has AP 0 and still counts in the mean, so mAP is the mean over *all* queries.
- **precision@k** is (relevant items among the top ``k``) / ``k``, for ``1 <= k <= n``.
- **Radius.** The set within radius ``r`` is every database item at Hamming distance ``<= r`` (ties are all in or
  all out, so the order does not matter). Its precision is (relevant in set) / (size of set), and a query whose set
  is *empty* counts as precision 0 (the standard convention: the hash lookup returned nothing useful). Its recall is
  (relevant in set) / (relevant in the database), and a query with no relevant item in the whole database counts
  as recall 0, like its AP. Means are over all queries. :func:`pr_curve_by_radius` gives both for ``r = 0..nbits``;
  recall is non-decreasing in ``r`` and reaches 1 at ``r = nbits`` when every query has a relevant item.

**The expected figures** (``ties="expected"``), per query. Write the distance buckets in order; a bucket holds
``n`` items of which ``r`` are relevant, and comes after ``N`` items of which ``R`` are relevant; ``R_tot`` is the
query's number of relevant items and ``D(N, m) = sum_{t=1..m} 1/(N+t)`` (a difference of harmonic numbers). In a
random order of the bucket, position ``t`` holds a relevant item with probability ``r/n``, and given that, the
``t - 1`` positions before it hold ``(t-1)(r-1)/(n-1)`` relevant items on average (hypergeometric). Precision@rank
has a fixed denominator ``N + t`` there, so by linearity the expected sum of precision@rank over the bucket's
relevant items is

    E_bucket(N, R, n, r) = (r/n) * [ (R+1) * D(N, n) + (r-1)/(n-1) * (n - (N+1) * D(N, n)) ]

(the second term is ``sum_t (t-1)/(N+t)``; it is absent when ``n = 1``). Then:

- ``AP@all = sum over buckets of E_bucket / R_tot`` (0 when ``R_tot = 0``): exact, since ``R_tot`` is fixed.
- ``precision@k``: let the cut-off fall in the bucket with ``N < k <= N + n``, so ``m = k - N`` of its positions are
  inside. The expected number of relevant items in the top ``k`` is ``R + m * r / n``; divided by ``k``.
- ``AP@k`` is a ratio with a random denominator, so it is not E_bucket summed and divided. With the cut-off bucket
  as above, let ``X`` be the number of its relevant items among its first ``m`` positions: ``X`` is hypergeometric
  (``n`` items, ``r`` relevant, ``m`` drawn). The buckets before the cut-off are ordered independently of ``X`` and
  contribute the expected sum ``S`` (their ``E_bucket``s) with exactly ``R`` relevant items; given ``X = x`` the
  ``x`` relevant positions are a uniform ``x``-subset of ``1..m``, so the cut-off bucket contributes, on average,
  ``(x/m) * [(R+1) * D(N, m) + (x-1)/(m-1) * (m - (N+1) * D(N, m))]`` =: ``T(x)``. Hence, exactly,

      E[AP@k] = sum_x P(X = x) * (S + T(x)) / (R + x)          (a term with R + x = 0 is 0).

  When the cut-off ends a bucket (``m = n``) ``X = r`` surely and this is the AP of the top ``k``; for ``k >= n``
  it is AP@all. The hypergeometric weights are computed by their ratio recurrence outward from the mode and
  normalised, so nothing overflows or underflows; ``D`` is summed directly for small arguments and from the
  asymptotic series of the digamma function beyond (relative error a few 1e-16).

mAP, mAP@k and the mean precision@k are the means of these over queries, which are also the expectations of the
means (linearity), so they too are the expected figures under a random order of ties.

Implementation: one pass per query in database order turns the query into counts over the ``nbits + 1`` distance
buckets (all that the expected figures need) plus, for ``ties="position"``, the in-bucket position of each
relevant item; the rank of each relevant item, hence AP, AP@k and precision@k by position, follows exactly from
those. Distances are computed inside the same numba kernel (the 64-bit word popcount of :mod:`dsh.codes.kernels`, as in
:func:`dsh.codes.hamming.pairwise_hamming`), so no ``nq x n`` matrix is ever built: memory is ``O(n)`` per thread plus
``O(nq * nbits)`` for the counts. Queries run in parallel (``prange``) over numba's threads. 10,000 queries x 60,000
codes take about 2 s on 2 cores, at 8 or 64 bits; the expected figures then cost ``O(nbits)`` per query (plus the
hypergeometric terms of one bucket for AP@k), and skip the per-item rank bookkeeping of the position rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from numba import get_num_threads, njit, prange

from ..codes.bits import check_codes
from ..codes.kernels import _popcount, as_words

__all__ = [
    "DEFAULT_KS",
    "TIES",
    "average_precision",
    "mean_average_precision",
    "precision_at_k",
    "precision_at_radius",
    "recall_at_radius",
    "pr_curve_by_radius",
    "RadiusCurve",
    "PrecisionCurve",
    "Evaluation",
    "evaluate",
]

# Cut-offs for the precision@k curve in :func:`evaluate` (those larger than the database are dropped).
DEFAULT_KS = (1, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# How items at equal Hamming distance are ordered (module docstring): the expectation over a random order (the
# default), or database position.
TIES = ("expected", "position")


# ----------------------------------------------------------------------------------------------------------------
# input checking and encoding


def _encode_labels(q_labels, db_labels, nq: int, n: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate labels and encode them for the kernel: ``(q uint64[nq, L], db uint64[n, L], multi)``.

    Class ids become one word (compared for equality); multi-hot rows become bitsets (intersected).
    """
    q = np.asarray(q_labels)
    db = np.asarray(db_labels)
    if q.ndim != db.ndim or q.ndim not in (1, 2):
        raise ValueError(
            "labels must be class ids int[n] or multi-hot rows [n, C] for both queries and database, "
            f"got shapes {q.shape} and {db.shape}"
        )
    if q.shape[0] != nq or db.shape[0] != n:
        raise ValueError(f"{q.shape[0]} query labels for {nq} query codes, {db.shape[0]} database labels for {n} codes")
    if q.ndim == 1:
        for name, a in (("q_labels", q), ("db_labels", db)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
                raise ValueError(f"{name} must be integer class ids, got dtype {a.dtype}")
        # int64 -> uint64 view keeps equality exactly, negative ids included
        return (
            q.astype(np.int64).view(np.uint64).reshape(nq, 1),
            db.astype(np.int64).view(np.uint64).reshape(n, 1),
            False,
        )
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"multi-hot labels have {q.shape[1]} classes for queries but {db.shape[1]} for the database")
    words = []
    for name, a in (("q_labels", q), ("db_labels", db)):
        if a.dtype != bool:
            if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
                raise ValueError(f"{name} must be multi-hot 0/1 rows, got dtype {a.dtype}")
            if a.size and not np.all((a == 0) | (a == 1)):
                raise ValueError(f"{name} must be multi-hot rows of 0 and 1")
        words.append(as_words(np.packbits(a.astype(bool), axis=1, bitorder="little")))
    return words[0], words[1], True


def _code_words(codes: np.ndarray, nbits: int, name: str) -> np.ndarray:
    """Validated packed codes as ``uint64[n, ceil(nbytes/8)]`` words for the kernel (zero-padded)."""
    return as_words(check_codes(codes, nbits, name))


def _check_topk(topk, n: int) -> int:
    """``None`` or ``>= n`` -> ``n``; ``< 1`` is an error."""
    if topk is None:
        return n
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise ValueError(f"topk must be a positive int or None, got {topk!r}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1 (None means the whole database), got {topk}")
    return int(min(topk, n))


def _check_ties(ties) -> str:
    if not isinstance(ties, str) or ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(repr(t) for t in TIES)}, got {ties!r}")
    return ties


def _check_ks(ks, n: int) -> np.ndarray:
    ks_arr = np.asarray(ks)
    if ks_arr.ndim != 1 or ks_arr.size == 0 or not np.issubdtype(ks_arr.dtype, np.integer):
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    if ks_arr.min() < 1 or ks_arr.max() > n:
        raise ValueError(f"every k must be in 1..{n} (the database size), got {ks_arr.tolist()}")
    return ks_arr.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# the kernel

_ZERO = np.uint64(0)


@njit(cache=True, parallel=True)
def _stats_kernel(qw, dbw, qlab, dblab, multi, nbits, ranks, topk, ks, ap_all, ap_k, cnt_all, cnt_rel, hits,
                  nblocks):
    nq = qw.shape[0]
    n = dbw.shape[0]
    nw = qw.shape[1]
    nl = qlab.shape[1]
    nk = ks.shape[0]
    nb = nbits + 1
    block = (nq + nblocks - 1) // nblocks
    for b in prange(nblocks):
        # per-block scratch, reused across its queries
        dist = np.empty(n, np.int32)
        relv = np.empty(n, np.bool_)
        rd = np.empty(n, np.int32)  # for each relevant item in database order: its distance,
        rpos = np.empty(n, np.int32)  # its position within its distance bucket,
        rrel = np.empty(n, np.int32)  # and its position among the relevant items of that bucket
        ca = np.empty(nb, np.int64)
        cr = np.empty(nb, np.int64)
        start = np.empty(nb, np.int64)
        rstart = np.empty(nb, np.int64)
        h = np.empty(nk, np.int64)
        for i in range(b * block, min(nq, (b + 1) * block)):
            # distances and relevance first, in loops the compiler vectorises
            if nw == 1:
                q0 = qw[i, 0]
                for j in range(n):
                    dist[j] = np.int32(_popcount(q0 ^ dbw[j, 0]))
            else:
                for j in range(n):
                    x = _ZERO
                    for w in range(nw):
                        x += _popcount(qw[i, w] ^ dbw[j, w])
                    dist[j] = np.int32(x)
            if multi:
                for j in range(n):
                    rel = False
                    for t in range(nl):
                        rel |= (qlab[i, t] & dblab[j, t]) != _ZERO
                    relv[j] = rel
            else:
                l0 = qlab[i, 0]
                for j in range(n):
                    relv[j] = l0 == dblab[j, 0]
            ca[:] = 0
            cr[:] = 0
            if not ranks:  # the counts are all that the expected figures need
                for j in range(n):
                    ca[dist[j]] += 1
                    if relv[j]:
                        cr[dist[j]] += 1
                for e in range(nb):
                    cnt_all[i, e] = ca[e]
                    cnt_rel[i, e] = cr[e]
                continue
            # one pass in database order: bucket counts and in-bucket positions (this is the stable tie-break)
            m = 0
            for j in range(n):
                d = dist[j]
                if relv[j]:
                    rd[m] = d
                    rpos[m] = ca[d]
                    rrel[m] = cr[d]
                    m += 1
                    cr[d] += 1
                ca[d] += 1
            # items (all / relevant) in strictly closer buckets
            s = 0
            rs = 0
            for e in range(nb):
                start[e] = s
                rstart[e] = rs
                s += ca[e]
                rs += cr[e]
                cnt_all[i, e] = ca[e]
                cnt_rel[i, e] = cr[e]
            h[:] = 0
            s_all = 0.0
            s_k = 0.0
            n_k = 0
            for t in range(m):
                e = rd[t]
                rank = start[e] + rpos[t] + 1  # 1-based rank of this relevant item
                p = (rstart[e] + rrel[t] + 1) / rank  # precision at that rank
                s_all += p
                if rank <= topk:
                    s_k += p
                    n_k += 1
                kk = np.searchsorted(ks, rank)  # first k >= rank: this item counts for ks[kk:]
                if kk < nk:
                    h[kk] += 1
            ap_all[i] = s_all / m if m > 0 else 0.0
            ap_k[i] = s_k / n_k if n_k > 0 else 0.0
            c = 0
            for kk in range(nk):
                c += h[kk]
                hits[i, kk] = c


@njit(cache=True)
def _harmonic_diff(N, m):
    """``D(N, m) = sum_{t=1..m} 1 / (N + t)`` for ``N, m >= 0``, to about 1e-16 relative.

    Direct summation while ``m`` is small or ``N`` is below 64; beyond, ``psi(N + m + 1) - psi(N + 1)`` from the
    asymptotic series of the digamma function (first omitted term ``1/(240 x^8)`` < 1.3e-17 for ``x >= 65``),
    with the logarithm taken as ``log1p`` of the ratio so that no cancellation loses digits."""
    s = 0.0
    N = float(N)
    m = int(m)
    while m > 0 and (m <= 32 or N < 64.0):
        N += 1.0
        s += 1.0 / N
        m -= 1
    if m > 0:
        a = N + 1.0
        b = N + m + 1.0
        ia2 = 1.0 / (a * a)
        ib2 = 1.0 / (b * b)
        # psi(x) ~ ln x - 1/(2x) - 1/(12 x^2) + 1/(120 x^4) - 1/(252 x^6)
        s += (np.log1p(m / a) - 0.5 * (1.0 / b - 1.0 / a) - (ib2 - ia2) / 12.0 + (ib2 * ib2 - ia2 * ia2) / 120.0
              - (ib2 * ib2 * ib2 - ia2 * ia2 * ia2) / 252.0)
    return s


@njit(cache=True)
def _bucket_part(N, R, m, x):
    """Expected sum of precision@rank over the relevant items among ``m`` positions that follow ``N`` items
    (``R`` of them relevant), given that ``x`` of the ``m`` are relevant, in a uniformly random order:
    ``(x/m) * [(R+1) D(N, m) + (x-1)/(m-1) * sum_{t=1..m} (t-1)/(N+t)]``."""
    if x <= 0:
        return 0.0
    d = _harmonic_diff(N, m)
    s = (R + 1.0) * d
    if x > 1:  # then m >= x >= 2
        s += (x - 1.0) / (m - 1.0) * max(m - (N + 1.0) * d, 0.0)
    return x / m * s


@njit(cache=True)
def _ap_at_cut(N, R, S, n, r, m):
    """Expected AP@k (CalcTopMap's: the precision sum over relevant items in the top k, over their number) when the
    cut-off takes the first ``m`` positions of a bucket of ``n`` items, ``r`` relevant, that follows ``N`` items
    with ``R`` relevant and an expected precision sum ``S``. Conditions on ``X`` (relevant among the ``m``),
    hypergeometric: weights from the ratio recurrence outward from the mode, normalised by their sum."""
    lo = max(0, m - (n - r))
    hi = min(m, r)
    d = _harmonic_diff(N, m)
    c1 = (R + 1.0) * d / m  # T(x) = x * (c1 + (x-1) * c2)
    c2 = max(m - (N + 1.0) * d, 0.0) / (m * (m - 1.0)) if m > 1 else 0.0
    mode = ((m + 1) * (r + 1)) // (n + 2)
    mode = min(max(mode, lo), hi)
    num = 0.0
    den = 0.0
    # the mode, then upwards, then downwards; a log-concave pmf only falls away from its mode
    for direction in (0, 1, -1):
        w = 1.0
        x = mode
        while True:
            if direction == 1:
                if x >= hi:
                    break
                w *= (r - x) * (m - x) / ((x + 1.0) * (n - r - m + x + 1.0))
                x += 1
            elif direction == -1:
                if x <= lo:
                    break
                w *= x * (n - r - m + x) / ((r - x + 1.0) * (m - x + 1.0))
                x -= 1
            if w < 1e-300:
                break
            if R + x > 0:
                num += w * (S + x * (c1 + (x - 1.0) * c2)) / (R + x)
            den += w
            if direction == 0:
                break
    return num / den


@njit(cache=True, parallel=True)
def _expected_kernel(cnt_all, cnt_rel, topk, ks, ap_all, ap_k, hits):
    """The expected figures of each query from its bucket counts (module docstring): AP@all, AP@topk and the
    expected number of relevant items in the top ``ks[kk]``."""
    nq, nb = cnt_all.shape
    nk = ks.shape[0]
    for i in prange(nq):
        N = 0
        R = 0
        S = 0.0
        kk = 0
        done_k = False
        for e in range(nb):
            n_e = cnt_all[i, e]
            if n_e == 0:
                continue
            r_e = cnt_rel[i, e]
            while kk < nk and ks[kk] <= N + n_e:
                hits[i, kk] = R + (ks[kk] - N) * (r_e / n_e)
                kk += 1
            if not done_k and topk <= N + n_e:
                ap_k[i] = _ap_at_cut(N, R, S, n_e, r_e, topk - N)
                done_k = True
            S += _bucket_part(N, R, n_e, r_e)
            N += n_e
            R += r_e
        ap_all[i] = S / R if R > 0 else 0.0
        if topk >= N:
            ap_k[i] = ap_all[i]


@dataclass
class _Stats:
    """What one pass over the data leaves per query; every metric is a small computation over it."""

    ap: np.ndarray  # float64[nq], AP@all
    ap_at_k: np.ndarray  # float64[nq], AP@topk
    topk: int  # resolved, 1..n
    counts: np.ndarray  # int64[nq, nbits+1], database items at each distance
    rel_counts: np.ndarray  # int64[nq, nbits+1], relevant items at each distance
    ks: np.ndarray  # int64[K], sorted unique
    hits: np.ndarray  # float64[nq, K], relevant items within the top ks[i] (expected ones for ties="expected")
    multi: bool
    ties: str

    def radius_pr(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-query precision and recall of the set within radius r, each ``float64[nq, nbits+1]``; an empty set
        has precision 0, a query without relevant items recall 0."""
        size = np.cumsum(self.counts, axis=1)
        rel = np.cumsum(self.rel_counts, axis=1)
        total = rel[:, -1:]
        prec = np.divide(rel, size, out=np.zeros(size.shape), where=size > 0)
        rec = np.divide(rel, total, out=np.zeros(size.shape), where=total > 0)
        return prec, rec

    def precision_at_k(self) -> np.ndarray:
        return self.hits.mean(axis=0) / self.ks


def _stats(q_codes, db_codes, q_labels, db_labels, nbits: int, topk=None, ks=None, ties="expected") -> _Stats:
    ties = _check_ties(ties)
    nbits = int(nbits)
    qw = _code_words(q_codes, nbits, "q_codes")
    dbw = _code_words(db_codes, nbits, "db_codes")
    nq, n = qw.shape[0], dbw.shape[0]
    if nq == 0 or n == 0:
        raise ValueError(f"need at least one query and one database item, got {nq} and {n}")
    if n >= 2**31:
        raise ValueError(f"database of {n} items is too large (at most 2**31 - 1)")
    qlab, dblab, multi = _encode_labels(q_labels, db_labels, nq, n)
    k = _check_topk(topk, n)
    ks_sorted = np.zeros(0, np.int64) if ks is None else np.unique(_check_ks(ks, n))
    ap_all = np.zeros(nq)
    ap_k = np.zeros(nq)
    cnt_all = np.zeros((nq, nbits + 1), np.int64)
    cnt_rel = np.zeros((nq, nbits + 1), np.int64)
    hits = np.zeros((nq, len(ks_sorted)), np.float64)
    position = ties == "position"
    # a few blocks per thread so that an uneven split (other work on the cores) still balances
    nblocks = int(min(nq, 4 * get_num_threads()))
    _stats_kernel(
        qw, dbw, qlab, dblab, multi, np.int64(nbits), position, np.int64(k), ks_sorted,
        ap_all, ap_k, cnt_all, cnt_rel, hits, np.int64(nblocks),
    )  # fmt: skip
    if not position:
        _expected_kernel(cnt_all, cnt_rel, np.int64(k), ks_sorted, ap_all, ap_k, hits)
    return _Stats(ap_all, ap_k, k, cnt_all, cnt_rel, ks_sorted, hits, multi, ties)


def _check_radius(radius) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")
    return int(radius)


# ----------------------------------------------------------------------------------------------------------------
# public functions


def average_precision(
    q_codes, db_codes, q_labels, db_labels, nbits: int, topk: int | None = None, ties: str = "expected"
) -> np.ndarray:
    """AP of each query, ``float64[nq]``: AP@all when ``topk`` is None, else AP@topk (module docstring).

    ``ties="expected"`` (default): the expectation over a random order of items at equal distance, exact and
    independent of the database order; ``ties="position"``: ties broken by database position."""
    s = _stats(q_codes, db_codes, q_labels, db_labels, nbits, topk, ties=ties)
    return s.ap if topk is None else s.ap_at_k


def mean_average_precision(
    q_codes, db_codes, q_labels, db_labels, nbits: int, topk: int | None = None, ties: str = "expected"
) -> float:
    """mAP over all queries (those without a relevant item count as 0): mAP@all, or mAP@topk; ``ties`` as in
    :func:`average_precision`."""
    return float(average_precision(q_codes, db_codes, q_labels, db_labels, nbits, topk, ties).mean())


def precision_at_k(
    q_codes, db_codes, q_labels, db_labels, nbits: int, ks: Sequence[int], ties: str = "expected"
) -> np.ndarray:
    """Mean over queries of (relevant among the top k) / k for each k in ``ks`` (``1 <= k <= n``), in the order
    given: ``float64[len(ks)]``. ``ties="expected"`` (default) counts the expected relevant items in the top k
    under a random order of ties; ``ties="position"`` breaks ties by database position."""
    ks_arr = np.asarray(ks)
    s = _stats(q_codes, db_codes, q_labels, db_labels, nbits, None, ks_arr, ties=ties)
    return s.precision_at_k()[np.searchsorted(s.ks, ks_arr)]


def precision_at_radius(
    q_codes, db_codes, q_labels, db_labels, nbits: int, radius: int = 2, ties: str = "expected"
) -> float:
    """Mean over queries of the precision of the items within Hamming distance ``<= radius``; a query with
    nothing inside the radius counts as 0. A radius takes whole distance buckets, so the figure does not depend
    on the order of ties: ``ties`` is checked and otherwise changes nothing."""
    r = min(_check_radius(radius), int(nbits))
    return float(_stats(q_codes, db_codes, q_labels, db_labels, nbits, ties=ties).radius_pr()[0][:, r].mean())


def recall_at_radius(
    q_codes, db_codes, q_labels, db_labels, nbits: int, radius: int = 2, ties: str = "expected"
) -> float:
    """Mean over queries of the fraction of their relevant items within Hamming distance ``<= radius``; a query
    with no relevant item in the database counts as 0. Independent of the order of ties, like
    :func:`precision_at_radius`."""
    r = min(_check_radius(radius), int(nbits))
    return float(_stats(q_codes, db_codes, q_labels, db_labels, nbits, ties=ties).radius_pr()[1][:, r].mean())


def pr_curve_by_radius(q_codes, db_codes, q_labels, db_labels, nbits: int, ties: str = "expected") -> dict:
    """Precision and recall of the set within radius ``r``, for ``r = 0..nbits``, averaged over queries.

    Returns ``dict(radius=int[nbits+1], precision=float64[nbits+1], recall=float64[nbits+1])``. At a radius where
    a query's set is empty its precision is 0 (as in :func:`precision_at_radius`); a query with no relevant item
    in the database has recall 0 at every radius. Independent of the order of ties (``ties`` changes nothing).
    """
    prec, rec = _stats(q_codes, db_codes, q_labels, db_labels, nbits, ties=ties).radius_pr()
    return dict(radius=np.arange(int(nbits) + 1), precision=prec.mean(axis=0), recall=rec.mean(axis=0))


@dataclass(frozen=True)
class RadiusCurve:
    """Mean precision and recall of the sets within Hamming radius ``r``, for every ``r = 0..nbits``."""

    radius: list[int]
    precision: list[float]
    recall: list[float]


@dataclass(frozen=True)
class PrecisionCurve:
    """Mean precision@k at each cut-off ``k``."""

    k: list[int]
    precision: list[float]

    def at(self, k: int) -> float | None:
        """precision@``k``, or ``None`` where ``k`` is not one of the cut-offs."""
        return self.precision[self.k.index(k)] if k in self.k else None


@dataclass(frozen=True)
class Evaluation:
    """Every figure of :func:`evaluate`, as plain Python numbers and lists (``to_dict`` gives JSON)."""

    nbits: int
    n_queries: int
    n_database: int
    labels: str  # "single" (class ids) or "multi" (multi-hot rows)
    ties: str  # the rule mAP, mAP@k and precision@k were computed with (one of TIES)
    map: float  # mAP@all
    radius: int
    precision_at_radius: float  # within Hamming distance <= radius
    recall_at_radius: float
    queries_without_relevant: int
    pr_curve: RadiusCurve
    precision_at_k: PrecisionCurve
    topk: int | None = None  # with map_at_k: only when evaluate was given a topk
    map_at_k: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready: the field names as keys, the curves as ``{name: list}``; no ``topk``/``map_at_k`` unless
        a cut-off was asked for."""
        out = asdict(self)
        if self.topk is None:
            del out["topk"], out["map_at_k"]
        return out


def evaluate(
    q_codes,
    db_codes,
    q_labels,
    db_labels,
    nbits: int,
    topk: int | None = None,
    radius: int = 2,
    ks: Sequence[int] | None = None,
    ties: str = "expected",
) -> Evaluation:
    """Every metric from one pass over the data.

    ``topk`` adds mAP@k (``topk >= n`` gives ``map_at_k == map``); ``radius`` sets the radius of the precision and
    recall figures (the curve covers every radius). ``ks`` (the cut-offs of the precision@k curve) defaults to
    :data:`DEFAULT_KS` without the values larger than the database; given ks must be in 1..n. ``ties`` sets how
    mAP, mAP@k and precision@k treat items at equal distance (module docstring); the radius figures and the curve
    over radii are the same under both rules.
    """
    nbits = int(nbits)
    radius = _check_radius(radius)
    ties = _check_ties(ties)
    n = check_codes(db_codes, nbits, "database codes").shape[0]  # a 1-D array is one code, not w codes
    if ks is None:
        ks = [k for k in DEFAULT_KS if k <= n] or [n]
    s = _stats(q_codes, db_codes, q_labels, db_labels, nbits, topk, np.asarray(ks), ties=ties)
    prec, rec = s.radius_pr()
    r = min(radius, nbits)
    return Evaluation(
        nbits=nbits,
        n_queries=len(s.ap),
        n_database=n,
        labels="multi" if s.multi else "single",
        ties=ties,
        map=float(s.ap.mean()),
        radius=radius,
        precision_at_radius=float(prec[:, r].mean()),
        recall_at_radius=float(rec[:, r].mean()),
        queries_without_relevant=int((s.rel_counts.sum(axis=1) == 0).sum()),
        pr_curve=RadiusCurve(list(range(nbits + 1)), prec.mean(axis=0).tolist(), rec.mean(axis=0).tolist()),
        precision_at_k=PrecisionCurve(s.ks.tolist(), s.precision_at_k().tolist()),
        topk=None if topk is None else s.topk,
        map_at_k=None if topk is None else float(s.ap_at_k.mean()),
    )

"""Numba kernels behind :class:`dsh.index.HammingIndex`, :mod:`dsh.index.mih` and :func:`dsh.codes.pairwise_hamming`.

Every kernel works on codes as 64-bit words: ``X`` is ``uint64[n * W]``, row-major, code ``j`` in words
``X[j*W : (j+1)*W]``, the packed bytes of :mod:`dsh.codes.bits` read little-endian and zero-padded to whole words, so
the popcount of ``x ^ q`` over the words is the Hamming distance. Queries ``Q`` are ``uint64[nq, W]``.
Kernels return *positions* (row numbers), never ids; the index maps positions to ids.

Speed notes (measured on AMD EPYC Zen 4, see ``benchmarks/speed/search.py``):

- Loops that must vectorise index with ``uint64``. Numba wraps negative signed indices, which makes LLVM emit
  gathers; with unsigned indices the chunk loop becomes ``vpxorq / vpopcntq / vpminuq`` over 8 codes at a time
  (about 5x faster).
- A scan takes the minimum distance of a 256-code sub-chunk with that vectorised loop, and only when it beats
  the query's current threshold (the k-th best distance so far, or ``radius + 1``) narrows down to groups of 32
  and then to single codes. Once the threshold is tight that is rare, so a scan costs about one vector pass.
- Queries are processed in blocks over a database chunk that stays in L1/L2, so the database is streamed from
  memory once per block rather than once per query (a 1M x 64-bit scan is otherwise memory-bound).
- The scans' bodies are inlined into their public kernel once per word count (1 and 2 as constants, any other
  as a variable): with ``W`` a constant LLVM unrolls the distance and keeps the chunk pass in vector registers
  (k = 100 over 1M 64-bit codes: 3.35 -> 4.79 G codes/s on one thread here).
- Kernels are serial and release the GIL (``nogil``); :func:`run_parallel` spreads query ranges over a thread
  pool. That gives single-pass range searches with growable outputs and works with any numba threading layer.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import numba
import numpy as np


def _prefer_wide_vectors() -> bool:
    """Let LLVM use 512-bit vectors on CPUs with AVX-512 popcount (Ice Lake and later), where it otherwise keeps
    to 256 bits: the scans' chunk pass then counts 8 codes per instruction instead of 4 (an in-cache
    xor-popcount-min pass, one thread: 7.1 -> 12.1 G codes/s here). Numba takes its target features once, when it
    first compiles anything in the process, so this must run before any kernel is compiled; it leaves alone a
    process whose numba was already in use, a user's own ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``, and
    ``DSH_WIDE_VECTORS=0``. Numba's cache is keyed by the features, so cached kernels never mix the two. Returns
    whether the features were set."""
    from numba.core import config

    if os.environ.get("DSH_WIDE_VECTORS", "1") == "0" or config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return False
    import llvmlite.binding as llvm

    host = llvm.get_host_cpu_features()
    if not host.get("avx512vpopcntdq"):
        return False
    config.CPU_FEATURES = host.flatten() + ",-prefer-256-bit"
    return True


WIDE_VECTORS = _prefer_wide_vectors()

from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402  (after the target features are chosen)
from numba.extending import intrinsic  # noqa: E402

_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)
_U4 = np.uint64(4)
_SUB = 256  # codes per vectorised min pass
_CHUNK_BYTES = 16384  # database bytes per chunk, kept in cache while a query block passes over it
_CACHED_BYTES = 1 << 19  # a database this small stays in the core's cache whatever order queries read it in
_SMALL_BUFFERS = 96 << 10  # bytes of a query block's buffers that malloc serves from its heap, not fresh pages


@intrinsic
def _popcount(typingctx, x):
    """``uint64 -> uint64`` popcount; compiles to ``popcnt`` (``vpopcntq`` when vectorised)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@intrinsic
def _ctz(typingctx, x):
    """``uint64 -> uint64`` count of trailing zero bits (``tzcnt``); ``x`` must not be 0."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.uint64(types.uint64), codegen


# ---------------------------------------------------------------------------------------------------------------
# distances


@njit(inline="always")
def _queries_per_block(n, W, cap):
    """Queries a scan passes over each database chunk together, their buffers ``cap`` entries (12 bytes each)
    a query. Blocking saves reading a large database once per query; a database that stays in cache gains
    nothing from it, and there the buffers are kept below malloc's mmap threshold: above it each call's buffers
    came as fresh pages, and faulting them in cost up to 0.7x the scan (k = 100 over 10,000 learned codes)."""
    if n * 8 * W <= _CACHED_BYTES:
        return max(1, min(64, _SMALL_BUFFERS // (12 * cap)))
    return max(1, min(64, (1 << 21) // cap))


@njit(inline="always")
def _dist(X, base, q, W):
    """Hamming distance between the code whose first word is ``X[base]`` and query words ``q`` (uint64)."""
    d = _U0
    for w in range(W):
        d += _popcount(X[base + np.uint64(w)] ^ q[w])
    return d


@njit(inline="always")
def _chunk_min(X, q, W, j0, j1):
    """Smallest distance from ``q`` to codes ``j0 .. j1-1`` (``uint64`` bounds), vectorised for W = 1, 2, 4."""
    m = np.uint64(1 << 30)
    if W == 1:
        q0 = q[0]
        for j in range(j0, j1):
            m = min(m, _popcount(X[j] ^ q0))
    elif W == 2:
        q0 = q[0]
        q1 = q[1]
        for j in range(j0, j1):
            m = min(m, _popcount(X[_U2 * j] ^ q0) + _popcount(X[_U2 * j + _U1] ^ q1))
    elif W == 4:
        q0 = q[0]
        q1 = q[1]
        q2 = q[2]
        q3 = q[3]
        for j in range(j0, j1):
            b = _U4 * j
            m = min(
                m,
                _popcount(X[b] ^ q0)
                + _popcount(X[b + _U1] ^ q1)
                + _popcount(X[b + _U2] ^ q2)
                + _popcount(X[b + _U3] ^ q3),
            )
    else:
        Wu = np.uint64(W)
        for j in range(j0, j1):
            m = min(m, _dist(X, j * Wu, q, W))
    return m


@njit(inline="always")
def _below_mask64(X, q, W, j0, e):
    """Bit ``j`` set where code ``j0 + j`` (``j < 64``; ``uint64`` ``j0``) lies nearer to ``q`` than ``e``
    (``uint64``), one vector pass for W = 1, 2, 4. Keep the trip count a constant: a loop whose length is
    known only at run time (or a tail path in the same loop) did not vectorise, about 4x slower."""
    m = _U0
    if W == 1:
        q0 = q[0]
        for j in range(_U0, np.uint64(64)):
            m |= np.uint64(_popcount(X[j0 + j] ^ q0) < e) << j
    elif W == 2:
        q0 = q[0]
        q1 = q[1]
        for j in range(_U0, np.uint64(64)):
            b = _U2 * (j0 + j)
            m |= np.uint64(_popcount(X[b] ^ q0) + _popcount(X[b + _U1] ^ q1) < e) << j
    elif W == 4:
        q0 = q[0]
        q1 = q[1]
        q2 = q[2]
        q3 = q[3]
        for j in range(_U0, np.uint64(64)):
            b = _U4 * (j0 + j)
            d = _popcount(X[b] ^ q0) + _popcount(X[b + _U1] ^ q1) + _popcount(X[b + _U2] ^ q2)
            m |= np.uint64(d + _popcount(X[b + _U3] ^ q3) < e) << j
    else:
        Wu = np.uint64(W)
        for j in range(_U0, np.uint64(64)):
            m |= np.uint64(_dist(X, (j0 + j) * Wu, q, W) < e) << j
    return m


@njit(inline="always")
def _below_mask_tail(X, q, W, j0, n, e):
    """:func:`_below_mask64` for the ``n < 64`` codes from ``j0`` on."""
    m = _U0
    Wu = np.uint64(W)
    for j in range(_U0, np.uint64(n)):
        m |= np.uint64(_dist(X, (j0 + j) * Wu, q, W) < e) << j
    return m


@njit(nogil=True, cache=True)
def pairwise_rows(X, n, W, Q, qa, qb, out):
    """``out[i, j] = dist(Q[i], code j)`` for query rows ``qa <= i < qb``; ``out`` is ``int32[nq, n]``."""
    nu = np.uint64(n)
    Wu = np.uint64(W)
    for i in range(qa, qb):
        q = Q[i]
        row = out[i]
        if W == 1:
            q0 = q[0]
            for j in range(_U0, nu):
                row[j] = np.int32(_popcount(X[j] ^ q0))
        else:
            for j in range(_U0, nu):
                row[j] = np.int32(_dist(X, j * Wu, q, W))


@njit(nogil=True, cache=True)
def distinct_rows(Q):
    """The distinct rows of ``Q`` (``uint64[nq, W]``) in order of first appearance: ``(first int64[u], the index
    of each distinct row's first appearance; inverse int64[nq], each row's number among them)``, by an
    open-addressing hash table: a sort-based unique of 1,000 rows cost about a sixth of a k = 1 search over
    10,000 distinct codes."""
    nq, W = Q.shape
    size = 16
    while size < 2 * nq:
        size *= 2
    mask = np.uint64(size - 1)
    slots = np.full(size, -1, np.int64)  # row number of the first appearance held in each slot
    first = np.empty(nq, np.int64)
    inverse = np.empty(nq, np.int64)
    u = 0
    for i in range(nq):
        h = np.uint64(0x9E3779B97F4A7C15)
        for w in range(W):
            h = (h ^ Q[i, w]) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
        s = h & mask
        while True:
            r = slots[s]
            if r < 0:
                slots[s] = u
                first[u] = i
                inverse[i] = u
                u += 1
                break
            same = True
            f = first[r]
            for w in range(W):
                if Q[f, w] != Q[i, w]:
                    same = False
                    break
            if same:
                inverse[i] = r
                break
            s = (s + np.uint64(1)) & mask
    return first[:u].copy(), inverse


# ---------------------------------------------------------------------------------------------------------------
# k nearest neighbours over a flat scan


@njit(inline="always")
def _keep_top(bufd, bufp, size, hist, t, cnt, k):
    """Compact one query's buffer (in position order) to its current top k: every entry with distance < t, then
    the earliest entries at distance t. Returns the new size (k). ``cnt`` = entries with distance <= t."""
    at_t = k - (cnt - hist[t])  # how many entries at distance t survive
    m = 0
    for e in range(size):
        d = bufd[e]
        if d < t or (d == t and at_t > 0):
            if d == t:
                at_t -= 1
            bufd[m] = d
            bufp[m] = bufp[e]
            m += 1
    hist[:] = 0
    for e in range(m):
        hist[bufd[e]] += 1
    return m


@njit(inline="always")
def _knn_scan(X, n, W, Q, qa, qb, k, nbits, outD, outP):
    """The body of :func:`knn_scan`, inlined there once per word count."""
    if n == 0 or qb <= qa:
        for i in range(qa, qb):
            outD[i, :] = -1
            outP[i, :] = -1
        return
    cap = min(n, max(2 * k, k + 1024))
    B = _queries_per_block(n, W, cap)
    CH = max(_SUB, (_CHUNK_BYTES // (8 * W)) // _SUB * _SUB)
    Wu = np.uint64(W)
    for b0 in range(qa, qb, B):
        nb = min(B, qb - b0)
        bufd = np.empty((nb, cap), np.int32)
        bufp = np.empty((nb, cap), np.int64)
        hist = np.zeros((nb, nbits + 2), np.int64)
        size = np.zeros(nb, np.int64)
        thr = np.full(nb, nbits + 1, np.int64)  # accept a code iff distance < thr
        cnt = np.zeros(nb, np.int64)  # entries with distance <= thr, once full
        full = np.zeros(nb, np.bool_)
        for c0 in range(0, n, CH):
            c1 = min(c0 + CH, n)
            for i in range(nb):
                q = Q[b0 + i]
                for s0 in range(c0, c1, _SUB):
                    s1 = min(s0 + _SUB, c1)
                    if np.int64(_chunk_min(X, q, W, np.uint64(s0), np.uint64(s1))) >= thr[i]:
                        continue
                    # a hit: narrow it down to groups of 32 before looking at codes one by one
                    for g0 in range(s0, s1, 32):
                        g1 = min(g0 + 32, s1)
                        if np.int64(_chunk_min(X, q, W, np.uint64(g0), np.uint64(g1))) >= thr[i]:
                            continue
                        for j in range(g0, g1):
                            d = np.int64(_dist(X, np.uint64(j) * Wu, q, W))
                            if d >= thr[i]:
                                continue
                            if size[i] == cap:  # only reachable once full (cap >= min(n, k))
                                size[i] = _keep_top(bufd[i], bufp[i], size[i], hist[i], thr[i], cnt[i], k)
                                cnt[i] = k
                            e = size[i]
                            bufd[i, e] = d
                            bufp[i, e] = j
                            size[i] = e + 1
                            hist[i, d] += 1
                            if full[i]:
                                cnt[i] += 1
                                t = thr[i]
                                while cnt[i] - hist[i, t] >= k:  # the k-th best distance went down
                                    cnt[i] -= hist[i, t]
                                    t -= 1
                                thr[i] = t
                            elif size[i] == k:
                                cum = 0
                                for t in range(nbits + 1):
                                    cum += hist[i, t]
                                    if cum >= k:
                                        thr[i] = t
                                        cnt[i] = cum
                                        break
                                full[i] = True
        # final: top k in position order, then a stable counting sort by distance
        for i in range(nb):
            m = size[i]
            if full[i]:
                m = _keep_top(bufd[i], bufp[i], m, hist[i], thr[i], cnt[i], k)
            start = np.zeros(nbits + 2, np.int64)
            for e in range(m):
                start[bufd[i, e] + 1] += 1
            for t in range(nbits + 1):
                start[t + 1] += start[t]
            row = b0 + i
            for e in range(m):
                d = bufd[i, e]
                o = start[d]
                start[d] = o + 1
                outD[row, o] = d
                outP[row, o] = bufp[i, e]
            outD[row, m:] = -1
            outP[row, m:] = -1


@njit(nogil=True, cache=True)
def knn_scan(X, n, W, Q, qa, qb, k, nbits, outD, outP):
    """Exact k nearest neighbours of queries ``qa <= i < qb``, ordered by (distance, position).

    Writes ``outD[i]`` (int32) and ``outP[i]`` (int64 positions), ``-1`` past the ``min(k, n)`` results.

    Per query the scan keeps the accepted codes in position order and a histogram of their distances; ``t`` is
    the k-th smallest distance seen so far. Once k codes are in, a code is accepted only if its distance is
    *strictly* below ``t``: a later code at distance ``t`` has a larger position, so it can never displace one
    already held. A final counting sort by distance keeps position order within each distance.
    """
    if W == 1:
        _knn_scan(X, n, 1, Q, qa, qb, k, nbits, outD, outP)
    elif W == 2:
        _knn_scan(X, n, 2, Q, qa, qb, k, nbits, outD, outP)
    else:
        _knn_scan(X, n, W, Q, qa, qb, k, nbits, outD, outP)


# ---------------------------------------------------------------------------------------------------------------
# range search


@njit(inline="always")
def _grow(a, need):
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(inline="always")
def _range_scan(X, n, W, Q, qa, qb, radius, nbits):
    """The body of :func:`range_scan`, inlined there once per word count."""
    nq = qb - qa
    counts = np.zeros(nq, np.int64)
    od = np.empty(1024, np.int32)
    op = np.empty(1024, np.int64)
    oq = np.empty(1024, np.int64)
    total = 0
    B = 64
    CH = max(_SUB, (_CHUNK_BYTES // (8 * W)) // _SUB * _SUB)
    Wu = np.uint64(W)
    r = np.int64(min(radius, nbits))
    nd = nbits + 1
    for b0 in range(qa, qb, B):
        nb = min(B, qb - b0)
        first = total
        for c0 in range(0, n, CH):
            c1 = min(c0 + CH, n)
            # room for every code of the chunk for every query, so the hot loop never reallocates (rebinding
            # the output arrays inside it makes appends several times slower)
            od = _grow(od, total + nb * (c1 - c0))
            op = _grow(op, total + nb * (c1 - c0))
            oq = _grow(oq, total + nb * (c1 - c0))
            for i in range(nb):
                q = Q[b0 + i]
                for s0 in range(c0, c1, _SUB):
                    s1 = min(s0 + _SUB, c1)
                    if np.int64(_chunk_min(X, q, W, np.uint64(s0), np.uint64(s1))) > r:
                        continue
                    for g0 in range(s0, s1, 32):
                        g1 = min(g0 + 32, s1)
                        if np.int64(_chunk_min(X, q, W, np.uint64(g0), np.uint64(g1))) > r:
                            continue
                        for j in range(g0, g1):
                            d = np.int64(_dist(X, np.uint64(j) * Wu, q, W))
                            if d <= r:
                                od[total] = d
                                op[total] = j
                                oq[total] = i
                                total += 1
        # Entries of one query arrive in position order; a stable counting sort on (query, distance) makes each
        # query's run contiguous and ordered by (distance, position).
        m = total - first
        if m:
            start = np.zeros(nb * nd + 1, np.int64)
            for e in range(first, total):
                start[oq[e] * nd + od[e] + 1] += 1
            for s in range(nb * nd):
                start[s + 1] += start[s]
            sd = np.empty(m, np.int32)
            sp = np.empty(m, np.int64)
            for e in range(first, total):
                key = oq[e] * nd + od[e]
                o = start[key]
                start[key] = o + 1
                sd[o] = od[e]
                sp[o] = op[e]
                counts[b0 - qa + oq[e]] += 1
            od[first:total] = sd
            op[first:total] = sp
    return counts, od[:total].copy(), op[:total].copy()


@njit(nogil=True, cache=True)
def range_scan(X, n, W, Q, qa, qb, radius, nbits):
    """All codes within ``radius`` of queries ``qa <= i < qb`` by a flat scan.

    Returns ``counts int64[qb-qa]``, ``D int32[total]``, ``P int64[total]``, each query's run ordered by
    (distance, position).
    """
    if W == 1:
        return _range_scan(X, n, 1, Q, qa, qb, radius, nbits)
    elif W == 2:
        return _range_scan(X, n, 2, Q, qa, qb, radius, nbits)
    else:
        return _range_scan(X, n, W, Q, qa, qb, radius, nbits)


# ---------------------------------------------------------------------------------------------------------------
# multi-index hashing


@njit(inline="always")
def _substring(X, base, start, length):
    """Bits ``start .. start+length-1`` (length <= 32) of the code whose first word is ``X[base]``."""
    w = np.uint64(start >> 6)
    o = np.uint64(start & 63)
    v = X[base + w] >> o
    if (start & 63) + length > 64:
        v |= X[base + w + _U1] << (np.uint64(64) - o)
    return v & ((_U1 << np.uint64(length)) - _U1)


@njit(nogil=True, cache=True)
def substring_keys(X, n, W, start, length):
    """``uint32[n]`` keys: bits ``start .. start+length-1`` of every code."""
    out = np.empty(n, np.uint32)
    Wu = np.uint64(W)
    for j in range(n):
        out[j] = np.uint32(_substring(X, np.uint64(j) * Wu, start, length))
    return out


@njit(nogil=True, cache=True)
def dense_table(keys, nbuckets, pos_dtype_probe):
    """Counting sort of ``keys`` (< nbuckets): offsets ``[nbuckets + 1]`` and positions ``[n]``, positions
    ascending within each bucket. Both have the dtype of ``pos_dtype_probe`` (int32 or int64)."""
    n = keys.shape[0]
    off = np.zeros(nbuckets + 1, pos_dtype_probe.dtype)
    for j in range(n):
        off[keys[j] + 1] += 1
    for b in range(nbuckets):
        off[b + 1] += off[b]
    fill = off[:-1].copy()
    pos = np.empty(n, pos_dtype_probe.dtype)
    for j in range(n):
        b = keys[j]
        pos[fill[b]] = j
        fill[b] += 1
    return off, pos


@njit(inline="always")
def _bucket(key, t, tdense, off_all, off_base, key_all, key_base, dir_all, dir_base, dir_shift):
    """``(lo, hi)`` into table ``t``'s positions for substring ``key``; empty when absent.

    Dense tables: offsets over every key. Sparse tables: sorted distinct keys, narrowed by a directory over the
    keys' top bits (``dir_all[dir_base[t] + p]`` = distinct keys whose top bits are < p), then a binary search
    over the few keys left."""
    ob = off_base[t]
    if tdense[t]:
        o = ob + np.int64(key)  # (uint64 + int64 would be a float in numba)
        return np.int64(off_all[o]), np.int64(off_all[o + 1])
    p = dir_base[t] + np.int64(key >> np.uint64(dir_shift[t]))
    first = key_base[t] + np.int64(dir_all[p])
    lo = first
    hi = key_base[t] + np.int64(dir_all[p + 1])
    end = hi
    k32 = np.uint32(key)
    while lo < hi:
        mid = (lo + hi) >> 1
        if key_all[mid] < k32:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and key_all[lo] == k32:
        u = ob + lo - key_base[t]
        return np.int64(off_all[u]), np.int64(off_all[u + 1])
    return np.int64(0), np.int64(0)


@njit(nogil=True, cache=True)
def mih_range(X, n, W, Q, qa, qb, radius, rad, tstart, tlen, tdense, off_all, off_base, key_all, key_base,
              dir_all, dir_base, dir_shift, pos_all):
    """Range search by multi-index hashing; same outputs as :func:`range_scan`.

    Tables ``t`` index substring bits ``tstart[t] .. tstart[t]+tlen[t]-1`` and are probed within ``rad[t]``
    (:func:`dsh.index.mih.search_radii`; -1 skips the table) at every key that many bits away from the query's
    (enumerated with Gosper's hack). Table t's positions are ``pos_all[t*n : (t+1)*n]`` grouped by key; a bucket's
    span comes from :func:`_bucket`. A candidate found in table t is kept only if no earlier table would also
    have found it, so no per-query "seen" set is needed, and only if its full distance is within ``radius``.

    Random lookups dominate, so a block of queries goes through in passes (all probes' keys, then all bucket
    spans, then all candidates' positions, then all candidates' codes): the lookups of one pass do not depend
    on each other, and the CPU keeps many cache misses in flight at once.
    """
    m = tstart.shape[0]
    nq = qb - qa
    counts = np.zeros(nq, np.int64)
    od = np.empty(1024, np.int32)
    op = np.empty(1024, np.int64)
    total = 0
    Wu = np.uint64(W)
    B = 32
    qkey = np.empty((B, m), np.uint64)
    pq = np.empty(1024, np.int64)  # probe: query (in block), table, key, bucket span
    pt = np.empty(1024, np.int64)
    pk = np.empty(1024, np.uint64)
    plo = np.empty(1024, np.int64)
    phi = np.empty(1024, np.int64)
    cq = np.empty(1024, np.int64)  # candidate: query (in block), table, position
    ct = np.empty(1024, np.int64)
    cj = np.empty(1024, np.int64)
    for b0 in range(qa, qb, B):
        nb = min(B, qb - b0)
        # 1. the keys to probe, query by query
        npr = 0
        for i in range(nb):
            q = Q[b0 + i]
            for t in range(m):
                qkey[i, t] = _substring(q, _U0, tstart[t], tlen[t])
            for t in range(m):
                L = tlen[t]
                for rho in range(0, min(rad[t], L) + 1):
                    mask = (_U1 << np.uint64(rho)) - _U1
                    end = _U1 << np.uint64(L)
                    while mask < end:
                        if npr == pq.shape[0]:
                            pq = _grow(pq, npr + 1)
                            pt = _grow(pt, npr + 1)
                            pk = _grow(pk, npr + 1)
                        pq[npr] = i
                        pt[npr] = t
                        pk[npr] = qkey[i, t] ^ mask
                        npr += 1
                        if rho == 0:
                            break
                        # Gosper's hack: the next larger mask with the same number of bits set
                        c = mask & (~mask + _U1)
                        r_ = mask + c
                        mask = (((r_ ^ mask) >> _U2) // c) | r_
        # 2. bucket spans
        plo = _grow(plo, npr)
        phi = _grow(phi, npr)
        ncand = 0
        for p in range(npr):
            lo, hi = _bucket(pk[p], pt[p], tdense, off_all, off_base, key_all, key_base, dir_all, dir_base,
                             dir_shift)
            plo[p] = lo
            phi[p] = hi
            ncand += hi - lo
        # 3. candidates' positions
        cq = _grow(cq, ncand)
        ct = _grow(ct, ncand)
        cj = _grow(cj, ncand)
        c = 0
        for p in range(npr):
            t = pt[p]
            for e in range(plo[p], phi[p]):
                cq[c] = pq[p]
                ct[c] = t
                cj[c] = pos_all[t * n + e]
                c += 1
        # 4. verify; candidates come query by query, so each query's results are contiguous
        od = _grow(od, total + ncand)
        op = _grow(op, total + ncand)
        for c in range(ncand):
            i = cq[c]
            t = ct[c]
            j = cj[c]
            q = Q[b0 + i]
            base = np.uint64(j) * Wu
            d = np.int64(_dist(X, base, q, W))
            if d > radius:
                continue
            dup = False
            for u in range(t):
                su = _popcount(_substring(X, base, tstart[u], tlen[u]) ^ qkey[i, u])
                if np.int64(su) <= rad[u]:
                    dup = True
                    break
            if dup:
                continue
            od[total] = d
            op[total] = j
            total += 1
            counts[b0 - qa + i] += 1
        # 5. order each query's run by (distance, position)
        end_ = total
        start_ = end_
        for i in range(nb):
            start_ -= counts[b0 - qa + i]
        for i in range(nb):
            cnt = counts[b0 - qa + i]
            if cnt > 1:
                keys = od[start_ : start_ + cnt].astype(np.int64) * n + op[start_ : start_ + cnt]
                order = np.argsort(keys)
                od[start_ : start_ + cnt] = od[start_ : start_ + cnt][order]
                op[start_ : start_ + cnt] = op[start_ : start_ + cnt][order]
            start_ += cnt
    return counts, od[:total].copy(), op[:total].copy()


# ---------------------------------------------------------------------------------------------------------------
# threads

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def num_threads() -> int:
    """Threads used by the kernels: numba's setting (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``)."""
    return max(1, int(numba.get_num_threads()))


def run_parallel(fn, nq: int, per_task: int = 64) -> list:
    """Call ``fn(qa, qb)`` over ``[0, nq)`` split into ranges of at least ``per_task`` queries, on up to
    :func:`num_threads` threads; return the results in query order.

    The calling thread takes ranges too, beside ``num_threads() - 1`` helpers from a shared pool, each taking the
    next range until none is left: one hand-off per helper rather than one future per range (8 ranges through
    futures cost ~170 us here, a third of the scan of a 1,000-query k-NN batch over 50,000 learned codes)."""
    global _pool
    threads = num_threads()
    ntasks = max(1, min(4 * threads, -(-nq // per_task)))
    cuts = [nq * t // ntasks for t in range(ntasks + 1)]
    ranges = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a] or [(0, 0)]
    if threads == 1 or len(ranges) == 1:
        return [fn(a, b) for a, b in ranges]
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(numba.config.NUMBA_NUM_THREADS, os.cpu_count() or 1), thread_name_prefix="dsh"
            )
    results: list = [None] * len(ranges)
    left = iter(range(len(ranges)))
    take = threading.Lock()

    def work() -> None:
        while True:
            with take:
                i = next(left, None)
            if i is None:
                return
            results[i] = fn(*ranges[i])

    # at most `threads` workers, the caller one of them, so numba.set_num_threads(t) is honoured
    helpers = [_pool.submit(work) for _ in range(min(threads, len(ranges)) - 1)]
    try:
        work()
    finally:
        # a helper that has not started has nothing left to do; every other one has stopped before the caller
        # goes on
        done = [None if h.cancel() else h.exception() for h in helpers]
    for error in done:
        if error is not None:
            raise error
    return results


def join_parts(parts: list) -> tuple:
    """Per-thread result tuples (as :func:`run_parallel` returns them, in query order) joined field by field."""
    return tuple(np.concatenate(field) for field in zip(*parts))


def join_ranges(parts: list, nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join per-thread ``(counts, D, P)`` into faiss-style ``(lims, D, P)``."""
    counts, D, P = join_parts(parts)
    lims = np.zeros(nq + 1, np.int64)
    np.cumsum(counts, out=lims[1:])
    return lims, D.astype(np.int32, copy=False), P.astype(np.int64, copy=False)


def as_words(codes: np.ndarray) -> np.ndarray:
    """``uint8[n, nbytes]`` -> ``uint64[n, ceil(nbytes / 8)]``: a view when the width is whole words and the data
    is aligned, else a zero-padded copy."""
    n, nbytes = codes.shape
    W = max(1, -(-nbytes // 8))
    if nbytes == 8 * W and codes.flags.c_contiguous and codes.ctypes.data % 8 == 0:
        return codes.view(np.uint64).reshape(n, W)
    out = np.zeros((n, 8 * W), np.uint8)
    out[:, :nbytes] = codes
    return out.view(np.uint64).reshape(n, W)

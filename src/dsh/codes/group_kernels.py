"""Numba kernels over *distinct* codes: each distinct code stands for a group of items (its weight), and a result
names distinct codes that are then expanded into item positions, ties by position.

Words and queries are laid out as in :mod:`dsh.codes.kernels`. A group layer is ``goff int[u + 1]`` and
``gpos int[n]``: group ``g``'s item positions are ``gpos[goff[g]:goff[g + 1]]``, ascending. An empty ``goff``
means the identity layer (every code distinct, distinct code ``g`` is item position ``g``).

The searches end in the same shape, per query a run of distinct codes ``(D, U)`` grouped by distance in ascending
order (within one distance in the order found):

- :func:`knn_scan_groups`: a flat scan keeping every distinct code within ``t``, the smallest distance whose
  codes together weigh at least ``k``, except at ``t`` itself the codes past the first ones k needs there (ties
  are broken by item position, and distinct codes are numbered in the order of their groups' first items);
- :func:`knn_scan_sorted`: the same over the codes in sorted order, skipping tiles and blocks, keeping every
  code at ``t`` (it meets them out of index order);
- :func:`mih_knn`: multi-index hashing with a radius that grows one step at a time (Norouzi et al.): step ``r``
  probes table ``r % m`` at substrings exactly ``r // m`` bits from the query's, so after step ``r`` every code
  within ``r`` has been found; it stops once the codes found within ``r`` weigh ``k``.

:func:`expand_knn` and :func:`expand_range` turn those runs into item positions ordered by (distance, position),
taking at the last distance only the smallest positions k needs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import (
    _CHUNK_BYTES,
    _SUB,
    _U0,
    _U1,
    _U2,
    _below_mask64,
    _below_mask_tail,
    _bucket,
    _chunk_min,
    _ctz,
    _dist,
    _grow,
    _popcount,
    _queries_per_block,
    _substring,
)

BLOCK = 16  # codes per block: the unit whose exact minimum distance a tile's vector pass gives
SUPER = 16  # blocks per tile: the unit bounded by the bits its codes agree on
TILE = BLOCK * SUPER  # codes per tile

__all__ = ["knn_scan_groups", "knn_scan_groups_into", "knn_scan_sorted", "mih_knn", "expand_knn", "expand_range",
           "exact_groups", "copy_rows"]


@njit(inline="always")
def _place_by_distance(od, op, total, srcd, srcp, size, lim):
    """Append the entries ``srcd[:size]`` / ``srcp[:size]`` whose distance is below ``lim`` to ``(od, op)`` from
    ``total`` on, grouped by distance in ascending order (a counting sort: distances are small; within one
    distance in the order found, which the expansion does not need sorted). ``od``/``op`` must have room for
    ``size`` more. Returns the new total."""
    start = np.zeros(lim + 1, np.int64)
    for e in range(size):
        if srcd[e] < lim:
            start[srcd[e] + 1] += 1
    for d in range(1, lim + 1):
        start[d] += start[d - 1]
    kept = start[lim]
    for e in range(size):
        d = srcd[e]
        if d < lim:
            x = total + start[d]
            start[d] += 1
            od[x] = d
            op[x] = srcp[e]
    return total + kept


@njit(inline="always")
def _weight(goff, g):
    """Items distinct code ``g`` stands for (1 in the identity layer)."""
    if goff.shape[0] == 0:
        return np.int64(1)
    return np.int64(goff[g + 1]) - np.int64(goff[g])


@njit(inline="always")
def _kth(hist, k, nbits):
    """Smallest distance ``t`` whose codes (with all closer ones) weigh at least ``k``; ``nbits`` if none."""
    cum = 0
    for t in range(nbits + 1):
        cum += hist[t]
        if cum >= k:
            return t
    return nbits


@njit(inline="always")
def _no_runs(nq):
    """``(counts int64[nq], D, U)``: empty outputs to grow, every query's run empty so far."""
    return np.zeros(max(nq, 0), np.int64), np.empty(1024, np.int32), np.empty(1024, np.int64)


@njit(inline="always")
def _take(bufd, bufp, size, d, g, goff, hist, weight):
    """Keep distinct code ``g`` at distance ``d`` as entry ``size``, its items weighed into ``hist`` and the
    total; returns ``(size + 1, new total weight)``."""
    bufd[size] = d
    bufp[size] = g
    wj = _weight(goff, g)
    hist[d] += wj
    return size + 1, weight + wj


@njit(inline="always")
def _lowered(weight, hist, lim, k):
    """``(weight, lim)`` after lowering the limit while the kept codes below the top distance still weigh ``k``
    (``hist[d]``: the weight kept at distance ``d``; call once the kept weight reaches ``k``)."""
    t = lim - 1
    while t > 0 and weight - hist[t] >= k:
        weight -= hist[t]
        t -= 1
    return weight, t + 1


@njit(inline="always")
def _compact(bufd, bufp, size, lim):
    """Keep the first ``size`` entries whose distance is below ``lim``, in place; returns how many."""
    m = 0
    for e in range(size):
        if bufd[e] < lim:
            bufd[m] = bufd[e]
            bufp[m] = bufp[e]
            m += 1
    return m


@njit(inline="always")
def _emit(od, op, total, bufd, bufp, size, lim):
    """Append a query's kept entries below ``lim`` to the output ``(od, op)`` from ``total`` on, grouped by
    distance in ascending order; returns ``(od, op, new total)``."""
    od = _grow(od, total + size)
    op = _grow(op, total + size)
    return od, op, _place_by_distance(od, op, total, bufd, bufp, size, lim)


@njit(inline="always")
def _tile_word(tiles, W, s, w):
    """Word ``w`` of the code at sorted place ``s`` in the tiled layout of :mod:`dsh.index.sorted_codes`: tile
    ``s // TILE`` holds ``W * TILE`` words, word ``w`` of slot ``j`` of its block ``b`` at ``(w * BLOCK + j) *
    SUPER + b``, so that one slot of all the tile's blocks lies in one run of words."""
    t = s // TILE
    r = s - t * TILE
    b = r // BLOCK
    j = r - b * BLOCK
    return tiles[t * W * TILE + (w * BLOCK + j) * SUPER + b]


@njit(inline="always")
def _lower_bound(tiles, W, u, q):
    """First sorted place among the ``u`` codes whose code is not below ``q`` (lexicographically, word 0 first)."""
    lo, hi = 0, u
    while lo < hi:
        mid = (lo + hi) >> 1
        below = False
        for w in range(W):
            a, b = _tile_word(tiles, W, mid, w), q[w]
            if a != b:
                below = a < b
                break
        if below:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def exact_groups(tiles, order, W, Q, goff, k):
    """Per query, the distinct code equal to it when that code alone stands for at least ``k`` items, else -1.

    ``tiles``: the distinct codes in sorted order, tiled (:func:`_tile_word`); ``order[s]`` the distinct code at
    sorted place ``s``. Such a query's k nearest are the code's first ``k`` item positions at distance 0: nothing
    else is that close, and the group's positions ascend. Returns ``int64[nq]``.
    """
    nq = Q.shape[0]
    out = np.full(nq, -1, np.int64)
    u = order.shape[0]
    for i in range(nq):
        s = _lower_bound(tiles, W, u, Q[i])
        if s < u:
            same = True
            for w in range(W):
                if _tile_word(tiles, W, s, w) != Q[i, w]:
                    same = False
                    break
            if same and _weight(goff, order[s]) >= k:
                out[i] = order[s]
    return out


@njit(inline="always")
def _tile_bounds(fixed, value, ntiles, W, q, out):
    """``out[t]``: the bits on which all the codes of tile ``t`` agree and differ from query ``q``, a lower bound
    on its distance to each of them."""
    Wu = np.uint64(W)
    for t in range(_U0, np.uint64(ntiles)):
        acc = _U0
        for w in range(_U0, Wu):
            acc += _popcount((value[t * Wu + w] ^ q[w]) & fixed[t * Wu + w])
        out[t] = np.uint16(acc)


@njit(inline="always")
def _slot_distance(tiles, base, W, q, j, b, nblk):
    """Distance from query ``q`` to the code in slot ``j`` of block ``b`` of the tile whose words start at
    ``base`` (``nblk`` blocks a tile; the layout of :func:`_tile_word`), as ``uint64``."""
    nbu = np.uint64(nblk)
    acc = _U0
    for w in range(W):
        acc += _popcount(tiles[base + np.uint64(w * BLOCK + j) * nbu + np.uint64(b)] ^ q[w])
    return acc


@njit(inline="always")
def _block_minima(tiles, base, W, q, out, nblk):
    """``out[b]``: the exact smallest distance from query ``q`` to the codes of block ``b`` of the tile whose words
    start at ``base``, for its ``nblk`` blocks at once. ``nblk`` comes in as a run-time value on purpose: with a
    constant trip count LLVM unrolls the loop over blocks instead of running it in vector lanes (2-3x slower)."""
    nbu = np.uint64(nblk)
    for b in range(nbu):
        m = np.uint64(1 << 30)
        for j in range(BLOCK):
            m = min(m, _slot_distance(tiles, base, W, q, j, b, nblk))
        out[b] = m


@njit(inline="always")
def _knn_scan_sorted(tiles, order, fixed, value, u, W, Q, qa, qb, k, nbits, goff, nblk):
    """The body of :func:`knn_scan_sorted`, inlined there once per word count."""
    nq = qb - qa
    counts, od, op = _no_runs(nq)
    tile = BLOCK * nblk
    ntiles = (u + tile - 1) // tile
    total = 0
    if u == 0 or nq <= 0:
        return counts, od[:0].copy(), op[:0].copy()
    bufd = np.empty(max(2 * k, 4 * BLOCK), np.int32)
    bufp = np.empty(max(2 * k, 4 * BLOCK), np.int64)
    hist = np.zeros(nbits + 2, np.int64)
    bounds = np.empty(ntiles, np.uint16)
    first = np.empty(nbits + 2, np.int64)
    visit = np.empty(ntiles, np.int64)
    mins = np.empty(nblk, np.uint64)
    head = np.empty(nbits + 2, np.int64)  # per minimum distance, a pending block (-1: none) ...
    after = np.empty(ntiles * nblk, np.int64)  # ... and the next pending block of the same minimum
    for i in range(qa, qb):
        q = Q[i]
        hist[:] = 0
        size = 0
        lim = nbits + 1  # keep a code iff distance < lim (= t + 1 once k weight is in)
        weight = 0  # weight of the kept codes with distance < lim
        # tiles in order of bound (a counting sort)
        _tile_bounds(fixed, value, ntiles, W, q, bounds)
        first[:] = 0
        for t in range(ntiles):
            first[np.int64(bounds[t]) + 1] += 1
        for d in range(1, nbits + 2):
            first[d] += first[d - 1]
        for t in range(ntiles):
            d = np.int64(bounds[t])
            visit[first[d]] = t
            first[d] += 1
        # Blocks are read nearest minimum first across tiles: a tile read puts its blocks below the limit in
        # buckets by minimum, and before the next tile every pending block nearer than that tile's bound is read.
        # So the limit falls as soon as it can, and the scan ends once neither a pending block nor a tile left can
        # hold a code below it.
        head[:] = -1
        low = nbits + 1  # no pending block has a smaller minimum
        v = 0
        while True:
            nxt = np.int64(bounds[visit[v]]) if v < ntiles else nbits + 1
            while low < lim and low < nxt:
                gb = head[low]
                if gb < 0:
                    low += 1
                    continue
                head[low] = after[gb]
                # room for the block before its loop: an array rebound inside it slows every pass
                if size + BLOCK > bufd.shape[0]:
                    size = _compact(bufd, bufp, size, lim)
                    if 2 * (size + BLOCK) > bufd.shape[0]:
                        bufd = _grow(bufd, 2 * (size + BLOCK))
                        bufp = _grow(bufp, 2 * (size + BLOCK))
                t = gb // nblk
                b = gb - t * nblk
                base = np.uint64(t * W * tile)
                s0 = t * tile + b * BLOCK
                for j in range(min(BLOCK, u - s0)):  # the last tile is padded: no place past u
                    d = np.int64(_slot_distance(tiles, base, W, q, j, b, nblk))
                    if d >= lim:
                        continue
                    size, weight = _take(bufd, bufp, size, d, np.int64(order[s0 + j]), goff, hist, weight)
                    if weight >= k:
                        weight, lim = _lowered(weight, hist, lim, k)
            if nxt >= lim:
                break
            t = visit[v]
            v += 1
            _block_minima(tiles, np.uint64(t * W * tile), W, q, mins, nblk)
            for b in range(nblk):
                m = np.int64(mins[b])
                if m < lim:
                    gb = t * nblk + b
                    after[gb] = head[m]
                    head[m] = gb
                    low = min(low, m)
        before = total
        od, op, total = _emit(od, op, total, bufd, bufp, size, lim)
        counts[i - qa] = total - before
    return counts, od[:total].copy(), op[:total].copy()


@njit(nogil=True, cache=True)
def knn_scan_sorted(tiles, order, fixed, value, u, W, Q, qa, qb, k, nbits, goff, nblk):
    """Per query ``qa <= i < qb``: every distinct code within the weighted k-th distance, by a scan over the
    distinct codes in sorted order that skips whole tiles and blocks; the same runs as :func:`knn_scan_groups`.

    ``tiles``: the ``u`` codes in sorted order, tiled (:func:`_tile_word`; the last tile padded with copies of the
    last code), ``nblk`` (= ``SUPER``) blocks a tile, ``order[s]`` the distinct code at sorted place ``s``. Tile
    ``t`` has ``fixed`` words (``uint64[ntiles * W]``), the bits on which all its codes agree, and ``value`` those
    bits: ``popcount((q ^ value) & fixed)`` bounds the distance from ``q`` to each of its codes from below, and a
    tile whose bound reaches the limit is not read. Reading a tile is one vector pass that gives each of its
    blocks' exact minimum distance; blocks are then read code by code, nearest minimum first, while it is below
    the limit. Sorted codes that share leading bits share tiles and blocks, so where codes cluster (learned codes)
    most are skipped.
    """
    if W == 1:
        return _knn_scan_sorted(tiles, order, fixed, value, u, 1, Q, qa, qb, k, nbits, goff, nblk)
    elif W == 2:
        return _knn_scan_sorted(tiles, order, fixed, value, u, 2, Q, qa, qb, k, nbits, goff, nblk)
    else:
        return _knn_scan_sorted(tiles, order, fixed, value, u, W, Q, qa, qb, k, nbits, goff, nblk)


@njit(inline="always")
def _keep_masked(X, q, W, m0, mask, k, goff, i, bufd, bufp, size, hist, weight, ncodes, lim, eff):
    """Query ``i`` of a block (its state in row ``i`` of the arrays of :func:`_knn_scan_groups`) keeps the codes
    ``m0 + j`` for the set bits ``j`` of ``mask`` that are still below its limit, lowering the limit as the kept
    weight reaches ``k``. Written in place: views of the rows cost more than the scan."""
    Wu = np.uint64(W)
    while mask:
        j = m0 + np.int64(_ctz(mask))
        mask &= mask - _U1
        d = np.int64(_dist(X, np.uint64(j) * Wu, q, W))
        if d >= eff[i]:
            continue
        e = size[i]
        bufd[i, e] = d
        bufp[i, e] = j
        size[i] = e + 1
        wj = _weight(goff, j)
        hist[i, d] += wj
        weight[i] += wj
        ncodes[i, d] += 1
        if weight[i] >= k:
            weight[i], lim[i] = _lowered(weight[i], hist[i], lim[i], k)
            t = lim[i] - 1
            full = ncodes[i, t] >= k - (weight[i] - hist[i, t])
            eff[i] = t if full else lim[i]


@njit(inline="always")
def _knn_scan_groups(X, u, W, Q, qa, qb, k, nbits, goff):
    """The body of :func:`knn_scan_groups`, inlined there once per word count."""
    nq = qb - qa
    counts, od, op = _no_runs(nq)
    total = 0
    if u == 0 or nq <= 0:
        return counts, od[:0].copy(), op[:0].copy()
    # room for what a query keeps and one more chunk: growing copies every query's row of the block (and
    # touches new pages), which cost more than the scan where it happened chunk after chunk
    cap = max(2 * k, 64) + 2 * _SUB
    B = _queries_per_block(u, W, cap)
    CH = max(_SUB, (_CHUNK_BYTES // (8 * W)) // _SUB * _SUB)
    for b0 in range(qa, qb, B):
        nb = min(B, qb - b0)
        bufd = np.empty((nb, cap), np.int32)
        bufp = np.empty((nb, cap), np.int64)
        hist = np.zeros((nb, nbits + 2), np.int64)
        size = np.zeros(nb, np.int64)
        lim = np.full(nb, nbits + 1, np.int64)  # t + 1 once k weight is in (t: the weighted k-th distance)
        weight = np.zeros(nb, np.int64)  # weight of the kept codes with distance < lim
        ncodes = np.zeros((nb, nbits + 2), np.int64)  # kept codes by distance
        # keep a code iff distance < eff: lim, or t once the codes kept at t are as many as k needs there. Codes
        # come in index order, which is the order of their groups' first items, so the j-th smallest position
        # at t lies in one of the first j codes at t: later ones cannot be needed.
        eff = np.full(nb, nbits + 1, np.int64)
        for c0 in range(0, u, CH):
            c1 = min(c0 + CH, u)
            for i in range(nb):
                q = Q[b0 + i]
                for s0 in range(c0, c1, _SUB):
                    s1 = min(s0 + _SUB, c1)
                    if np.int64(_chunk_min(X, q, W, np.uint64(s0), np.uint64(s1))) >= eff[i]:
                        continue
                    # a chunk that may hold a code to keep: room for all of it before its loops (an array
                    # rebound inside them slows every pass): drop what the lowered limit excludes; grow when
                    # most entries stay
                    if size[i] + (s1 - s0) > bufd.shape[1]:
                        m = _compact(bufd[i], bufp[i], size[i], lim[i])
                        size[i] = m
                        if 2 * (m + s1 - s0) > bufd.shape[1]:
                            grown = max(2 * bufd.shape[1], 2 * (m + s1 - s0))
                            nd = np.empty((nb, grown), np.int32)
                            npp = np.empty((nb, grown), np.int64)
                            nd[:, : bufd.shape[1]] = bufd
                            npp[:, : bufd.shape[1]] = bufp
                            bufd = nd
                            bufp = npp
                    # then 64 codes at a time, one vector pass giving the mask of those below the limit, only
                    # they read one by one (the limit may fall meanwhile)
                    full_end = s0 + (s1 - s0) // 64 * 64
                    for m0 in range(s0, full_end, 64):
                        mask = _below_mask64(X, q, W, np.uint64(m0), np.uint64(eff[i]))
                        if mask:
                            _keep_masked(X, q, W, m0, mask, k, goff, i, bufd, bufp, size, hist, weight, ncodes, lim,
                                         eff)
                    if full_end < s1:  # (apart: a tail in the same loop stops the vector pass above)
                        mask = _below_mask_tail(X, q, W, np.uint64(full_end), s1 - full_end, np.uint64(eff[i]))
                        if mask:
                            _keep_masked(X, q, W, full_end, mask, k, goff, i, bufd, bufp, size, hist, weight, ncodes,
                                         lim, eff)
        for i in range(nb):
            before = total
            od, op, total = _emit(od, op, total, bufd[i], bufp[i], size[i], lim[i])
            counts[b0 - qa + i] = total - before
    return counts, od[:total].copy(), op[:total].copy()


@njit(nogil=True, cache=True)
def knn_scan_groups(X, u, W, Q, qa, qb, k, nbits, goff):
    """Per query ``qa <= i < qb``: every distinct code nearer than the weighted k-th distance ``t`` and, at ``t``,
    at least the first codes (in index order) that k needs there, by a flat scan in index order. Distinct codes
    are ordered by their groups' first items, so no later code at ``t`` can hold one of the smallest positions.
    A chunk of 256 codes whose smallest distance (one vector pass) reaches the limit is skipped; the others are
    read 64 codes at a time, a vector pass giving the mask of those below the limit, and only they are kept one
    by one (on the CIFAR-10 48-bit codes about 1.7x / 2x faster at k = 10 / 100 than reading such a chunk code
    by code).

    ``goff``: the group layer's offsets, which give the items each code stands for. Returns
    ``counts int64[qb-qa]``, ``D int32[total]``, ``U int64[total]``, each query's run grouped by distance in
    ascending order.
    """
    if W == 1:
        return _knn_scan_groups(X, u, 1, Q, qa, qb, k, nbits, goff)
    elif W == 2:
        return _knn_scan_groups(X, u, 2, Q, qa, qb, k, nbits, goff)
    else:
        return _knn_scan_groups(X, u, W, Q, qa, qb, k, nbits, goff)


@njit(nogil=True, cache=True)
def mih_knn(X, u, W, Q, qa, qb, k, nbits, goff, nitems, budget, probe_ns, cand_ns, tstart, tlen, tdense, off_all,
            off_base, key_all, key_base, dir_all, dir_base, dir_shift, pos_all):
    """Per query ``qa <= i < qb``: every distinct code within the weighted k-th distance, by multi-index hashing
    with a growing radius; the same runs as :func:`knn_scan_groups`.

    A query whose estimated work (``probe_ns`` per probe plus ``cand_ns`` per candidate) passes ``budget`` ns is
    given up: its count is ``-1`` and it has no entries (the caller scans it). Tables as in
    :func:`dsh.codes.kernels.mih_range`. Returns ``counts``, ``D``, ``U`` and ``work float64[qb-qa]`` (ns).

    A code is found at the first step whose table holds it within that step's substring distance: with
    ``h_t`` its substring distance in table ``t``, at step ``min_t(h_t * m + t)``; a candidate met at a later
    step is skipped, so no per-query "seen" set is needed. Once the codes found weigh ``nitems`` (all of them) the
    search stops whatever the radius.
    """
    m = tstart.shape[0]
    nq = qb - qa
    counts = np.zeros(nq, np.int64)
    work = np.zeros(nq, np.float64)
    od = np.empty(1024, np.int32)
    op = np.empty(1024, np.int64)
    fd = np.empty(1024, np.int32)
    fj = np.empty(1024, np.int64)
    total = 0
    Wu = np.uint64(W)
    qkey = np.empty(m, np.uint64)
    hist = np.zeros(nbits + 2, np.int64)
    mu = np.int64(m)
    for i in range(qa, qb):
        q = Q[i]
        for t in range(m):
            qkey[t] = _substring(q, _U0, tstart[t], tlen[t])
        hist[:] = 0
        nf = 0
        cost = 0.0
        cum = 0
        found = 0
        gave_up = False
        kth = nbits
        for r in range(nbits + 1):
            t = r % m
            s = r // m
            if s <= tlen[t]:
                L = tlen[t]
                mask = (_U1 << np.uint64(s)) - _U1
                end = _U1 << np.uint64(L)
                while mask < end:
                    lo, hi = _bucket(qkey[t] ^ mask, t, tdense, off_all, off_base, key_all, key_base, dir_all,
                                     dir_base, dir_shift)
                    cost += probe_ns + cand_ns * (hi - lo)
                    if hi > lo:
                        fd = _grow(fd, nf + (hi - lo))
                        fj = _grow(fj, nf + (hi - lo))
                    for e in range(lo, hi):
                        j = pos_all[t * u + e]
                        base = np.uint64(j) * Wu
                        first = True
                        for v in range(m):
                            if v != t:
                                hv = np.int64(_popcount(_substring(X, base, tstart[v], tlen[v]) ^ qkey[v]))
                                if hv * mu + v < r:
                                    first = False
                                    break
                        if first:
                            d = np.int64(_dist(X, base, q, W))
                            nf, found = _take(fd, fj, nf, d, j, goff, hist, found)
                    if s == 0:
                        break
                    c = mask & (~mask + _U1)
                    r_ = mask + c
                    mask = (((r_ ^ mask) >> _U2) // c) | r_
                    if cost > budget:
                        break
            if cost > budget:
                gave_up = True
                break
            cum += hist[r]  # every code within r is found now, so hist[0..r] is final
            if cum >= k or found == nitems:
                kth = _kth(hist, k, nbits)
                break
        work[i - qa] = cost
        if gave_up:
            counts[i - qa] = -1
            continue
        od = _grow(od, total + nf)
        op = _grow(op, total + nf)
        a = total
        total = _place_by_distance(od, op, total, fd, fj, nf, kth + 1)
        counts[i - qa] = total - a
    return counts, od[:total].copy(), op[:total].copy(), work


@njit(inline="always")
def _members(goff, gpos, g, out, o, limit):
    """Write up to ``limit`` smallest positions of group ``g`` at ``out[o:]``; returns how many."""
    if goff.shape[0] == 0:
        out[o] = g
        return 1
    a = np.int64(goff[g])
    b = min(np.int64(goff[g + 1]), a + limit)
    for e in range(a, b):
        out[o + e - a] = gpos[e]
    return b - a


@njit(inline="always")
def _sift_down(key, cur, end, n, i):
    """Restore the min-heap on ``key`` (payloads ``cur``, ``end`` move with it) below entry ``i`` of ``n``."""
    while True:
        m = 2 * i + 1
        if m >= n:
            return
        if m + 1 < n and key[m + 1] < key[m]:
            m += 1
        if key[i] <= key[m]:
            return
        key[i], key[m] = key[m], key[i]
        cur[i], cur[m] = cur[m], cur[i]
        end[i], end[m] = end[m], end[i]
        i = m


@njit(inline="always")
def _merge_groups(goff, gpos, U, e, f, need, key, cur, end, outP, o):
    """The ``need`` smallest positions of groups ``U[e:f]`` (each group's positions ascend) in ascending order,
    written at ``outP[o:]``, by a heap over the groups' next positions (``key``, ``cur``, ``end``: room for
    ``f - e`` entries): ``need * log(f - e)`` steps rather than a sort of up to ``need * (f - e)`` candidates.
    Returns how many were written."""
    n = 0
    for x in range(e, f):
        a = np.int64(goff[U[x]])
        cur[n] = a
        end[n] = min(np.int64(goff[U[x] + 1]), a + need)
        key[n] = gpos[a]
        n += 1
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(key, cur, end, n, i)
    got = 0
    while got < need and n > 0:
        outP[o + got] = key[0]
        got += 1
        c = cur[0] + 1
        if c < end[0]:
            cur[0] = c
            key[0] = gpos[c]
        else:
            n -= 1
            key[0] = key[n]
            cur[0] = cur[n]
            end[0] = end[n]
        _sift_down(key, cur, end, n, 0)
    return got


@njit(inline="always")
def _expand_knn(lims, D, U, goff, gpos, k, outD, outP, rows, ids, qa, qb):
    """The body of :func:`expand_knn`, also inlined after the scan in :func:`knn_scan_groups_into`."""
    most = 1  # the longest run: room for a heap over its codes (or, one code per item, its positions)
    for i in range(qa, qb):
        most = max(most, np.int64(lims[i + 1] - lims[i]))
    key = np.empty(most, np.int64)
    cur = np.empty(most, np.int64)
    end = np.empty(most, np.int64)
    grouped = goff.shape[0] > 0
    for i in range(qa, qb):
        got = 0
        e = lims[i]
        stop = lims[i + 1]
        r = i if rows.shape[0] == 0 else rows[i]
        row = outP[r]
        while e < stop and got < k:
            d = D[e]
            f = e
            while f < stop and D[f] == d:
                f += 1
            need = k - got
            if not grouped:  # each code is one item, its position: the level's smallest positions
                nb = f - e
                key[:nb] = U[e:f]
                if nb > 1:
                    key[:nb].sort()
                take = min(nb, need)
                row[got : got + take] = key[:take]
            elif f - e == 1:
                a = np.int64(goff[U[e]])
                take = min(np.int64(goff[U[e] + 1]) - a, need)
                row[got : got + take] = gpos[a : a + take]
            else:
                take = _merge_groups(goff, gpos, U, e, f, need, key, cur, end, row, got)
            outD[r, got : got + take] = d
            got += take
            e = f
        if ids.shape[0] > 0:
            for j in range(got):
                row[j] = ids[row[j]]
        outD[r, got:] = -1
        row[got:] = -1


@njit(nogil=True, cache=True)
def expand_knn(lims, D, U, goff, gpos, k, outD, outP, rows, ids, qa, qb):
    """Runs of distinct codes (``lims int64[nq + 1]``, ``D``, ``U``; ordered by distance) -> the k nearest items
    of queries ``qa <= i < qb``, ordered by (distance, position), into row ``rows[i]`` (``i`` where ``rows`` is
    empty) of ``outD int32[m, k]`` and ``outP int64[m, k]`` (``-1`` past the results): positions, or their ids
    ``ids[position]`` where ``ids`` (``int64[n]``, ascending with position) is not empty. At each distance only as
    many positions per group as k still needs are read."""
    _expand_knn(lims, D, U, goff, gpos, k, outD, outP, rows, ids, qa, qb)


@njit(nogil=True, cache=True)
def knn_scan_groups_into(X, u, W, Q, qa, qb, k, nbits, goff, gpos, outD, outP, rows, ids):
    """:func:`knn_scan_groups` over queries ``qa <= i < qb``, its runs expanded by :func:`expand_knn` into row
    ``rows[i - qa]`` of ``outD`` / ``outP`` (``rows int64[qb - qa]``; positions or, given ``ids``, their ids): one
    call a task, as a thread's share of a batch takes it."""
    counts, D, U = knn_scan_groups(X, u, W, Q, qa, qb, k, nbits, goff)
    lims = np.zeros(counts.shape[0] + 1, np.int64)
    for i in range(counts.shape[0]):
        lims[i + 1] = lims[i] + counts[i]
    _expand_knn(lims, D, U, goff, gpos, k, outD, outP, rows, ids, 0, counts.shape[0])


@njit(nogil=True, cache=True)
def copy_rows(D, I, src, a, b):
    """Rows ``a <= r < b`` of a batch's answer ``D int32[nq, k]``, ``I int64[nq, k]`` copied from rows ``src[r]``
    (where ``src[r] != r``): a query the batch repeats gets the answer written for its first appearance."""
    k = D.shape[1]
    for r in range(a, b):
        s = src[r]
        if s != r:
            for j in range(k):
                D[r, j] = D[s, j]
                I[r, j] = I[s, j]


@njit(nogil=True, cache=True)
def expand_range(lims, D, U, goff, gpos):
    """Runs of distinct codes ordered by distance -> every item, per query ordered by (distance, position).
    Returns ``counts int64[nq]``, ``D int32[total]``, ``P int64[total]``."""
    nq = lims.shape[0] - 1
    total = 0
    for e in range(lims[nq]):
        total += _weight(goff, U[e])
    outD = np.empty(total, np.int32)
    outP = np.empty(total, np.int64)
    counts = np.zeros(nq, np.int64)
    o = 0
    big = np.int64(1) << 62
    for i in range(nq):
        a = o
        e = lims[i]
        while e < lims[i + 1]:
            d = D[e]
            s = o
            while e < lims[i + 1] and D[e] == d:
                o += _members(goff, gpos, U[e], outP, o, big)
                e += 1
            outP[s:o].sort()
            outD[s:o] = d
        counts[i] = o - a
    return counts, outD, outP

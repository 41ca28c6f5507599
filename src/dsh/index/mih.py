"""Multi-index hashing (MIH) for exact Hamming range search.

Norouzi, Punjani and Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing" (CVPR 2012, TPAMI
2014); faiss's ``IndexBinaryMultiHash`` is the same idea with hash tables.

Split the ``nbits`` code bits into ``nsub`` contiguous substrings and index each substring in a table. If a code
is within ``radius`` of a query then, by the pigeonhole principle, one of its substrings is within
``radius // nsub`` of the query's (Norouzi's Prop. 2 sharpens this per table, see
:func:`search_radii`). So a search probes every table at the few keys near the query's substring, and checks
each code found there with its full distance: the results are exactly the flat scan's.

Tables are compressed sparse rows: the codes' positions grouped by key, positions ascending within a key, and
per table either a dense offsets array over all ``2**length`` keys (when that is no larger than about the
positions) or the sorted distinct keys with their offsets, found through a directory over the keys' top bits.
Substrings are at most 32 bits.

k nearest neighbours grow the radius one step at a time (:func:`dsh.codes.group_kernels.mih_knn`) until the codes
found within it weigh ``k``; a query that would cost more than a flat scan is given up and scanned instead
(:func:`plan_knn` decides from a pilot of a few queries, measured in the units of the constants below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..codes import group_kernels as G
from ..codes import kernels as K
from ..errors import InputError

__all__ = ["MIHTables", "KnnPlan", "default_nsub", "split_bits", "search_radii", "prefer_mih", "plan_knn",
           "flat_knn_ns", "pilot_size", "MIH_TIME", "SCAN_TIME"]

# Rough costs, in nanoseconds of one thread, measured on the benchmark machine (a 2-core Xeon with AVX-512
# VPOPCNTDQ, benchmarks/speed/knn_scale.py) at 1M x 64-bit random and clustered codes and the 48-bit CIFAR-10 codes
# replicated to 10M (where 150 ns a candidate kept the scan at a third of MIH's speed); the machine was shared
# (load average near 10). They only steer `prefer_mih` and `plan_knn`, never the results, and a k-NN plan uses them
# only until it has timed the real thing: the index times its scans, and the real time of scans and of MIH against
# these estimates is kept in SCAN_TIME and MIH_TIME (a machine, or a table too large for the cache, can be several
# times off them), so that the two sides of a plan are compared in the same, real, units.
_FLAT_NS_PER_WORD = 0.8  # one 64-bit word of one code in a vectorised scan, per query
_PROBE_NS = 350.0  # one table probe: cache misses into the offsets and positions, or a binary search
_CANDIDATE_NS = 60.0  # one candidate: its code fetched from a random place, its substrings and distance
_BUILD_NS = 100.0  # one code into one table
_SCAN_START_NS = 2000.0  # a scan's fixed cost per query (buffers, the final sort)
_BUILD_PAYBACK = 10.0  # build tables for a k-NN batch only if its scan would take 10x the build


def split_bits(nbits: int, nsub: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts int64[nsub], lengths int64[nsub])``: contiguous substrings, the first ``nbits % nsub`` one bit
    longer."""
    nbits, nsub = int(nbits), int(nsub)
    if not 1 <= nsub <= nbits:
        raise InputError(f"nsub must be between 1 and nbits={nbits}, got {nsub}")
    lengths = np.full(nsub, nbits // nsub, np.int64)
    lengths[: nbits % nsub] += 1
    if lengths.max() > 32:
        raise InputError(f"nsub={nsub} gives {int(lengths.max())}-bit substrings; use nsub >= {-(-nbits // 32)}")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return starts, lengths


def default_nsub(nbits: int, n: int) -> int:
    """Norouzi's rule ``nsub ~ nbits / log2(n)``: substrings about as long as ``log2(n)`` bits, so a bucket holds
    about one random code; at most 32 bits per substring."""
    target = max(8.0, math.log2(max(n, 2)))
    nsub = max(1, round(int(nbits) / target))
    return int(min(max(nsub, -(-int(nbits) // 32)), int(nbits)))


def search_radii(radius: int, nsub: int) -> np.ndarray:
    """Per-table search radii for a query radius (Norouzi et al., Prop. 2).

    With ``radius = s * nsub + a`` (``0 <= a < nsub``): a code within ``radius`` has some substring ``t <= a``
    within ``s``, or some substring ``t > a`` within ``s - 1`` (else its distance would be at least
    ``(a + 1)(s + 1) + (nsub - a - 1) s = radius + 1``). ``-1`` means the table is not probed.
    """
    s, a = divmod(int(radius), int(nsub))
    return np.where(np.arange(nsub) <= a, s, s - 1).astype(np.int64)


def _probes(radius: int, lengths: np.ndarray) -> np.ndarray:
    """Number of keys probed in each table."""
    rad = search_radii(radius, len(lengths))
    return np.array([sum(math.comb(int(L), r) for r in range(0, min(int(R), int(L)) + 1)) if R >= 0 else 0
                     for L, R in zip(lengths, rad)], dtype=np.float64)


@dataclass(frozen=True)
class MIHTables:
    """MIH tables over ``n`` codes of ``nbits`` bits, built by :meth:`build`; arrays concatenated over tables
    so one kernel can take them all."""

    nbits: int
    n: int
    starts: np.ndarray  # int64[nsub], first bit of each substring
    lengths: np.ndarray  # int64[nsub], bits per substring (<= 32)
    dense: np.ndarray  # bool[nsub], offsets over all 2**length keys (else sorted distinct keys)
    offsets: np.ndarray  # int32/int64, all tables' offsets, relative to the table's positions
    offset_base: np.ndarray  # int64[nsub], where each table's offsets start
    keys: np.ndarray  # uint32, sorted distinct keys of the sparse tables
    key_base: np.ndarray  # int64[nsub]
    directory: np.ndarray  # int32/int64, per sparse table: distinct keys below each value of the top key bits
    directory_base: np.ndarray  # int64[nsub]
    directory_shift: np.ndarray  # int64[nsub], key >> shift = the top bits
    positions: np.ndarray  # int32/int64[nsub * n], table t's positions at [t*n, (t+1)*n), grouped by key
    occupancy: np.ndarray  # float64[nsub], sum(bucket_size**2) / n: the bucket size a database code sees

    @property
    def nsub(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        """Memory held by the tables, in bytes."""
        return int(self.offsets.nbytes + self.keys.nbytes + self.directory.nbytes + self.positions.nbytes)

    @classmethod
    def build(cls, words: np.ndarray, nbits: int, nsub: int | None = None) -> "MIHTables":
        """Index ``words`` (``uint64[n, W]`` from :func:`dsh.codes.kernels.as_words`) in ``nsub`` tables
        (default :func:`default_nsub`)."""
        n, W = words.shape
        nsub = default_nsub(nbits, n) if nsub is None else int(nsub)
        starts, lengths = split_bits(nbits, nsub)
        idt = np.int32 if n < 2**31 - 1 else np.int64
        probe = np.zeros(1, idt)
        X = words.reshape(-1)
        dense = np.zeros(nsub, bool)
        offs, keys, dirs, positions = [], [], [], []
        shift = np.zeros(nsub, np.int64)
        occupancy = np.zeros(nsub, np.float64)
        for t in range(nsub):
            sub = K.substring_keys(X, n, W, int(starts[t]), int(lengths[t]))
            nbuckets = 1 << int(lengths[t])
            if nbuckets <= max(2 * n, 1 << 16):  # offsets no larger than about the positions: direct addressing
                off, pos = K.dense_table(sub, nbuckets, probe)
                dense[t] = True
            else:
                pos = np.argsort(sub, kind="stable").astype(idt)
                skeys = sub[pos]
                first = np.flatnonzero(np.r_[True, skeys[1:] != skeys[:-1]]) if n else np.zeros(0, np.int64)
                off = np.r_[first, n].astype(idt)
                distinct = skeys[first]
                # a directory over the top bits, about one distinct key per entry, so that a lookup is one
                # cache miss and a short search instead of a binary search over all the keys
                top = int(min(lengths[t], max(1, int(np.log2(max(len(distinct), 2))))))
                shift[t] = lengths[t] - top
                dirs.append(np.searchsorted(distinct >> np.uint32(shift[t]), np.arange((1 << top) + 1)).astype(idt))
                keys.append(distinct)
            sizes = np.diff(off).astype(np.float64)
            occupancy[t] = float(sizes @ sizes) / max(n, 1)
            offs.append(off)
            positions.append(pos)

        def base(parts):
            return np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]]).astype(np.int64)

        key_base = np.zeros(nsub, np.int64)
        key_base[~dense] = base(keys) if keys else []
        directory_base = np.zeros(nsub, np.int64)
        directory_base[~dense] = base(dirs) if dirs else []
        return cls(
            nbits=int(nbits),
            n=int(n),
            starts=starts,
            lengths=lengths,
            dense=dense,
            offsets=np.concatenate(offs).astype(idt),
            offset_base=base(offs),
            keys=np.concatenate(keys).astype(np.uint32) if keys else np.zeros(0, np.uint32),
            key_base=key_base,
            directory=np.concatenate(dirs).astype(idt) if dirs else np.zeros(1, idt),
            directory_base=directory_base,
            directory_shift=shift,
            positions=np.concatenate(positions).astype(idt) if positions else np.zeros(0, idt),
            occupancy=occupancy,
        )

    def search(self, words: np.ndarray, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray,
                                                                                  np.ndarray]:
        """Range search over the indexed ``words`` (``uint64[n, W]``) for ``queries`` (``uint64[nq, W]``).

        Returns ``(lims int64[nq+1], D int32[total], P int64[total])``, positions, each query's run ordered by
        (distance, position).
        """
        if words.shape[0] != self.n:
            raise RuntimeError("MIH tables are stale: the index changed since they were built")
        X = words.reshape(-1)
        W = words.shape[1]
        radius = int(min(radius, self.nbits))
        rad = search_radii(radius, self.nsub)

        def run(a, b):
            return K.mih_range(X, self.n, W, queries, a, b, radius, rad, self.starts, self.lengths, self.dense,
                               self.offsets, self.offset_base, self.keys, self.key_base, self.directory,
                               self.directory_base, self.directory_shift, self.positions)

        return K.join_ranges(K.run_parallel(run, len(queries), per_task=256), len(queries))

    def cost_ns(self, radius: int) -> float:
        """Estimated nanoseconds per query: probes plus candidates, from the tables' real bucket sizes."""
        return mih_cost_ns(radius, self.lengths, self.occupancy)

    def knn(self, words: np.ndarray, queries: np.ndarray, k: int, goff: np.ndarray, nitems: int, budget_ns: float,
            parallel: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Exact k-NN over the indexed distinct codes ``words`` (``uint64[u, W]``) whose groups have offsets
        ``goff`` (empty: one item each; ``nitems`` in all), for ``queries`` (``uint64[nq, W]``).

        Returns ``(counts int64[nq], D int32[total], U int64[total], work float64[nq])``: per query the distinct
        codes within its weighted k-th distance, grouped by distance in ascending order (see
        :func:`dsh.codes.group_kernels.mih_knn`); ``counts = -1`` where the estimated work passed ``budget_ns``.
        """
        if words.shape[0] != self.n:
            raise RuntimeError("MIH tables are stale: the index changed since they were built")
        X, W = words.reshape(-1), words.shape[1]

        def run(a, b):
            return G.mih_knn(X, self.n, W, queries, a, b, int(k), self.nbits, goff, int(nitems),
                             float(budget_ns), _PROBE_NS, _CANDIDATE_NS, self.starts, self.lengths, self.dense,
                             self.offsets, self.offset_base, self.keys, self.key_base, self.directory,
                             self.directory_base, self.directory_shift, self.positions)

        parts = K.run_parallel(run, len(queries), per_task=16) if parallel else [run(0, len(queries))]
        return K.join_parts(parts)


def mih_cost_ns(radius: int, lengths: np.ndarray, occupancy: np.ndarray) -> float:
    probes = _probes(radius, lengths)
    return float(probes.sum() * _PROBE_NS + probes @ occupancy * _CANDIDATE_NS)


def flat_knn_ns(u: int, nbits: int) -> float:
    """Estimated nanoseconds per query of a flat k-NN scan over ``u`` distinct codes."""
    return u * -(-int(nbits) // 64) * _FLAT_NS_PER_WORD + _SCAN_START_NS


@dataclass(frozen=True)
class KnnPlan:
    """How :meth:`dsh.index.flat.HammingIndex.search` answers a k-NN batch, and why (``index.explain``).

    ``method``: ``"flat"`` or ``"mih"`` (queries MIH gives up on are scanned). ``flat_ns`` / ``mih_ns``: nanoseconds
    per query of one thread: the scan's as the index timed it for this ``k`` (until it has, the estimate scaled by
    :data:`SCAN_TIME`), MIH's from the pilot's finished queries, its estimated work scaled by :data:`MIH_TIME`
    (``None`` without a pilot).
    ``budget_ns``: what MIH may spend on one query before it is given up, in MIH's estimated units.
    """

    method: str
    reason: str
    flat_ns: float
    mih_ns: float | None = None
    pilot: int = 0  # queries tried by MIH with the pilot's budget
    pilot_given_up: int = 0
    budget_ns: float = 0.0  # MIH's budget per query for the rest of the batch
    build_tables: bool = False  # whether the tables are built for this batch

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def plan_knn(u: int, nbits: int, nq: int, tables: MIHTables | None, method: str = "auto") -> KnnPlan:
    """The plan before any pilot: the method forced, or whether MIH may pay at all (its tables' build counted
    when they are not built). :meth:`HammingIndex.search` then runs the pilot (:func:`pilot_size`) and keeps MIH
    if most of its queries finish, on average at less than half a scan's cost."""
    flat = flat_knn_ns(u, nbits)
    if method == "flat" or u == 0:
        return KnnPlan("flat", "asked for", flat)
    if method == "mih":
        return KnnPlan("mih", "asked for", flat, budget_ns=float("inf"), build_tables=tables is None)
    if u < 4096 or nq == 0:
        return KnnPlan("flat", f"{u} distinct codes: a scan is cheap", flat)
    if tables is None:
        build = u * default_nsub(nbits, u) * _BUILD_NS
        if nq * flat < _BUILD_PAYBACK * build:
            return KnnPlan("flat", f"no MIH tables, and building them (~{build / 1e6:.0f} ms) would cost more than "
                                   f"1/{_BUILD_PAYBACK:g} of this batch's scan", flat)
    return KnnPlan("mih", "pilot pending", flat, budget_ns=flat, build_tables=tables is None)


class _TimeRatio:
    """Real time over estimated work, a running mean over what was timed (one per process: the costs depend on the
    machine more than on the index)."""

    def __init__(self) -> None:
        self._ratio: float | None = None

    @property
    def ratio(self) -> float:
        return 1.0 if self._ratio is None else self._ratio

    def observe(self, estimated_ns: float, real_ns: float) -> None:
        if estimated_ns > 1e5:  # at least 0.1 ms of estimated work, or the timer's noise would lead
            r = real_ns / estimated_ns
            self._ratio = r if self._ratio is None else 0.7 * self._ratio + 0.3 * r


MIH_TIME = _TimeRatio()  # MIH's k-NN against its estimated work
SCAN_TIME = _TimeRatio()  # a scan over distinct codes (not their sorted copy) against flat_knn_ns

PILOT_QUERIES = 16
PILOT_BUDGET = 0.5  # of a scan's cost: what a pilot query may spend in MIH before it is given up ...
PILOT_SHARE = 0.05  # ... and at most this share of the batch's scan for the whole pilot, so that where MIH does
# not pay (random codes, a large k) auto costs at most about 5% more than the scan
PILOT_REUSE = 16  # batches of one k that take the scan without a pilot after full-budget ones found MIH would not
# pay; so a batch whose pilot may spend the full budget within PILOT_SHARE of these batches' scans together gets it
PILOT_AGREE = 2  # full-budget pilots in a row that must find so before their verdict is reused


def pilot_size(nq: int, threads: int = 1) -> tuple[int, float]:
    """``(queries, budget as a share of one query's scan)`` of the pilot for a batch of ``nq`` queries whose scan
    would run on ``threads`` threads (the pilot runs on one). The budget is :data:`PILOT_BUDGET` where that stays
    within :data:`PILOT_SHARE` of :data:`PILOT_REUSE` such batches (a verdict for the scan is then reused that
    long), else what keeps the pilot within that share of this batch alone."""
    p = min(nq, PILOT_QUERIES)
    per_batch = PILOT_SHARE * nq / max(p, 1) / max(threads, 1)
    return p, PILOT_BUDGET if per_batch * PILOT_REUSE >= PILOT_BUDGET else per_batch


def prefer_mih(n: int, nbits: int, radius: int, nq: int, tables: MIHTables | None) -> bool:
    """Whether MIH beats a flat scan for ``nq`` queries, counting the build when ``tables`` is None.

    A rough cost model (constants at the top of this module); results are identical either way.
    """
    if n < 4096 or nq == 0:
        return False
    words = -(-int(nbits) // 64)
    flat = n * words * _FLAT_NS_PER_WORD
    if tables is not None:
        return tables.cost_ns(radius) < flat
    nsub = default_nsub(nbits, n)
    _, lengths = split_bits(nbits, nsub)
    occupancy = 1.0 + n / np.exp2(lengths)  # random codes: the code itself plus its share of the others
    saving = nq * (flat - mih_cost_ns(radius, lengths, occupancy))
    return saving > n * nsub * _BUILD_NS

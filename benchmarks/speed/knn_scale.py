"""Exact k-NN and radius search at scale: the flat scan, multi-index hashing and the automatic choice.

    python benchmarks/speed/knn_scale.py --sizes 1000000 10000000 100000000 --threads 2 --out benchmarks/results

For each database (``--sizes`` codes of 64 bits, 128 bits up to ``--max-128``; kinds ``random``, ``clustered``: n/1000
centres with each bit flipped with probability ``--flip-p``, and ``cifar48`` / ``cifar12``: the committed CIFAR-10
learned database codes, as they are at 50,000 and replicated to the larger sizes with each copy's bits flipped with
probability 1/nbits), measures the build (``add`` then ``build_mih``), the memory of the index's structures per item
after the searches (:attr:`HammingIndex.nbytes`: distinct codes, ids, groups, tables, the sorted copy) and queries/s for
k = 1 / 10 / 100 and radius 2 by ``method="flat"`` (the scan over distinct codes, by blocks of their sorted copy where
the index keeps one and holds 32,768 distinct codes or more), ``"mih"`` and ``"auto"`` (which also looks up queries
equal to a code holding k items), beside the scan over every item as dsh did before its distinct-code layer
(``item scan``, each query scanned even when the batch repeats it) and faiss ``IndexBinaryFlat`` where it fits
(``--faiss-max``). Every result of mih and auto is checked equal to flat's. Queries: held-out codes near the data
(clustered: a database code with bits flipped; CIFAR: the committed query codes), random codes for random data.

Also measures, at the first size's random 64-bit codes, the scan against faiss at k = 100 and this CPU's memory
bandwidth and popcount bounds. Writes ``knn_scale.json`` and ``knn_scale.md`` (atomically) after each database,
so a run cut short keeps what it measured. Data is made in chunks as uint8 codes, so 100M x 64 bits fits in 24 GiB.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from dsh import HammingIndex  # noqa: E402
from dsh.codes import kernels as K  # noqa: E402
from dsh.codes.codefile import load_codes  # noqa: E402

CIFAR = {"cifar48": 48, "cifar12": 12}
CHUNK = 1_000_000


def cifar_dir(nbits: int) -> Path:
    return common.repo_root() / "benchmarks" / "results" / "paper_cifar10" / f"bits{nbits}"


def flips(rng, n: int, nbits: int, p: float) -> np.ndarray:
    return np.packbits(rng.random((n, nbits), dtype=np.float32) < p, axis=1, bitorder="little")


def make_data(kind: str, n: int, nbits: int, nq: int, flip_p: float, seed: int = 0):
    """``(codes uint8[n, w], queries uint8[nq, w])``, made a million rows at a time."""
    rng = np.random.default_rng(seed)
    if kind in CIFAR:
        db = load_codes(cifar_dir(CIFAR[kind]) / "database.npz").codes
        q = load_codes(cifar_dir(CIFAR[kind]) / "query.npz").codes[:nq]
        codes = np.empty((n, db.shape[1]), np.uint8)
        for a in range(0, n, len(db)):
            b = min(a + len(db), n)
            codes[a:b] = db[: b - a]
            if a:  # copies after the first: a few bits flipped, as more images of the same kinds would give
                codes[a:b] ^= flips(rng, b - a, CIFAR[kind], 1 / CIFAR[kind])
        return codes, q
    w = nbits // 8
    if kind == "random":
        codes = np.empty((n, w), np.uint8)
        for a in range(0, n, CHUNK):
            codes[a : a + CHUNK] = rng.integers(0, 256, (min(CHUNK, n - a), w), dtype=np.uint8)
        return codes, rng.integers(0, 256, (nq, w), dtype=np.uint8)
    centres = rng.integers(0, 256, (max(1, n // 1000), w), dtype=np.uint8)
    codes = np.empty((n, w), np.uint8)
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        codes[a:b] = centres[rng.integers(0, len(centres), b - a)] ^ flips(rng, b - a, nbits, flip_p)
    queries = codes[rng.integers(0, n, nq)] ^ flips(rng, nq, nbits, flip_p)
    return codes, queries


def batch_for(fn, queries: np.ndarray, target_s: float, least: int = 64) -> np.ndarray:
    """The first queries, as many as ``fn`` answers in about ``target_s`` (at least ``least``), after a warm-up;
    every method of a row is timed on the same batch."""
    fn(queries[:2])
    t = time.perf_counter()
    fn(queries[:8])
    per = (time.perf_counter() - t) / 8
    return queries[: int(min(len(queries), max(least, target_s / max(per, 1e-9))))]


def qps(fn, batch: np.ndarray, target_s: float) -> float:
    """Queries/s of ``fn(batch)`` called again and again for about ``target_s`` (at least once), after a warm-up;
    a method far slower than the batch was sized for (MIH forced on random codes) is timed on fewer queries."""
    fn(batch[:1])
    t = time.perf_counter()
    fn(batch[:1])
    one = time.perf_counter() - t
    if one * len(batch) > 3 * target_s:
        batch = batch[: max(1, int(target_s / one))]
    done, t = 0, time.perf_counter()
    while True:
        fn(batch)
        done += len(batch)
        if time.perf_counter() - t >= target_s:
            return done / (time.perf_counter() - t)


def item_scan(codes: np.ndarray, nbits: int):
    """The scan over every item (one code per item, no distinct-code layer): dsh's k-NN before it."""
    X = K.as_words(codes)
    x, n, W = X.reshape(-1), X.shape[0], X.shape[1]

    def run(q, k):
        Q = K.as_words(q)
        D = np.full((len(q), k), -1, np.int32)
        P = np.full((len(q), k), -1, np.int64)
        K.run_parallel(lambda a, b: K.knn_scan(x, n, W, Q, a, b, k, nbits, D, P), len(q))
        return D, P

    return run


def faiss_flat(codes: np.ndarray, nbits: int):
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    return index


def bench_one(kind: str, n: int, nbits: int, args) -> dict:
    t0 = time.perf_counter()
    codes, queries = make_data(kind, n, nbits, args.queries, args.flip_p)
    nbits = CIFAR.get(kind, nbits)
    made = time.perf_counter() - t0
    index = HammingIndex(nbits)
    t = time.perf_counter()
    index.add(codes)
    add_s = time.perf_counter() - t
    t = time.perf_counter()
    tables = index.build_mih()
    mih_s = time.perf_counter() - t
    row = {"kind": kind, "n": n, "nbits": nbits, "distinct": index.distinct, "make_s": round(made, 2),
           "add_s": round(add_s, 2), "mih_build_s": round(mih_s, 2), "nsub": tables.nsub,
           "bytes_per_item_built": round(index.nbytes / n, 2), "code_bytes_per_item": round(codes.shape[1], 2),
           "queries": len(queries), "qps": {}, "plan": {}, "exact": True}
    print(f"{kind} n={n:,} nbits={nbits}: distinct {index.distinct:,}, add {add_s:.1f} s, MIH {mih_s:.1f} s "
          f"(nsub {tables.nsub}), {row['bytes_per_item_built']} B/item", flush=True)
    check = queries[: min(len(queries), 64)]
    scan = item_scan(codes, nbits) if args.item_scan else None
    fidx = faiss_flat(codes, nbits) if args.faiss and n * codes.shape[1] * 2 <= args.faiss_max else None
    if fidx is None:
        del codes
        gc.collect()
    for k in args.k:
        want = index.search(check, k, method="flat")
        for method in ("mih", "auto"):
            got = index.search(check, k, method=method)
            ok = np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            row["exact"] &= bool(ok)
        cell = {}
        batch = batch_for(lambda q, k=k: index.search(q, k, method="flat"), queries, args.target_s)
        for method in ("flat", "mih", "auto"):
            cell[method] = qps(lambda q, m=method, k=k: index.search(q, k, method=m), batch, args.target_s)
        if scan is not None:
            cell["item_scan"] = qps(lambda q, k=k: scan(q, k), batch, args.target_s)
        if fidx is not None:
            cell["faiss"] = qps(lambda q, k=k: fidx.search(q, k), batch, args.target_s)
        row["qps"][f"k={k}"] = {m: round(v, 1) for m, v in cell.items()}
        plan = index.explain(queries, k)
        row["plan"][f"k={k}"] = {"method": plan["method"], "reason": plan["reason"]}
        print(f"  k={k}: " + ", ".join(f"{m} {v:,.0f}" for m, v in cell.items()) + f" q/s; auto -> {plan['method']}",
              flush=True)
    r = args.radius
    want = index.range_search(check, r, method="flat")
    got = index.range_search(check, r, method="mih")
    row["exact"] &= all(np.array_equal(a, b) for a, b in zip(got, want))
    batch = batch_for(lambda q: index.range_search(q, r, method="flat"), queries, args.target_s)
    cell = {m: qps(lambda q, m=m: index.range_search(q, r, method=m), batch, args.target_s)
            for m in ("flat", "mih", "auto")}
    row["qps"][f"r={r}"] = {m: round(v, 1) for m, v in cell.items()}
    row["per_query_in_radius"] = round(float(want[0][-1]) / len(check), 1)
    print(f"  r={r}: " + ", ".join(f"{m} {v:,.0f}" for m, v in cell.items()) + " q/s", flush=True)
    row["bytes_per_item"] = round(index.nbytes / n, 2)  # with what the searches built (the sorted copy)
    row["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return row


@numba.njit(nogil=True, cache=True)
def popcount_pass(x, Q, qa, qb, reps):
    """The smallest distance from each query ``qa <= i < qb`` to 64-bit codes ``x`` (a multiple of 256 of them),
    ``reps`` times over, by the scan's vectorised chunk pass and nothing else (the popcount bound of
    :func:`bounds`); returns their sum."""
    total = np.uint64(0)
    for _ in range(reps):
        for i in range(qa, qb):
            for s0 in range(0, x.shape[0], 256):
                total += K._chunk_min(x, Q[i], 1, np.uint64(s0), np.uint64(s0 + 256))
    return total


def bounds(n: int, args) -> dict:
    """The scan against faiss at k = 100 on random 64-bit codes, and this CPU's bounds: memory bandwidth (a
    read of a large array) and the popcount rate (an in-cache vectorised xor-popcount-min pass)."""
    codes, queries = make_data("random", n, 64, 1000, 0.0)
    index = HammingIndex(64)
    index.add(codes)
    fidx = faiss_flat(codes, 64)
    out = {"n": n, "k": 100}
    out["dsh_qps"] = qps(lambda q: index.search(q, 100, method="flat"), queries, 2 * args.target_s)
    out["faiss_qps"] = qps(lambda q: fidx.search(q, 100), queries, 2 * args.target_s)
    out["dsh_qps_again"] = qps(lambda q: index.search(q, 100, method="flat"), queries, 2 * args.target_s)
    # one thread each too: faiss's OpenMP threads wait by spinning, which a machine shared with other jobs
    # punishes far more than dsh's thread pool
    import faiss

    numba.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    out["dsh_qps_1t"] = qps(lambda q: index.search(q, 100, method="flat"), queries, 2 * args.target_s)
    out["faiss_qps_1t"] = qps(lambda q: fidx.search(q, 100), queries, 2 * args.target_s)
    out["dsh_qps_1t_again"] = qps(lambda q: index.search(q, 100, method="flat"), queries, 2 * args.target_s)
    numba.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    big = np.ones(1 << 27, np.uint64)  # 1 GiB, read by every thread at once (a part each)
    parts = np.array_split(big, args.threads)
    K.run_parallel(lambda a, b: [p.sum() for p in parts[a:b]], args.threads, per_task=1)
    t = time.perf_counter()
    for _ in range(3):
        K.run_parallel(lambda a, b: [p.sum() for p in parts[a:b]], args.threads, per_task=1)
    out["memory_gb_s"] = 3 * big.nbytes / (time.perf_counter() - t) / 1e9
    big = parts = None  # let the GiB go
    # 16,384 codes (128 KiB, in L2) against 1,024 queries: the xor-popcount-min pass alone, in the scan's chunks
    # of 256 codes, with nothing kept; no exact scan can count distances faster than this
    m, nq = 16384, 1024
    x, Q = K.as_words(codes[:m]).reshape(-1), K.as_words(queries[:nq])
    # one range of queries a thread, each passing 50 times (~40 ms): a thread's start-up and hand-off, which
    # vary on a shared machine, do not count
    reps = 50
    one_each = -(-nq // args.threads)
    K.run_parallel(lambda a, b: popcount_pass(x, Q, a, b, 1), nq, per_task=one_each)
    t = time.perf_counter()
    K.run_parallel(lambda a, b: popcount_pass(x, Q, a, b, reps), nq, per_task=one_each)
    out["popcount_codes_per_s"] = reps * nq * m / (time.perf_counter() - t)
    # with queries in blocks of 64 over an in-cache chunk, the database is read once per 64 queries
    out["memory_bound_qps"] = out["memory_gb_s"] * 1e9 / (n * 8) * 64
    out["popcount_bound_qps"] = out["popcount_codes_per_s"] / n
    print(f"bounds at {n:,} x 64 bits, k=100: dsh {out['dsh_qps']:,.0f} q/s, faiss {out['faiss_qps']:,.0f} q/s; "
          f"one thread: dsh {out['dsh_qps_1t']:,.0f} / {out['dsh_qps_1t_again']:,.0f}, "
          f"faiss {out['faiss_qps_1t']:,.0f} "
          f"({out['dsh_qps'] / out['faiss_qps']:.2f}x); memory {out['memory_gb_s']:.1f} GB/s, popcount "
          f"{out['popcount_codes_per_s'] / 1e9:.2f} G codes/s -> bounds {out['memory_bound_qps']:,.0f} / "
          f"{out['popcount_bound_qps']:,.0f} q/s", flush=True)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def overhead(sizes: list[int], ks: list[int], reps: int, nq: int, bits: list[int]) -> list[dict]:
    """Auto against the scan on random codes, where MIH does not pay: the two timed in turn ``reps`` times on the
    same batch of ``nq`` queries, the median of the ratios (a shared machine's noise hits both alike)."""
    rows = []
    for n, nbits in [(n, b) for b in bits for n in sizes]:
        codes, queries = make_data("random", n, nbits, nq, 0.0, seed=1)
        index = HammingIndex(nbits)
        index.add(codes)
        del codes
        index.build_mih()
        for k in ks:
            ratios = []
            for _ in range(reps):
                times = {}
                for method in ("flat", "auto"):
                    t = time.perf_counter()
                    index.search(queries, k, method=method)
                    times[method] = time.perf_counter() - t
                ratios.append(times["auto"] / times["flat"])
            rows.append({"n": n, "nbits": nbits, "k": k, "queries": nq, "reps": reps,
                         "method": index.explain(queries, k)["method"],
                         "auto_over_flat": round(float(np.median(ratios)), 3), "max": round(float(np.max(ratios)), 3)})
            print(f"random n={n:,} nbits={nbits} k={k}: auto / flat time, median of {reps}: "
                  f"{rows[-1]['auto_over_flat']:.3f} (max {rows[-1]['max']:.3f})", flush=True)
        del index
        gc.collect()
    return rows


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def vec_bits(res: dict) -> str:
    """The kernels' vector width in a run, as recorded (runs before it was recorded: unknown)."""
    wide = res.get("machine", {}).get("wide_vectors")
    return "unknown" if wide is None else ("512" if wide else "256")


def markdown(res: dict) -> str:
    lines = ["# Exact k-NN at scale: scan, multi-index hashing and auto", ""]
    b = res.get("bounds")
    if b:
        lines += [f"The scan at {b['n']:,} random 64-bit codes, k = 100: **{fmt(b['dsh_qps'])} q/s against faiss "
                  f"IndexBinaryFlat {fmt(b['faiss_qps'])} q/s ({b['dsh_qps'] / b['faiss_qps']:.2f}x; dsh again after "
                  f"faiss: {fmt(b['dsh_qps_again'])} q/s)**; on one thread each "
                  f"{fmt(b.get('dsh_qps_1t'))} / {fmt(b.get('dsh_qps_1t_again'))} (before / after) against "
                  f"{fmt(b.get('faiss_qps_1t'))} q/s. This CPU's "
                  f"bounds in the same run: memory {b['memory_gb_s']:.1f} GB/s read by {res['threads']} threads (the "
                  f"database read once per block of 64 queries: {fmt(b['memory_bound_qps'])} q/s, so the scan is not "
                  f"memory-bound); the scan's xor-popcount-min chunk pass alone over 16,384 codes in cache "
                  f"({vec_bits(res)}-bit vectors): "
                  f"{b['popcount_codes_per_s'] / 1e9:.2f} G codes/s ({fmt(b['popcount_bound_qps'])} q/s at this "
                  f"size), which the k = 100 scan reaches {b['dsh_qps'] / b['popcount_bound_qps']:.0%} of. Under "
                  "this load every figure here moves by tens of percent from one measurement to the next.", ""]
    lines += ["q/s with the queries as one batch (a query the batch repeats is answered once, except by the item "
              "scan and faiss); *flat* scans the distinct codes (where codes repeat enough, their sorted copy in "
              "tiles of 256, skipping tiles and blocks of 16 that cannot hold a nearer code; below 32,768 distinct "
              "codes, in index order, reading at the k-th distance only the first codes k needs), *item scan* every "
              "item (dsh's scan before its distinct-code layer, with today's kernels), *auto* is what `search` does "
              "by default (its choice in the last column: MIH where a pilot finds it within half a scan; it "
              "also looks up a query equal to a code that holds k items). Memory: the index's structures (distinct "
              "codes, ids, groups, MIH tables, the sorted copy) per item after the searches. Every mih and auto "
              "result equals flat's.", ""]
    ks = res["k"]
    head = ["data", "bits", "n", "distinct", "build s", "B/item"]
    for k in ks:
        head += [f"k={k} flat", "item scan", "faiss", "mih", "auto"]
    head += [f"r={res['radius']} flat", "mih", "auto", "auto chose (k)"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * 3 + " ---: |" * (len(head) - 4) + " --- |"]
    for r in res["rows"]:
        cells = [r["kind"] + (" (earlier run)" if r.get("earlier") else ""), str(r["nbits"]), f"{r['n']:,}",
                 f"{r['distinct']:,}",
                 f"{r['add_s'] + r['mih_build_s']:.1f}", f"{r['bytes_per_item']:.1f}"]
        for k in ks:
            q = r["qps"].get(f"k={k}", {})
            cells += [fmt(q.get(m)) for m in ("flat", "item_scan", "faiss", "mih", "auto")]
        q = r["qps"].get(f"r={res['radius']}", {})
        cells += [fmt(q.get(m)) for m in ("flat", "mih", "auto")]
        cells.append(" / ".join(f"{p['method']}" for p in r["plan"].values()))
        lines.append("| " + " | ".join(cells) + " |")
    learned = [r for r in res["rows"] if r["kind"].startswith("cifar")]
    if learned:
        lines += ["", "The learned CIFAR-10 codes: auto against the scans, at each k.", "",
                  "| data | n | " + " | ".join(f"k={k} auto / item scan | auto / flat" for k in ks) + " |",
                  "| --- | ---: |" + " ---: | ---: |" * len(ks)]
        for r in learned:
            cells = [r["kind"], f"{r['n']:,}"]
            for k in ks:
                q = r["qps"].get(f"k={k}", {})
                cells += [f"{q['auto'] / q['item_scan']:.1f}x" if q.get("item_scan") else "—",
                          f"{q['auto'] / q['flat']:.1f}x" if q.get("flat") else "—"]
            lines.append("| " + " | ".join(cells) + " |")
    if res.get("overhead"):
        lines += ["", "Auto against the scan on random codes (MIH does not pay there, the pilot hands the batch to the "
                  "scan): time of auto / time of the scan, the two run in turn on the same batch, median of the "
                  "repeats. (The big table times each method on its own, a second each, so noise of tens of percent "
                  "moves its auto and flat columns apart; this is the measurement of their ratio.)", "",
                  "| n | bits | k | queries | repeats | auto / scan (median) | max | auto chose |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        lines += [f"| {o['n']:,} | {o.get('nbits', 64)} | {o['k']} | {o['queries']} | {o['reps']} | "
                  f"{o['auto_over_flat']:.3f} | {o['max']:.3f} | {o['method']} |" for o in res["overhead"]]
    lines += ["", f"Threads: {res['threads']}. Load average at start {res['load_start']}, at end "
              f"{res.get('load_end')}: the machine is shared with other jobs, so every figure is an upper bound on "
              "the time (a lower bound on q/s) under that load."]
    if res.get("earlier"):
        e = res["earlier"]
        lines += ["", f"Rows marked *earlier run* were kept from `{e['command']}`, load average {e['load_start']} at "
                  f"its start and {e.get('load_end')} at its end."]
    if res.get("note"):
        lines += ["", res["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    p.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    p.add_argument("--max-128", type=int, default=10_000_000, help="largest size run at 128 bits")
    p.add_argument("--data", nargs="+", default=["random", "clustered", "cifar48", "cifar12"])
    p.add_argument("--cifar-sizes", type=int, nargs="+", default=[50_000, 10_000_000])
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--radius", type=int, default=2)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--flip-p", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target-s", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--faiss-max", type=float, default=2e9, help="bytes of codes (x2: a copy) faiss may take")
    p.add_argument("--no-faiss", dest="faiss", action="store_false")
    p.add_argument("--no-item-scan", dest="item_scan", action="store_false")
    p.add_argument("--no-bounds", dest="bounds", action="store_false")
    p.add_argument("--overhead", type=int, nargs="*", default=None, metavar="N",
                   help="also time auto against the scan in turn on N random 64-bit codes (these sizes)")
    p.add_argument("--reps", type=int, default=5, help="repeats of --overhead")
    p.add_argument("--overhead-bits", type=int, nargs="+", default=[64, 128], help="code lengths of --overhead")
    p.add_argument("--note", default="", help="a line added under the table (what was left out and why)")
    p.add_argument("--append", action="store_true", help="keep the rows (and bounds) of an earlier knn_scale.json "
                   "in --out and measure only the databases it lacks (a run cut short, continued)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    res = {"command": common.command_line(), "machine": common.machine_info(args.threads), "threads": args.threads,
           "load_start": common.load_average(), "k": args.k, "radius": args.radius, "flip_p": args.flip_p,
           "rows": [], "note": args.note}
    res["machine"]["wide_vectors"] = bool(K.WIDE_VECTORS)  # 512-bit vectors in the kernels (dsh.codes.kernels)
    try:
        import faiss

        res["machine"]["faiss"] = faiss.__version__
        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        args.faiss = False
    if args.bounds and args.faiss:
        res["bounds"] = bounds(min(args.sizes), args)
    plan = []
    for kind in args.data:
        if kind in CIFAR:
            plan += [(kind, n, CIFAR[kind]) for n in args.cifar_sizes]
        else:
            plan += [(kind, n, b) for n in args.sizes for b in args.bits if b == 64 or n <= args.max_128]
    plan.sort(key=lambda t: (t[1], t[0]))  # the big sizes last
    old = common.read_json(Path(args.out) / "knn_scale.json") if args.append else None
    if old:
        # the rows kept are marked, with the load of the run that measured them
        res["rows"] = [{**r, "earlier": True} for r in old["rows"]]
        plan = [t for t in plan if t not in {(r["kind"], r["n"], r["nbits"]) for r in old["rows"]}]
        res["earlier"] = old.get("earlier") or {"command": old["command"], "load_start": old["load_start"],
                                                "load_end": old.get("load_end")}
        if "bounds" in old and "bounds" not in res:
            res["bounds"] = old["bounds"]
    for kind, n, nbits in plan:
        res["rows"].append(bench_one(kind, n, nbits, args))
        res["load_end"] = common.load_average()
        common.write_results(args.out, "knn_scale", res, markdown(res))
        gc.collect()
    if args.overhead:
        res["overhead"] = overhead(args.overhead, args.k, args.reps, args.queries, args.overhead_bits)
        res["load_end"] = common.load_average()
        common.write_results(args.out, "knn_scale", res, markdown(res))
    elif old and old.get("overhead"):
        res["overhead"] = old["overhead"]
        common.write_results(args.out, "knn_scale", res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Search speed of dsh's HammingIndex against faiss, on random (and clustered) binary codes.

    python benchmarks/speed/search.py --sizes 1000000 10000000 --bits 64 128 --queries 1000 --out benchmarks/results

For each (n, nbits): build time, memory, kNN queries/s for k = 1, 10, 100 and radius-2 range queries/s, for
dsh flat (numba scan), dsh MIH (multi-index hashing), faiss IndexBinaryFlat and faiss IndexBinaryMultiHash, all
on the same threads. dsh's results are checked against a brute-force popcount on a few queries, MIH against the
flat scan on all of them, and faiss's distances against dsh's. Also: the memory-bandwidth bound of an unblocked
flat scan, and MIH on clustered codes, where a radius holds many results. Writes ``search.json`` and
``search.md`` (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402

from dsh import HammingIndex  # noqa: E402
from dsh.codes.hamming import pairwise_hamming_reference  # noqa: E402
from dsh.index.mih import default_nsub, prefer_mih, split_bits  # noqa: E402
from dsh.utils.cpu import cpu_model  # noqa: E402
from dsh.utils.fileio import atomic_write  # noqa: E402

try:
    import faiss
except ImportError:  # the dsh rows still run
    faiss = None

KS = (1, 10, 100)
RADIUS = 2


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def qps(fn, queries: np.ndarray, target_s: float) -> float:
    """Queries per second of ``fn(batch)``: a short probe sizes a batch that runs about ``target_s``, capped at
    all the queries, so slow configurations (a flat radius scan over 10M codes) cost little; fast ones (MIH) run
    the whole batch repeatedly for about ``target_s``, so per-call overhead does not dominate."""
    fn(queries[:2])  # warm: compilation, first touch, lazy builds
    probe = queries[: min(len(queries), 32)]
    _, dt = timed(lambda: fn(probe))
    # at least 64 queries: batch-oriented code (faiss) is slower on tiny batches
    m = int(np.clip(target_s * len(probe) / max(dt, 1e-9), min(64, len(queries)), len(queries)))
    done, t0 = 0, time.perf_counter()
    while True:
        fn(queries[:m])
        done += m
        elapsed = time.perf_counter() - t0
        if elapsed >= target_s or m < len(queries):
            return done / elapsed


def brute_knn(q, db, k):
    """Reference: distances of each query to every code (chunked), stable sort (ties by position)."""
    D = np.empty((len(q), k), np.int32)
    I = np.empty((len(q), k), np.int64)
    for i in range(len(q)):
        dist = np.concatenate([pairwise_hamming_reference(q[i : i + 1], db[a : a + 1_000_000])[0]
                               for a in range(0, len(db), 1_000_000)])
        order = np.argsort(dist, kind="stable")[:k]
        D[i], I[i] = dist[order], order
    return D, I


def memory_bandwidth_gbs() -> float:
    """Read bandwidth of one pass over 1 GiB (best of 3), what an unblocked flat scan is bound by."""
    a = np.ones(1 << 27, np.uint64)
    best = min(timed(lambda: np.bitwise_xor.reduce(a))[1] for _ in range(3))
    return a.nbytes / best / 1e9


def random_codes(rng, n, nbits):
    return rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)


def clustered_codes(rng, n, nbits, nclusters, flip_p):
    """Codes near ``nclusters`` random centres, each bit flipped with probability ``flip_p``."""
    centres = random_codes(rng, nclusters, nbits)
    out = centres[rng.integers(0, nclusters, n)]
    for a in range(0, n, 1_000_000):  # in pieces: the boolean flip matrix is 8x the codes
        b = min(a + 1_000_000, n)
        out[a:b] ^= np.packbits(rng.random((b - a, nbits), dtype=np.float32) < flip_p, axis=1, bitorder="little")
    return out


def bench_config(n, nbits, db, q, args) -> list[dict]:
    rows = []
    nsub = default_nsub(nbits, n)
    _, lengths = split_bits(nbits, nsub)

    # dsh flat
    index = HammingIndex(nbits)
    _, t_build = timed(lambda: index.add(db))
    row = {"n": n, "nbits": nbits, "method": "dsh flat", "build_s": t_build, "memory_bytes": int(db.nbytes)}
    for k in KS:
        row[f"k{k}_qps"] = qps(lambda b, k=k: index.search(b, k), q, args.target_s)
    row[f"r{RADIUS}_qps"] = qps(lambda b: index.range_search(b, RADIUS, method="flat"), q, args.target_s)
    sub = q[: args.check]
    D, I = index.search(sub, 100)
    Db, Ib = brute_knn(sub, db, 100)
    row["exact"] = bool(np.array_equal(D, Db) and np.array_equal(I, Ib))
    rows.append(row)

    # dsh MIH
    tables, t_mih = timed(lambda: index.build_mih(nsub))
    row = {"n": n, "nbits": nbits, "method": f"dsh MIH ({nsub}x{int(lengths.max())} bits)", "build_s": t_mih,
           "memory_bytes": int(db.nbytes + tables.nbytes)}
    row[f"r{RADIUS}_qps"] = qps(lambda b: index.range_search(b, RADIUS, method="mih"), q, args.target_s)
    flat = index.range_search(q, RADIUS, method="flat")
    mih = index.range_search(q, RADIUS, method="mih")
    row["exact"] = all(np.array_equal(a, b) for a, b in zip(flat, mih))
    row["results_per_query"] = float(flat[0][-1] / len(q))
    rows.append(row)
    mih_qps = row[f"r{RADIUS}_qps"]
    flat_r_qps = rows[0][f"r{RADIUS}_qps"]
    index = tables = None  # free them before the next backend is built

    if faiss is not None:
        fidx = faiss.IndexBinaryFlat(nbits)
        _, t_build = timed(lambda: fidx.add(db))
        row = {"n": n, "nbits": nbits, "method": "faiss IndexBinaryFlat", "build_s": t_build,
               "memory_bytes": int(db.nbytes)}
        for k in KS:
            row[f"k{k}_qps"] = qps(lambda b, k=k: fidx.search(b, k), q, args.target_s)
        # faiss keeps distances < radius
        row[f"r{RADIUS}_qps"] = qps(lambda b: fidx.range_search(b, RADIUS + 1), q, args.target_s)
        Df, _ = fidx.search(sub, 100)
        row["exact"] = bool(np.array_equal(Df, Db))  # distances only: faiss's own tie order is not checked
        rows.append(row)
        del fidx

        before = rss_bytes()
        mh = faiss.IndexBinaryMultiHash(nbits, nsub, int(lengths.min()))
        mh.nflip = RADIUS // nsub  # pigeonhole: enough for an exact radius search
        _, t_build = timed(lambda: mh.add(db))
        row = {"n": n, "nbits": nbits, "method": f"faiss MultiHash ({nsub}x{int(lengths.min())} bits)",
               "build_s": t_build, "memory_bytes": int(db.nbytes + max(rss_bytes() - before - db.nbytes, 0))}
        row[f"r{RADIUS}_qps"] = qps(lambda b: mh.range_search(b, RADIUS + 1), q, args.target_s)
        lims, _, _ = mh.range_search(q, RADIUS + 1)
        row["exact"] = bool(np.array_equal(lims, flat[0]))  # result counts
        rows.append(row)
        del mh
    rows[1]["speedup_vs_flat"] = mih_qps / flat_r_qps
    return rows


def bench_clustered(n, nbits, rng, args) -> dict:
    db = clustered_codes(rng, n, nbits, nclusters=max(1, n // 1000), flip_p=args.flip_p)
    q = db[rng.integers(0, n, args.queries)] ^ np.packbits(
        rng.random((args.queries, nbits)) < args.flip_p, axis=1, bitorder="little")
    index = HammingIndex(nbits)
    index.add(db)
    nsub = default_nsub(nbits, n)
    _, t_mih = timed(lambda: index.build_mih(nsub))
    flat_qps = qps(lambda b: index.range_search(b, RADIUS, method="flat"), q, args.target_s)
    mih_qps = qps(lambda b: index.range_search(b, RADIUS, method="mih"), q, args.target_s)
    flat = index.range_search(q, RADIUS, method="flat")
    mih = index.range_search(q, RADIUS, method="mih")
    auto = "mih" if prefer_mih(n, nbits, RADIUS, len(q), index.mih) else "flat"
    return {"n": n, "nbits": nbits, "clusters": max(1, n // 1000), "flip_p": args.flip_p,
            "results_per_query": float(flat[0][-1] / len(q)), "flat_qps": flat_qps, "mih_qps": mih_qps,
            "speedup": mih_qps / flat_qps, "mih_build_s": t_mih, "auto_picks": auto,
            "exact": all(np.array_equal(a, b) for a, b in zip(flat, mih))}


def markdown(result: dict) -> str:
    lines = [
        f"# Hamming search benchmark ({result['machine']['cpu']}, {result['threads']} threads)",
        "",
        f"Random codes, {result['queries']} queries max per measurement. q/s = queries per second.",
        "",
        "| n | nbits | method | build s | memory MB | k=1 q/s | k=10 q/s | k=100 q/s | r=2 q/s | exact |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['n']:,} | {r['nbits']} | {r['method']} | {r['build_s']:.2f} | {r['memory_bytes'] / 1e6:,.0f} | "
            + " | ".join(common.fmt_cell(r.get(f"k{k}_qps")) for k in KS)
            + f" | {common.fmt_cell(r.get(f'r{RADIUS}_qps'))} | {common.fmt_cell(r['exact'])} |"
        )
    bw = result["bandwidth_gbs"]
    lines += ["", f"Memory bandwidth (one pass over 1 GiB): {bw:.1f} GB/s. An unblocked flat scan reads the whole "
              "database per query, so it is bound by bandwidth / (n x bytes per code):", ""]
    for n, nbits, bound in result["bandwidth_bound_qps"]:
        lines.append(f"- n = {n:,}, {nbits} bits: {bound:,.0f} q/s")
    lines += ["", "dsh's scan passes each database chunk over a block of queries while it is in cache, so it is not "
              "bound by this.", "", "MIH speedup over dsh's flat radius-2 scan, random codes:", ""]
    for r in result["rows"]:
        if "speedup_vs_flat" in r:
            lines.append(f"- n = {r['n']:,}, {r['nbits']} bits: {r['speedup_vs_flat']:,.0f}x "
                         f"({r['results_per_query']:.2f} results per query)")
    if result["clustered"]:
        lines += ["", "Clustered codes (n/1000 centres, each bit flipped with probability p), radius 2:", "",
                  "| n | nbits | p | results/query | flat q/s | MIH q/s | MIH speedup | auto picks | exact |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for c in result["clustered"]:
            lines.append(f"| {c['n']:,} | {c['nbits']} | {c['flip_p']} | {c['results_per_query']:,.1f} | "
                         f"{common.fmt_cell(c['flat_qps'])} | {common.fmt_cell(c['mih_qps'])} | {c['speedup']:,.1f}x | "
                         f"{c['auto_picks']} | "
                         f"{common.fmt_cell(c['exact'])} |")
    la = result["loadavg"]
    lines += ["", f"Load average at start {la['start']}, at end {la['end']} (other jobs share this machine); "
              f"total {result['total_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    p.add_argument("--queries", type=int, default=1000, help="queries (fewer for slow configurations)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target-s", type=float, default=1.5, help="about how long each measurement runs")
    p.add_argument("--check", type=int, default=8, help="queries checked against the brute-force reference")
    p.add_argument("--flip-p", type=float, default=0.02, help="bit flip probability of the clustered codes")
    p.add_argument("--clustered-sizes", type=int, nargs="*", default=None,
                   help="sizes for the clustered run, 64 bits (default: --sizes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)

    numba.set_num_threads(args.threads)
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    bw = memory_bandwidth_gbs()
    rows, bounds = [], []
    for n in args.sizes:
        for nbits in args.bits:
            db = random_codes(rng, n, nbits)
            q = random_codes(rng, args.queries, nbits)
            new = bench_config(n, nbits, db, q, args)
            rows += new
            bounds.append((n, nbits, bw * 1e9 / db.nbytes))
            for r in new:
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            del db
    clustered = []
    for n in args.sizes if args.clustered_sizes is None else args.clustered_sizes:
        clustered.append(bench_clustered(n, 64, rng, args))
        print(clustered[-1], flush=True)
    result = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numba": numba.__version__, "numpy": np.__version__,
                    "faiss": getattr(faiss, "__version__", None)},
        "threads": args.threads, "queries": args.queries, "radius": RADIUS,
        "bandwidth_gbs": bw, "bandwidth_bound_qps": bounds, "rows": rows, "clustered": clustered,
        "loadavg": {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]},
        "total_s": time.perf_counter() - t0,
    }
    md = markdown(result)
    print(md)
    with atomic_write(args.out / "search.json", "w") as f:
        json.dump(result, f, indent=1)
    with atomic_write(args.out / "search.md", "w") as f:
        f.write(md)
    return result


if __name__ == "__main__":
    main()

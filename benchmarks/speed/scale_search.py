"""Scaling out search: Milvus (Lite, or a server) against dsh's HammingIndex on the same codes and queries.

    python benchmarks/speed/scale_search.py --n 1000000 --bits 64 --queries 300 --threads 2 --out benchmarks/results

Writes ``n`` random ``nbits``-bit codes (``--data clustered``: near n/1000 centres, each bit flipped with
probability ``--flip-p``) with a catalog (class labels and paths, as ``dsh index --images`` stores) into a Milvus
collection through :meth:`dsh.index.milvus.MilvusIndex.from_index`, timing the insert, then measures queries/s for
k-NN (``--k``) and radius search (``--radius``), the queries sent as one batch and one at a time, for:

- dsh ``HammingIndex`` (numba scan; radius search also by multi-index hashing);
- ``MilvusIndex`` (exact: ties at the k-th distance gathered and ordered by id, as HammingIndex orders them);
- Milvus itself, one plain ``client.search`` with ``limit = k`` (ties in Milvus's own order): what the exactness
  costs.

Every MilvusIndex result is checked against HammingIndex's (distances and ids). The Milvus Lite database is a
temporary file, removed at the end, unless ``--uri`` names one (or a server: only loopback addresses are for
tests). Writes ``scale_search.json`` and ``scale_search.md`` to ``--out`` (atomically). Needs the ``milvus``
extra: ``pip install 'dsh[milvus]'``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from dsh import HammingIndex  # noqa: E402

COLLECTION = "dsh_scale_search"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def qps(fn, queries: np.ndarray, target_s: float, one_at_a_time: bool) -> float:
    """Queries per second of ``fn(batch)``, after one warm-up call: the whole batch (or each query alone) again
    and again until about ``target_s`` seconds have passed (at least once)."""
    fn(queries[:2])
    done, t0 = 0, time.perf_counter()
    while True:
        if one_at_a_time:
            for j in range(len(queries)):
                fn(queries[j : j + 1])
                done += 1
                if time.perf_counter() - t0 >= target_s:
                    break
        else:
            fn(queries)
            done += len(queries)
        elapsed = time.perf_counter() - t0
        if elapsed >= target_s:
            return done / elapsed


def make_data(rng, n: int, nbits: int, kind: str, flip_p: float, nq: int):
    w = nbits // 8
    if kind == "random":
        codes = rng.integers(0, 256, (n, w), dtype=np.uint8)
        queries = rng.integers(0, 256, (nq, w), dtype=np.uint8)
        return codes, queries
    centres = rng.integers(0, 256, (max(1, n // 1000), w), dtype=np.uint8)
    codes = centres[rng.integers(0, len(centres), n)]
    for a in range(0, n, 1_000_000):  # in pieces: the boolean flip matrix is 8x the codes
        b = min(a + 1_000_000, n)
        codes[a:b] ^= np.packbits(rng.random((b - a, nbits), dtype=np.float32) < flip_p, axis=1, bitorder="little")
    queries = codes[rng.integers(0, n, nq)] ^ np.packbits(rng.random((nq, nbits)) < flip_p, axis=1,
                                                           bitorder="little")
    return codes, queries


def rss_mb(pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def lite_server_pid(db_path: str) -> int | None:
    """The Milvus Lite server process of ``db_path`` (best effort: milvus_lite's private state)."""
    try:
        from milvus_lite.server_manager import server_manager_instance

        server = server_manager_instance._servers.get(str(Path(db_path).resolve()))
        return server._p.pid if server is not None and server._p is not None else None
    except Exception:  # noqa: BLE001 - only for the memory figure
        return None


def path_bytes(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"# Scaling out search: Milvus against dsh's HammingIndex ({r['machine']['cpu']}, {s['threads']} threads)",
        "",
        f"{s['n']:,} {s['data']} codes of {s['bits']} bits, {s['queries']} queries, k = {s['k']}, radius "
        f"{s['radius']}; Milvus at {r['milvus']['where']} (pymilvus {r['milvus']['pymilvus']}, milvus-lite "
        f"{r['milvus']['milvus_lite']}), index BIN_FLAT, metric HAMMING. q/s = queries per second, the queries "
        "sent as one batch, or one at a time (each its own call: what a service answering single requests sees).",
        "",
        "| method | build s | k=10 q/s (batch) | k=10 q/s (one at a time) | r=2 q/s (batch) | r=2 q/s (one at a time) "
        "| exact |".replace("k=10", f"k={s['k']}").replace("r=2", f"r={s['radius']}"),
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['method']} | {common.fmt_cell(row.get('build_s'), 2)} | "
                     f"{common.fmt_cell(row.get('knn_qps_batch'))} | "
                     f"{common.fmt_cell(row.get('knn_qps_single'))} | {common.fmt_cell(row.get('range_qps_batch'))} | "
                     f"{common.fmt_cell(row.get('range_qps_single'))} | {row['exact']} |")
    m = r["milvus"]
    lines += [
        "",
        f"Writing into Milvus (`MilvusIndex.from_index`: create the collection, insert {s['insert_batch']:,} rows "
        f"a call, codes with labels and paths, flush): {m['insert_s']:.1f} s, {m['insert_rows_per_s']:,.0f} rows/s; "
        f"opening the collection again (connect + load): {m['open_s']:.2f} s. On disk: "
        f"{common.fmt_cell(m['db_mb'], 1)} MB. Memory (RSS): this process "
        f"{common.fmt_cell(r['memory_mb']['python'])} MB, "
        f"the Milvus Lite server {common.fmt_cell(r['memory_mb']['milvus_server'])} MB.",
        "",
        "*exact*: every result (distances, and ids ordered by (distance, id)) equals HammingIndex's; Milvus's plain "
        "search gives the right distances but its own order among ties (*distances only*), which MilvusIndex "
        "corrects by asking for more and sorting.",
        f"Results per query within radius {s['radius']}: {r['results_per_query']:.2f}.",
        "",
        f"Load average at start {r['machine']['load_average_start']}, at end {r['machine']['load_average_end']} "
        f"(other jobs share this machine); total {common.fmt_seconds(r['total_s'])}.",
        "",
        "```bash",
        r["command"],
        "```",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="codes in the database (default 1,000,000)")
    p.add_argument("--bits", type=int, default=64, help="code length, a multiple of 8 (default 64)")
    p.add_argument("--queries", type=int, default=300, help="queries (default 300)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--radius", type=int, default=2)
    p.add_argument("--data", choices=("random", "clustered"), default="random")
    p.add_argument("--flip-p", type=float, default=0.02, help="--data clustered: bit flip probability")
    p.add_argument("--threads", type=int, default=2, help="numba threads for HammingIndex")
    p.add_argument("--target-s", type=float, default=2.0, help="about how long each measurement runs")
    p.add_argument("--insert-batch", type=int, default=10_000, help="rows per Milvus insert call")
    p.add_argument("--uri", help="a Milvus Lite file or server to use (default: a temporary Milvus Lite file)")
    p.add_argument("--keep", action="store_true", help="keep the collection (default: dropped at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    if args.bits < 8 or args.bits % 8:
        raise SystemExit("--bits must be a positive multiple of 8")
    if args.n < 1 or args.queries < 1:
        raise SystemExit("--n and --queries must be >= 1")

    import numba
    import pymilvus

    from dsh.index.milvus import MilvusIndex

    numba.set_num_threads(args.threads)
    t_start = time.perf_counter()
    started, load0 = common.utc_now(), common.load_average()
    rng = np.random.default_rng(args.seed)
    codes, queries = make_data(rng, args.n, args.bits, args.data, args.flip_p, args.queries)
    k, radius = args.k, args.radius

    tmp = None
    uri = args.uri
    if uri is None:
        tmp = tempfile.mkdtemp(prefix="dsh-scale-")
        uri = str(Path(tmp) / "scale.db")
    rows = []
    try:
        # dsh: the index with the catalog a folder index has (labels, paths)
        index = HammingIndex(args.bits)
        labels = rng.integers(0, 10, args.n)
        paths = [f"/data/images/{i // 1000:04d}/{i:08d}.jpg" for i in range(args.n)]
        _, t_build = timed(lambda: index.add(codes, labels=labels, paths=paths,
                                             class_names=[f"class{c}" for c in range(10)]))
        ref_knn = index.search(queries, k)
        ref_range = index.range_search(queries, radius, method="flat")
        def timed_row(method: str, build_s: float | None, exact: str, knn=None, range_search=None) -> None:
            """A table row: queries/s of k-NN and range search, in batches and one query at a time."""
            row = {"method": method, "build_s": build_s, "exact": exact}
            for name, fn in (("knn", knn), ("range", range_search)):
                if fn is not None:
                    row[f"{name}_qps_batch"] = qps(fn, queries, args.target_s, False)
                    row[f"{name}_qps_single"] = qps(fn, queries, args.target_s, True)
            rows.append(row)
            print(row, flush=True)

        timed_row("dsh HammingIndex (flat scan)", t_build, "yes (reference)", lambda b: index.search(b, k),
                  lambda b: index.range_search(b, radius, method="flat"))
        _, t_mih = timed(index.build_mih)
        mih_ok = all(np.array_equal(a, b) for a, b in zip(index.range_search(queries, radius, method="mih"),
                                                           ref_range))
        timed_row("dsh HammingIndex (multi-index hashing)", t_mih, common.fmt_cell(mih_ok),
                  range_search=lambda b: index.range_search(b, radius, method="mih"))

        # Milvus: insert, open again, search
        m, t_insert = timed(lambda: MilvusIndex.from_index(index, uri, COLLECTION, overwrite=True,
                                                           batch_size=args.insert_batch))
        m.close()
        m, t_open = timed(lambda: MilvusIndex.open(uri, COLLECTION, nbits=args.bits))
        server_pid = lite_server_pid(uri) if not uri.startswith(("http", "tcp", "unix")) else None
        knn = m.search(queries, k)
        rng_res = m.range_search(queries, radius)
        exact = all(np.array_equal(a, b) for a, b in zip(knn, ref_knn)) and \
            all(np.array_equal(a, b) for a, b in zip(rng_res, ref_range))
        lookup_ok = m.lookup(knn[1][:3].ravel()) == index.lookup(knn[1][:3].ravel())
        timed_row("dsh MilvusIndex (exact, ties by id)", t_insert, common.fmt_cell(exact and lookup_ok),
                  lambda b: m.search(b, k), lambda b: m.range_search(b, radius))

        client = m.client

        def raw_knn(b):
            return client.search(COLLECTION, data=[x.tobytes() for x in b], anns_field="code", limit=k,
                                 search_params={"metric_type": "HAMMING"})

        def raw_range(b):
            return client.search(COLLECTION, data=[x.tobytes() for x in b], anns_field="code", limit=16384,
                                 search_params={"metric_type": "HAMMING",
                                                "params": {"radius": radius + 1, "range_filter": 0}})

        raw = raw_knn(queries)
        raw_d = np.array([np.rint(np.asarray([h["distance"] for h in hits])) for hits in raw], np.int32)
        timed_row(f"Milvus search, limit={k} (ties in its own order)", None,
                  "distances only" if np.array_equal(raw_d, ref_knn[0]) else "NO", raw_knn, raw_range)
        memory = {"python": rss_mb(), "milvus_server": rss_mb(server_pid) if server_pid else None}
        db_mb = None
        if server_pid is not None or not uri.startswith(("http", "tcp", "unix")):
            size = path_bytes(Path(uri))
            db_mb = None if size is None else size / 1e6
        if not args.keep:
            m.drop()
        else:
            m.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    import milvus_lite

    result = {
        "benchmark": "scale_search",
        "settings": {"n": args.n, "bits": args.bits, "queries": args.queries, "k": k, "radius": radius,
                     "data": args.data, "flip_p": args.flip_p if args.data == "clustered" else None,
                     "threads": args.threads, "target_s": args.target_s, "insert_batch": args.insert_batch,
                     "seed": args.seed},
        "milvus": {"where": "a temporary Milvus Lite file" if args.uri is None else args.uri,
                   "pymilvus": pymilvus.__version__, "milvus_lite": getattr(milvus_lite, "__version__", "?"),
                   "insert_s": t_insert, "insert_rows_per_s": args.n / t_insert, "open_s": t_open, "db_mb": db_mb},
        "rows": rows,
        "results_per_query": float(ref_range[0][-1] / len(queries)),
        "memory_mb": memory,
        "machine": {**common.machine_info(args.threads), "load_average_start": load0,
                    "load_average_end": common.load_average()},
        "command": common.command_line(),
        "started": started,
        "finished": common.utc_now(),
        "total_s": time.perf_counter() - t_start,
    }
    md = markdown(result)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "scale_search.json", result)
    common.write_text(args.out / "scale_search.md", md)
    return result


if __name__ == "__main__":
    main()

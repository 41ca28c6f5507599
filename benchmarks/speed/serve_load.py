"""Load test of ``dsh serve``: a live server on 127.0.0.1, concurrent clients uploading real images.

    python benchmarks/speed/serve_load.py --run RUN --threads 2 --out benchmarks/results

The server holds an index of the CIFAR-10 (JPEG copy) training images (50,000, encoded with the run; built once and
kept in ``--work``), and is started twice: with the run's checkpoint on torch (``--backend torch``) and with its
ONNX export (``--model RUN.onnx``, onnxruntime). For each, ``--clients`` threads post real CIFAR-10 test JPEGs to
``/api/search?k=10`` for ``--seconds`` (at most ``--max-requests`` in all: bounded in count and time), over
keep-alive connections to 127.0.0.1 only. Reported: queries/s, latency p50/p95/p99, errors (any non-200), and the
server's peak resident memory (VmHWM of its process). The clients run in this process, on the same two cores as the
server: the figures are those of one small machine doing both.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402
import numpy as np  # noqa: E402

STEM = "serve_load"
TARGET_P99_MS = 100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"dsh serve exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("dsh serve did not become healthy in time")


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
         ) -> tuple[int | str, http.client.HTTPConnection]:
    """POST on a keep-alive connection: (the status, or the name of the connection error; the connection to use
    next, a new one after an error)."""
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status, conn
    except OSError as e:
        conn.close()
        return type(e).__name__, http.client.HTTPConnection(conn.host, conn.port, timeout=conn.timeout)


def stop(proc: subprocess.Popen) -> None:
    """Ask the server to stop; kill it if it has not within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(port: int, images: list[bytes], clients: int, seconds: float, max_requests: int, seed: int
         ) -> dict[str, Any]:
    """``clients`` threads, each on its own keep-alive connection, posting random images until the time or the
    request budget runs out. Returns the latencies (ms) of answered requests and the errors."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = [0]
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = random.Random(seed + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            body, kind = multipart("image", "q.jpg", images[rng.randrange(len(images))])
            t0 = time.perf_counter()
            status, conn = post(conn, "/api/search?k=10", body, {"Content-Type": kind})
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                if status == 200:
                    latencies.append(ms)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies_ms": latencies, "errors": errors, "wall_s": time.perf_counter() - t0}


def serve_and_load(name: str, model_args: list[str], index: Path, images: list[bytes], args) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, "-m", "dsh", "serve", "--index", str(index), *model_args, "--host", "127.0.0.1",
           "--port", str(port), "--quiet", "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.perf_counter()
        wait_healthy(port, proc)
        startup = time.perf_counter() - t0
        load(port, images, args.clients, min(5.0, args.seconds), 200, seed=99)  # warm-up, not counted
        got = load(port, images, args.clients, args.seconds, args.max_requests, seed=0)
        peak = common.proc_status_kb(proc.pid, ("VmHWM",)).get("VmHWM", 0) / 1024
    finally:
        stop(proc)
    lat = np.asarray(got["latencies_ms"])
    n_err = sum(got["errors"].values())
    row = {"server": name, "command": " ".join(["dsh", *cmd[3:]]), "clients": args.clients,
           "seconds": round(got["wall_s"], 1), "requests": int(lat.size + n_err), "errors": n_err,
           "error_kinds": got["errors"], "queries_per_s": lat.size / got["wall_s"] if got["wall_s"] else 0.0,
           "startup_s": startup, "server_peak_rss_mb": peak}
    for q in (50, 95, 99):
        row[f"p{q}_ms"] = float(np.percentile(lat, q)) if lat.size else None
    row["p99_under_target"] = row["p99_ms"] is not None and row["p99_ms"] < TARGET_P99_MS and n_err == 0
    return row


def build_index(run: Path, folder: Path, out: Path) -> None:
    from dsh.runtime.encoder import Encoder
    from dsh.runtime.searcher import index_folder

    index = index_folder(Encoder.from_run(run), folder, progress=sys.stderr.isatty())
    index.save(out)


def markdown(result: dict) -> str:
    lines = [f"Live `dsh serve` on 127.0.0.1, index of {result['index_items']:,} CIFAR-10 (JPEG copy) training "
             f"images ({result['nbits']} bits), {result['rows'][0]['clients']} concurrent clients posting real test "
             f"JPEGs to `/api/search?k=10` for {result['seconds']} s each (clients and server share the machine).",
             "", "```bash", result["command"], "```", "",
             "| server | requests | errors | queries/s | p50 ms | p95 ms | p99 ms | p99 < 100 ms, no error | server "
             "peak RSS MB | start-up s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['server']} | {r['requests']:,} | {r['errors']} | {r['queries_per_s']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{'yes' if r['p99_under_target'] else 'no'} | {r['server_peak_rss_mb']:.0f} | "
                     f"{r['startup_s']:.1f} |")
    m = result["machine"]
    lines += ["", f"Measured on {m.get('cpu', '?')} ({m.get('cpus_usable', '?')} usable CPUs), {result['threads']} "
              f"network threads in the server; load average at start {m.get('load_average_start')}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="trained run folder (CIFAR-10 JPEG copy, 3x32x32)")
    p.add_argument("--data-root", help="the cifar10-jpeg folder (default: ../shared/data/cifar10-jpeg)")
    p.add_argument("--work", default="runs/serve_load", help="where the index and the ONNX export are kept")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-requests", type=int, default=200_000, help="upper bound on requests per server")
    p.add_argument("--threads", type=int, default=2, help="network threads in the server")
    p.add_argument("--queries", type=int, default=1000, help="distinct test images the clients draw from")
    p.add_argument("--limit-database", type=int, help="smoke test: index only this many training images")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    data = Path(args.data_root) if args.data_root else (common.shared_data_dir() or Path("?")) / "cifar10-jpeg"
    if not (data / "train").is_dir():
        raise SystemExit(f"no CIFAR-10 JPEG copy at {data} (pass --data-root)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started, load_start = common.utc_now(), common.load_average()
    database = data / "train"
    if args.limit_database:
        database = work / f"train-{args.limit_database}"
        if not database.exists():
            files = sorted((data / "train").rglob("*.jpg"))[:: max(1, 50_000 // args.limit_database)]
            for f in files[: args.limit_database]:
                (database / f.parent.name).mkdir(parents=True, exist_ok=True)
                os.symlink(f.resolve(), database / f.parent.name / f.name)
    index = work / "index.dshidx"
    if not index.exists():
        print(f"indexing {database} with {args.run} ...", file=sys.stderr)
        build_index(Path(args.run), database, index)
    onnx = work / "model.onnx"
    from dsh.index.flat import HammingIndex
    from dsh.runtime.export import export_model

    export_model(args.run, onnx)
    held = HammingIndex.load(index, mmap=True)
    tests = sorted((data / "test").rglob("*.jpg"))
    pick = random.Random(0).sample(tests, min(args.queries, len(tests)))
    images = [f.read_bytes() for f in pick]
    rows = [serve_and_load("torch (checkpoint)", ["--run", str(args.run), "--backend", "torch"], index, images, args),
            serve_and_load("onnxruntime (ONNX export)", ["--model", str(onnx)], index, images, args)]
    result = {"benchmark": STEM, "command": common.command_line(), "started": started, "finished": common.utc_now(),
              "machine": {**common.machine_info(args.threads), "load_average_start": load_start,
                          "load_average_end": common.load_average()},
              "threads": args.threads, "seconds": args.seconds, "index_items": held.ntotal, "nbits": held.nbits,
              "smoke": bool(args.limit_database), "rows": rows}
    for r in rows:
        print(f"{r['server']}: {r['queries_per_s']:.1f} q/s, p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}, server peak RSS {r['server_peak_rss_mb']:.0f} MB")
    common.write_results(args.out, STEM, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

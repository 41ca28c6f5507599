"""Live updates under load: a writable ``dsh serve`` searched by 8 clients while one more adds images, and the cost
of one add to a large index file.

    python benchmarks/speed/serve_updates.py --out benchmarks/results
    python benchmarks/speed/serve_updates.py --store milvus --uri http://127.0.0.1:19530 --collection upd \\
        --sizes                                              # the same load with a Milvus collection behind

**Under load.** The index holds ``--items`` (50,000) items of random ``--bits``-bit codes (labels and the model
recorded, as ``dsh index`` writes them); the model is small and made here once in ``--work``: the paper's network
trained one epoch on 1,000 CIFAR-10 training photos, exported to ONNX (``--synthetic``, or no CIFAR-10 JPEG copy:
a digits run and synthetic 8x8 pictures, which that model maps to very few codes). ``dsh serve --writable`` runs
over it (an index file, or with ``--store milvus --uri --collection`` a Milvus collection the script fills first)
on 127.0.0.1. For ``--seconds`` (60), ``--clients`` (8) threads post CIFAR-10 test photos to
``/api/search?k=10`` over keep-alive connections: first alone, then while one more thread adds a new photo every
``1 / --rate`` s (10/s) with ``POST /api/items``; as each add is acknowledged a prober searches its own picture at
radius 0 until its id is among the results. Reported: errors (any answer other than 200/201, any connection
error, an added picture not found within 10 s), search latency p50/p99, add latency p50/p99, and the time from
acknowledgement to findable (p99 and max; it includes the probe's own latency). Targets: 0 errors, p99 < 100 ms,
findable within 1 s.

**One add to a large index file** (``--sizes``, default 1M and 10M items of 64-bit codes with class labels): the
file is built once in ``--work``, opened as a :class:`dsh.index.live.LiveIndex`, and ``--adds`` single-item adds
are timed; the bytes each writes are counted both by the index (its log) and by the kernel
(``/proc/self/io`` ``write_bytes`` is 0 in some containers, so ``wchar``, the bytes handed to write(2), is used),
and the index file's size and modification time are checked unchanged. Then 100,000 more items are added (1,000 at
a time) and ``--adds`` single adds timed again, with those items waiting in memory for the next fold (held in
segments of geometrically falling sizes, so an add does not grow with them). Then one fold (the changes written
into the file) is timed, for comparison: that is what every add would cost without the log.

The clients run in this process, on the same cores as the server: the figures are those of one small machine
doing both, upper bounds under the load average recorded.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import queue
import random
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

from speed.serve_load import free_port, wait_healthy  # noqa: E402

STEM = "serve_updates"
TARGET_P99_MS = 100.0
TARGET_FINDABLE_S = 1.0


# -- the model and the index -------------------------------------------------------------------------------------


def make_model(work: Path, nbits: int, photos: Path | None) -> Path:
    """A small model of ``nbits`` bits exported to ONNX (made once): with CIFAR-10 photos, the paper's network
    trained one epoch on 100 training photos per class (3x32x32); without, a digits run (8x8 grey). Its quality
    is not what is measured here, only that different pictures get codes the service must store and find."""
    onnx = work / f"{'cifar' if photos else 'digits'}{nbits}.onnx"
    if not onnx.is_file():
        from dsh.config import TrainConfig
        from dsh.runtime.export import export_model
        from dsh.train.loop import train

        run = onnx.with_suffix(".run")
        if photos is not None:
            subset = work / "cifar-subset"
            for split, per_class in (("train", 100), ("test", 10)):
                for folder in sorted(p for p in (photos / split).iterdir() if p.is_dir()):
                    dest = subset / split / folder.name
                    dest.mkdir(parents=True, exist_ok=True)
                    for f in sorted(folder.glob("*.jpg"))[:per_class]:
                        if not (dest / f.name).exists():
                            os.symlink(f.resolve(), dest / f.name)
            cfg = TrainConfig(dataset="folder", data_root=str(subset), nbits=nbits, epochs=1, batch_size=64,
                              tensorboard=False)
        else:
            cfg = TrainConfig(dataset="digits", nbits=nbits, epochs=5, batch_size=64, tensorboard=False)
        train(cfg, run, progress=False, log=lambda m: None)
        export_model(run, onnx)
    return onnx


def synthetic_png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


class Pictures:
    """The query and added pictures: CIFAR-10 test photos (JPEG bytes, each used once by the adder), or synthetic
    8x8 grey PNGs where there are none."""

    def __init__(self, photos: Path | None):
        self.files = sorted((photos / "test").rglob("*.jpg")) if photos is not None else []
        random.Random(0).shuffle(self.files)

    def queries(self, seed: int, n: int = 64) -> list[bytes]:
        if self.files:
            return [f.read_bytes() for f in self.files[1000 + 64 * seed: 1000 + 64 * (seed + 1)]]
        rng = np.random.default_rng(100 + seed)
        return [synthetic_png(rng) for _ in range(n)]

    def new(self, i: int) -> bytes:
        if self.files:
            return self.files[i % 1000].read_bytes()  # the first 1,000 (shuffled) are the ones added
        return synthetic_png(np.random.default_rng(10_000 + i))


def make_index(work: Path, model: Path, n: int, nbits: int):
    """``n`` random codes with class labels, recording ``model`` (as dsh index would): a HammingIndex."""
    from dsh.index.flat import HammingIndex
    from dsh.runtime.encoder import Encoder
    from dsh.runtime.searcher import model_record

    encoder = Encoder.from_file(model)
    rng = np.random.default_rng(0)
    index = HammingIndex(nbits)
    index.add(np.packbits(rng.random((n, nbits)) < 0.5, axis=1, bitorder="little"),
              labels=rng.integers(0, 10, n), class_names=encoder.class_names or [str(i) for i in range(10)])
    index.metadata.update(source="synthetic", model=model_record(encoder))
    return index


# -- HTTP ---------------------------------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """``(field, filename or None, bytes)`` -> a multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    body = b""
    for field, filename, data in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n{kind}\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection; ``post`` -> (status or error name, JSON or None, seconds)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, parts) -> tuple[Any, Any, float]:
        body, kind = multipart(parts)
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", path, body=body, headers={"Content-Type": kind})
            r = self.conn.getresponse()
            data = r.read()
            status = r.status
        except OSError as e:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            return type(e).__name__, None, time.perf_counter() - t0
        dt = time.perf_counter() - t0
        try:
            return status, json.loads(data), dt
        except ValueError:
            return status, None, dt


def under_load(port: int, args, rate: float, pictures: Pictures) -> dict[str, Any]:
    """The searchers, and (``rate`` > 0) the adder and the prober, for ``args.seconds``."""
    lock = threading.Lock()
    search_ms: list[float] = []
    add_ms: list[float] = []
    findable_s: list[float] = []
    errors: dict[str, int] = {}
    never_found: list[int] = []
    acked: queue.Queue = queue.Queue()
    deadline = time.monotonic() + args.seconds

    def error(kind) -> None:
        with lock:
            errors[str(kind)] = errors.get(str(kind), 0) + 1

    def searcher(i: int) -> None:
        rng = np.random.default_rng(100 + i)
        queries = pictures.queries(i)
        c = Client(port)
        while time.monotonic() < deadline:
            status, _, dt = c.post("/api/search?k=10", [("image", "q.jpg", queries[int(rng.integers(len(queries)))])])
            if status == 200:
                with lock:
                    search_ms.append(1000 * dt)
            else:
                error(status)

    def adder() -> None:
        c = Client(port)
        step, t_next, i = 1.0 / rate, time.monotonic(), 0
        while t_next < deadline:
            time.sleep(max(0.0, t_next - time.monotonic()))
            t_next += step
            picture = pictures.new(i)
            i += 1
            status, body, dt = c.post("/api/items", [("image", "new.png", picture), ("label", None, b"3")])
            if status != 201:
                error(status)
                continue
            with lock:
                add_ms.append(1000 * dt)
            acked.put((time.monotonic(), body["items"][0]["id"], picture))
        acked.put(None)

    def prober() -> None:
        c = Client(port)
        while (item := acked.get()) is not None:
            t_ack, item_id, picture = item
            while True:
                status, body, _ = c.post("/api/search?radius=0", [("image", "p.png", picture)])
                if status != 200:
                    error(status)
                elif item_id in [r["id"] for r in body["results"]]:
                    findable_s.append(time.monotonic() - t_ack)
                    break
                if time.monotonic() - t_ack > 10:
                    never_found.append(item_id)
                    break
                time.sleep(0.01)

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(args.clients)]
    if rate > 0:
        threads += [threading.Thread(target=adder), threading.Thread(target=prober)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat, add, found = np.asarray(search_ms), np.asarray(add_ms), np.asarray(findable_s)

    def pct(a, q):
        return float(np.percentile(a, q)) if a.size else None

    n_err = sum(errors.values()) + len(never_found)
    return {"rate_per_s": rate, "wall_s": round(wall, 1), "searches": int(lat.size), "searches_per_s": lat.size / wall,
            "adds": int(add.size), "adds_per_s": add.size / wall, "errors": n_err, "error_kinds": errors,
            "never_found": len(never_found),
            "search_p50_ms": pct(lat, 50), "search_p99_ms": pct(lat, 99),
            "add_p50_ms": pct(add, 50), "add_p99_ms": pct(add, 99),
            "findable_p50_s": pct(found, 50), "findable_p99_s": pct(found, 99),
            "findable_max_s": float(found.max()) if found.size else None}


def serve_with_updates(args, work: Path, model: Path, pictures: Pictures) -> list[dict[str, Any]]:
    index = make_index(work, model, args.items, args.bits)
    if args.store == "milvus":
        from dsh.index.store import IndexSpec, write_index

        write_index(index, IndexSpec(args.uri, args.collection), overwrite=True)
        where = ["--store", "milvus", "--uri", args.uri, "--collection", args.collection]
        data_dir = args.data_dir or str(work / "milvus-data")
    else:
        path = work / f"updates-{args.items}.dshidx"
        for leftover in (path.with_name(path.name + ".log"), path.with_name(path.name + ".data")):
            if leftover.is_file():
                leftover.unlink()
        index.save(path)
        where = ["--index", str(path)]
        data_dir = args.data_dir or str(work / "file-data")
    port = free_port()
    cmd = [sys.executable, "-m", "dsh", "serve", *where, "--model", str(model), "--writable", "--data-dir",
           data_dir, "--host", "127.0.0.1", "--port", str(port), "--quiet", "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        wait_healthy(port, proc)
        startup = time.monotonic() - t0
        under_load(port, args, 0.0, pictures) if args.seconds >= 10 else None  # warm-up, not counted
        # the same searches alone, then with the adds: what the updates cost the searchers
        phases = [under_load(port, args, rate, pictures) for rate in (0.0, args.rate)]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = []
    for got in phases:
        met = bool(got["errors"] == 0 and got["search_p99_ms"] is not None and got["search_p99_ms"] < TARGET_P99_MS
                   and (got["rate_per_s"] == 0 or (got["findable_max_s"] is not None
                                                   and got["findable_max_s"] < TARGET_FINDABLE_S)))
        rows.append({"store": args.store, "items": args.items, "bits": args.bits, "clients": args.clients,
                     "command": " ".join(["dsh", *cmd[3:]]), "startup_s": round(startup, 1), **got, "met": met})
    return rows


# -- one add to a large index file -------------------------------------------------------------------------------


def io_written() -> int:
    """Bytes this process has handed to write(2) so far (``wchar``; ``write_bytes`` reads 0 in some containers)."""
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["wchar"])


def single_adds(live, rng, adds: int) -> tuple[list, list, list, np.ndarray]:
    """``adds`` adds of one random 64-bit code each: their seconds, the bytes the index logged and the bytes the
    kernel was handed for each, and the last code."""
    times, logged, kernel = [], [], []
    for _ in range(adds):
        code = rng.integers(0, 256, (1, 8), dtype=np.uint8)
        b0, k0 = live.bytes_written, io_written()
        t0 = time.perf_counter()
        live.add(code, labels=[int(rng.integers(10))])
        times.append(time.perf_counter() - t0)
        logged.append(live.bytes_written - b0)
        kernel.append(io_written() - k0)
    return times, logged, kernel, code


def add_cost(work: Path, n: int, adds: int, pending: int = 100_000) -> dict[str, Any]:
    from dsh.index.flat import HammingIndex
    from dsh.index.live import LiveIndex, log_path

    path = work / f"cost-{n}.dshidx"
    if not path.is_file():
        rng = np.random.default_rng(1)
        index = HammingIndex(64)
        index.add(rng.integers(0, 256, (n, 8), dtype=np.uint8), labels=rng.integers(0, 10, n),
                  class_names=[str(i) for i in range(10)])
        index.save(path)
        del index
    log = log_path(path)
    if log.is_file():
        log.unlink()
    files_bytes = path.stat().st_size + sum(c.stat().st_size for c in path.parent.glob(f"{path.name}.*.catalog"))
    t0 = time.perf_counter()
    live = LiveIndex.open(path)
    open_s = time.perf_counter() - t0
    stat0 = path.stat()
    rng = np.random.default_rng(2)
    times, logged, kernel, code = single_adds(live, rng, adds)
    stat1 = path.stat()
    lims, D, I = live.range_search(code, 0)
    assert live.next_id - 1 in I, "the last add is found"
    # the same single adds once `pending` items wait in memory for the next fold (1,000 at a time)
    for a in range(0, pending, 1000):
        live.add(rng.integers(0, 256, (min(1000, pending - a), 8), dtype=np.uint8))
    times_pending = single_adds(live, rng, adds)[0]
    segments = len(live.snapshot().segments)
    untouched = (stat0.st_size, stat0.st_mtime_ns, stat0.st_ino) == (stat1.st_size, stat1.st_mtime_ns, stat1.st_ino)
    k0 = io_written()
    t0 = time.perf_counter()
    live.fold()
    fold_s = time.perf_counter() - t0
    fold_bytes = io_written() - k0
    live.close()
    return {"items": n, "bits": 64, "files_mb": files_bytes / 2**20, "open_s": open_s, "adds": adds,
            "add_ms_p50": 1000 * float(np.median(times)), "add_ms_max": 1000 * float(np.max(times)),
            "pending": pending, "add_ms_p50_pending": 1000 * float(np.median(times_pending)),
            "add_ms_max_pending": 1000 * float(np.max(times_pending)), "segments_pending": segments,
            "bytes_logged_per_add": float(np.median(logged)), "bytes_written_per_add": float(np.median(kernel)),
            "index_file_untouched": untouched, "fold_s": fold_s, "fold_mb_written": fold_bytes / 2**20}


# -- the report ---------------------------------------------------------------------------------------------------


def fmt(x, digits=1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def markdown(result: dict) -> str:
    lines = []
    if result["load"]:
        r = result["load"][-1]
        lines += [f"{r['clients']} clients searching (`/api/search?k=10`, {result['pictures']}) for {r['wall_s']} s "
                  f"on a writable `dsh serve` over {r['items']:,} items of {r['bits']} bits ({r['store']}): alone, "
                  f"then while one more client adds {r['rate_per_s']:g} images/s (`POST /api/items`) and a prober "
                  f"searches each added picture at radius 0 until its id comes back.", "",
                  "| store | adds/s | searches | searches/s | adds | errors | search p50 ms | search p99 ms | "
                  "add p50 ms | add p99 ms | findable p99 s | findable max s | 0 errors, p99 < 100 ms, findable "
                  "< 1 s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in result["load"]:
            lines.append(f"| {r['store']} | {r['rate_per_s']:g} | {r['searches']:,} | {r['searches_per_s']:.1f} | "
                         f"{r['adds']} | {r['errors']} | {fmt(r['search_p50_ms'])} | {fmt(r['search_p99_ms'])} | "
                         f"{fmt(r['add_p50_ms'])} | {fmt(r['add_p99_ms'])} | {fmt(r['findable_p99_s'], 3)} | "
                         f"{fmt(r['findable_max_s'], 3)} | {'yes' if r['met'] else 'no'} |")
        lines.append("")
    if result["cost"]:
        lines += ["One add of one item to an index file (64-bit codes, class labels), through its change log "
                  "(`LiveIndex.add`: a record appended and fsynced), against one fold (the file rewritten with the "
                  "changes, what every add would cost without the log):", "",
                  "| items | index + catalog MB | open s | add ms (p50) | add ms (max) | add ms (p50 / max) with items "
                  "waiting for the fold | bytes logged per add | bytes written per add (kernel) | index file "
                  "untouched | fold s | fold MB written |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
        for c in result["cost"]:
            waiting = "—" if "pending" not in c else (
                f"{c['add_ms_p50_pending']:.2f} / {c['add_ms_max_pending']:.2f} ({c['pending']:,} waiting, "
                f"{c['segments_pending']} segments)")
            lines.append(f"| {c['items']:,} | {c['files_mb']:.0f} | {c['open_s']:.1f} | {c['add_ms_p50']:.2f} | "
                         f"{c['add_ms_max']:.2f} | {waiting} | {c['bytes_logged_per_add']:.0f} | "
                         f"{c['bytes_written_per_add']:.0f} | {'yes' if c['index_file_untouched'] else 'no'} | "
                         f"{c['fold_s']:.1f} | {c['fold_mb_written']:.0f} |")
        lines.append("")
    m = result["machine"]
    lines += [f"Measured on {m.get('cpu', '?')} ({m.get('cpus_usable', '?')} usable CPUs), clients and server on the "
              f"same machine; load average (1/5/15 min) {m.get('load_average_start')} at the start, "
              f"{m.get('load_average_end')} at the end: other jobs shared the cores, so the times are upper "
              f"bounds."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/serve_updates", help="where the model and the index files are kept")
    p.add_argument("--items", type=int, default=50_000, help="items in the served index (default 50,000)")
    p.add_argument("--bits", type=int, default=48, help="code length of the served index and its model")
    p.add_argument("--data-root", help="the cifar10-jpeg folder (default: ../shared/data/cifar10-jpeg)")
    p.add_argument("--synthetic", action="store_true", help="synthetic 8x8 pictures and a digits model instead")
    p.add_argument("--clients", type=int, default=8, help="searching clients (default 8)")
    p.add_argument("--rate", type=float, default=10.0, help="adds per second (default 10)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (default 60)")
    p.add_argument("--threads", type=int, default=2, help="network threads in the server")
    p.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000],
                   help="index files whose one-add cost is measured (none: skip)")
    p.add_argument("--adds", type=int, default=20, help="single-item adds timed at each size")
    p.add_argument("--store", choices=("file", "milvus"), default="file", help="what the served index lives in")
    p.add_argument("--uri", help="--store milvus: the server, http://host:19530 (or a Milvus Lite file)")
    p.add_argument("--collection", default="dsh_serve_updates", help="--store milvus: the collection (replaced)")
    p.add_argument("--data-dir", help="the service's data folder (default: under --work)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.store == "milvus" and not args.uri:
        raise SystemExit("--store milvus needs --uri")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started, load_start = common.utc_now(), common.load_average()
    photos = Path(args.data_root) if args.data_root else (common.shared_data_dir() or Path("?")) / "cifar10-jpeg"
    photos = photos if (photos / "test").is_dir() and not args.synthetic else None
    model = make_model(work, args.bits, photos)
    pictures = Pictures(photos)
    load = serve_with_updates(args, work, model, pictures) if args.seconds > 0 else []
    for r in load:
        print(f"{r['store']}, {r['rate_per_s']:g} adds/s: {r['searches']} searches, p50 "
              f"{fmt(r['search_p50_ms'])} ms, p99 {fmt(r['search_p99_ms'])} ms; {r['adds']} adds, findable max "
              f"{fmt(r['findable_max_s'], 3)} s; errors {r['errors']}", file=sys.stderr)
    cost = []
    for n in args.sizes:
        cost.append(add_cost(work, n, args.adds))
        print(f"{n:,} items: add {cost[-1]['add_ms_p50']:.2f} ms, {cost[-1]['bytes_written_per_add']:.0f} bytes; "
              f"fold {cost[-1]['fold_s']:.1f} s", file=sys.stderr)
    result = {"benchmark": STEM, "command": common.command_line(), "started": started, "finished": common.utc_now(),
              "machine": {**common.machine_info(args.threads), "load_average_start": load_start,
                          "load_average_end": common.load_average()},
              "targets": {"errors": 0, "search_p99_ms": TARGET_P99_MS, "findable_s": TARGET_FINDABLE_S},
              "pictures": "CIFAR-10 test photos" if photos else "synthetic 8x8 grey PNGs", "load": load,
              "cost": cost}
    common.write_results(args.out, STEM, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A long day for ``dsh serve``: a real server on 127.0.0.1 under steady mixed load, with idle connections held open.

    python benchmarks/reliability/soak.py --minutes 20 --out benchmarks/results

The server holds a small index (``--items`` CIFAR-10 training JPEGs, or generated pictures where the JPEG copy is
absent) and serves an ONNX model exported from an untrained 48-bit ``paper`` network (the soak is about the
server staying up and flat, not about retrieval quality; the model is the size of the CIFAR-10 one). It is started
as ``dsh serve`` with ``--max-active`` and ``--max-connections``, then:

- ``--idle`` sockets are opened to it and held open for the whole run, sending nothing (reopened if the server
  closes one; how many it closed is reported);
- ``--clients`` threads, each on its own keep-alive connection, mix requests for ``--minutes``: a search by an
  uploaded JPEG (``/api/search?k=10``, half), a search by hex code (JSON, a quarter), an encode of 1-4 JPEGs
  (``/api/encode``, a quarter). Any answer but 200 is an error;
- every 5 s a fresh connection asks ``/healthz`` (it must answer 200 while the idle sockets are held), and the
  server's resident memory (VmRSS) and open file descriptors (``/proc/PID/fd``) are sampled.

Reported per minute: requests, errors, latency p50 / p95 / p99, health checks answered, the server's RSS and open
descriptors, the load average; overall: the growth of RSS and descriptors from the end of the first minute to the
largest value after it (target: under 5 %). Clients and server share the machine's cores: latencies are upper bounds
under the load average recorded. (Adds are not in the mix: this service has no route that adds items.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402
import numpy as np  # noqa: E402
from speed.serve_load import free_port, multipart, post, stop, wait_healthy  # noqa: E402

STEM = "soak"
TARGET_GROWTH = 0.05
SAMPLE_S = 5.0


# ---------------------------------------------------------------------------------------------------------------
# what the server holds


def make_model(work: Path, nbits: int = 48) -> Path:
    """An untrained ``paper`` network for 3x32x32 images, as a checkpoint and its ONNX export; the ONNX path."""
    import torch

    from dsh.models import Normalizer
    from dsh.models.checkpoint import save_checkpoint
    from dsh.models.registry import create_model
    from dsh.runtime.export import export_model

    torch.manual_seed(0)
    model = create_model("paper", nbits, in_channels=3, image_size=32)
    ckpt = work / "model.pt"
    save_checkpoint(ckpt, {
        "model_config": dict(model.config), "nbits": nbits, "input_shape": [3, 32, 32],
        "normalizer": Normalizer([0.49, 0.48, 0.45], [0.25, 0.24, 0.26]).to_dict(),
        "class_names": [f"c{i}" for i in range(10)], "config": {"dataset": "soak", "nbits": nbits}, "epoch": 0,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "history": []})
    onnx = work / "model.onnx"
    export_model(ckpt, onnx)
    return onnx


def pictures(data: Path | None, folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` JPEGs in class folders under ``folder``: CIFAR-10 images from ``data`` (linked) where it has them,
    otherwise smooth random pictures written here."""
    rng = random.Random(seed)
    if data is not None and data.is_dir():
        files = sorted(data.rglob("*.jpg"))
        pick = rng.sample(files, min(n, len(files)))
        for f in pick:
            (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
            if not (folder / f.parent.name / f.name).exists():
                os.symlink(f.resolve(), folder / f.parent.name / f.name)
        return sorted(folder.rglob("*.jpg"))
    from PIL import Image

    g = np.random.default_rng(seed)
    for i in range(n):
        (folder / f"c{i % 10}").mkdir(parents=True, exist_ok=True)
        small = g.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.BILINEAR).save(folder / f"c{i % 10}" / f"{i:05d}.jpg")
    return sorted(folder.rglob("*.jpg"))


# ---------------------------------------------------------------------------------------------------------------
# the load


class Tally:
    """Per-minute counts and latencies, shared by the client threads."""

    def __init__(self, t0: float):
        self.t0, self.lock = t0, threading.Lock()
        self.latencies: dict[int, list[float]] = {}
        self.errors: dict[int, dict[str, int]] = {}
        self.kinds: dict[str, int] = {}

    def minute(self) -> int:
        return int((time.monotonic() - self.t0) // 60)

    def add(self, kind: str, status: Any, ms: float) -> None:
        m = self.minute()
        with self.lock:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if status == 200:
                self.latencies.setdefault(m, []).append(ms)
            else:
                errs = self.errors.setdefault(m, {})
                key = f"{kind} {status}"
                errs[key] = errs.get(key, 0) + 1


def request_for(rng: random.Random, images: list[bytes], nbits: int) -> tuple[str, str, bytes, dict[str, str]]:
    """One request of the mix: (kind, path, body, headers)."""
    draw = rng.random()
    if draw < 0.5:
        body, ctype = multipart("image", "q.jpg", images[rng.randrange(len(images))])
        return "search image", "/api/search?k=10", body, {"Content-Type": ctype}
    if draw < 0.75:
        code = "".join(rng.choice("0123456789abcdef") for _ in range(nbits // 4))
        return "search hex", "/api/search?k=10", json.dumps({"hex": code}).encode(), \
            {"Content-Type": "application/json"}
    import uuid

    boundary = uuid.uuid4().hex
    parts = b"".join(
        (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"e{i}.jpg\"\r\n"
         f"Content-Type: image/jpeg\r\n\r\n").encode() + images[rng.randrange(len(images))] + b"\r\n"
        for i in range(rng.randint(1, 4)))
    return "encode", "/api/encode", parts + f"--{boundary}--\r\n".encode(), \
        {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def client(port: int, images: list[bytes], nbits: int, deadline: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while time.monotonic() < deadline:
        kind, path, body, headers = request_for(rng, images, nbits)
        t0 = time.perf_counter()
        status, conn = post(conn, path, body, headers)
        tally.add(kind, status, (time.perf_counter() - t0) * 1000)
    conn.close()


class IdleSockets:
    """``n`` connections to the server that send nothing, held open; :meth:`refill` reopens any it closed."""

    def __init__(self, port: int, n: int):
        self.port, self.socks, self.closed_by_server = port, [], 0
        for _ in range(n):
            self.socks.append(self._open())

    def _open(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setblocking(False)
        return s

    def refill(self) -> int:
        """Reopen the sockets the server closed; how many were open (of ``n``) before."""
        still = 0
        for i, s in enumerate(self.socks):
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError
                still += 1  # it sent something: it is open
            except BlockingIOError:
                still += 1  # nothing to read: open and idle
            except OSError:
                s.close()
                self.closed_by_server += 1
                self.socks[i] = self._open()
        return still

    def close(self) -> None:
        for s in self.socks:
            s.close()


def health(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/healthz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def server_sample(pid: int) -> dict[str, float]:
    rss = common.proc_status_kb(pid, ("VmRSS",)).get("VmRSS", 0) / 1024
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return {"rss_mb": round(rss, 1), "fds": fds}


def soak(port: int, pid: int, images: list[bytes], nbits: int, args) -> dict[str, Any]:
    idle = IdleSockets(port, args.idle)
    t0 = time.monotonic()
    tally = Tally(t0)
    deadline = t0 + args.minutes * 60
    threads = [threading.Thread(target=client, args=(port, images, nbits, deadline, tally, 1000 + i), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    samples, checks = [], []
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        t = time.monotonic() - t0
        open_idle = idle.refill()
        checks.append({"t": t, "ok": health(port)})
        samples.append({"t": round(t, 1), **server_sample(pid), "idle_open": open_idle,
                        "load": common.load_average()})
    for t in threads:
        t.join(timeout=120)
    idle_end = idle.refill()
    idle.close()
    return {"tally": tally, "samples": samples, "checks": checks, "idle_open_end": idle_end,
            "idle_closed_by_server": idle.closed_by_server, "wall_s": time.monotonic() - t0}


def growth(samples: list[dict], key: str) -> dict[str, float]:
    """From the sample at the end of the first minute to the largest one after it."""
    after = [s for s in samples if s["t"] >= 60.0]
    if not after:
        return {"at_1_min": None, "max_after": None, "growth": None}
    base, top = after[0][key], max(s[key] for s in after)
    return {"at_1_min": base, "max_after": top, "growth": round((top - base) / base, 4) if base > 0 else None}


def per_minute(run: dict[str, Any]) -> list[dict[str, Any]]:
    tally, rows = run["tally"], []
    minutes = int(np.ceil(run["wall_s"] / 60 - 1e-6))
    for m in range(minutes):
        lat = np.asarray(tally.latencies.get(m, []))
        errs = tally.errors.get(m, {})
        in_min = [s for s in run["samples"] if m * 60 < s["t"] <= (m + 1) * 60]
        checks = [c for c in run["checks"] if m * 60 < c["t"] <= (m + 1) * 60]
        last = in_min[-1] if in_min else {}
        rows.append({
            "minute": m + 1, "requests": int(lat.size + sum(errs.values())), "errors": sum(errs.values()),
            "error_kinds": errs, **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if lat.size else None
                                   for q in (50, 95, 99)},
            "health_ok": sum(c["ok"] for c in checks), "health_checks": len(checks),
            "rss_mb": last.get("rss_mb"), "fds": last.get("fds"), "idle_open": last.get("idle_open"),
            "load_1min": (last.get("load") or [None])[0]})
    return rows


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"`dsh serve` for {result['minutes']} min on 127.0.0.1: {result['clients']} clients mixing searches by "
             f"image and by hex code and encodes of 1-4 JPEGs, while {result['idle']} idle connections are held open; "
             f"an index of {result['index_items']:,} images, a {result['nbits']}-bit ONNX model "
             f"(`--max-active {result['max_active']} --max-connections {result['max_connections']}`).", "",
             f"Requests {s['requests']:,}, errors **{s['errors']}**, health checks answered {s['health_ok']} of "
             f"{s['health_checks']}; idle connections open at the end {s['idle_open_end']} of {result['idle']} "
             f"(closed by the server: {s['idle_closed_by_server']}). Growth after the first minute: resident memory "
             f"{_pct(s['rss']['growth'])} ({s['rss']['at_1_min']} -> {s['rss']['max_after']} MB), open descriptors "
             f"{_pct(s['fds']['growth'])} ({s['fds']['at_1_min']} -> {s['fds']['max_after']}); target under "
             f"{TARGET_GROWTH:.0%}: **{'met' if s['flat'] else 'not met'}**.", "",
             "| minute | requests | errors | p50 ms | p95 ms | p99 ms | health | server RSS MB | open fds | idle open "
             "| load (1 min) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["minutes_rows"]:
        # requests still in flight at the deadline end after it: they get a row of their own
        label = r["minute"] if r["minute"] <= np.ceil(result["minutes"]) else "after the end"
        lines.append(f"| {label} | {r['requests']:,} | {r['errors']} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
                     f"{_ms(r['p99_ms'])} | {r['health_ok']}/{r['health_checks']} | {r['rss_mb']} | {r['fds']} | "
                     f"{r['idle_open']} | {r['load_1min']} |")
    m = result["machine"]
    lines += ["", f"Measured on {m.get('cpu', '?')} ({m.get('cpus_usable', '?')} usable CPUs), clients and server "
              f"on the same cores, the machine shared with other jobs: load average {m.get('load_average_start')} "
              f"at the start and {m.get('load_average_end')} at the end, so the latencies are upper bounds."]
    return "\n".join(lines) + "\n"


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:+.1%}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="how long the load runs (default 20)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--idle", type=int, default=500, help="idle connections held open meanwhile (default 500)")
    p.add_argument("--items", type=int, default=2000, help="images in the index (default 2000)")
    p.add_argument("--threads", type=int, default=2, help="the server's encoder threads")
    p.add_argument("--max-active", type=int, default=64, help="dsh serve --max-active")
    p.add_argument("--max-connections", type=int, default=1000, help="dsh serve --max-connections")
    p.add_argument("--data-root", help="the cifar10-jpeg folder (default: ../shared/data/cifar10-jpeg; generated "
                                       "pictures where it is absent)")
    p.add_argument("--out", default="benchmarks/results", help="folder for soak.json / soak.md ('' for none)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.idle < 0 or args.items < 1:
        p.error("--minutes, --clients and --items must be positive, --idle at least 0")
    data = Path(args.data_root) if args.data_root else (common.shared_data_dir() or Path("?")) / "cifar10-jpeg"
    started, load_start = common.utc_now(), common.load_average()
    with tempfile.TemporaryDirectory(prefix="dsh-soak-") as tmp:
        work = Path(tmp)
        onnx = make_model(work)
        from dsh.runtime.encoder import Encoder
        from dsh.runtime.searcher import index_folder

        (work / "db").mkdir()
        pictures(data / "train" if data.is_dir() else None, work / "db", args.items, 0)
        index_folder(Encoder.from_file(onnx), work / "db").save(work / "db.dshidx")
        (work / "q").mkdir()
        images = [f.read_bytes() for f in pictures(data / "test" if data.is_dir() else None, work / "q", 500, 1)]
        port = free_port()
        cmd = [sys.executable, "-m", "dsh", "serve", "--index", str(work / "db.dshidx"), "--model", str(onnx),
               "--host", "127.0.0.1", "--port", str(port), "--quiet", "--threads", str(args.threads),
               "--max-active", str(args.max_active), "--max-connections", str(args.max_connections)]
        log = open(work / "serve.log", "w+")  # a file, not a pipe: a pipe nobody reads would stall the server
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            wait_healthy(port, proc)
            run = soak(port, proc.pid, images, 48, args)
            alive = proc.poll() is None
        finally:
            stop(proc)
            log.seek(0)
            err = log.read()
            log.close()
    rows = per_minute(run)
    rss, fds = growth(run["samples"], "rss_mb"), growth(run["samples"], "fds")
    summary = {
        "requests": sum(r["requests"] for r in rows), "errors": sum(r["errors"] for r in rows),
        "by_kind": run["tally"].kinds, "health_ok": sum(c["ok"] for c in run["checks"]),
        "health_checks": len(run["checks"]), "idle_open_end": run["idle_open_end"],
        "idle_closed_by_server": run["idle_closed_by_server"], "server_alive_at_end": alive,
        "rss": rss, "fds": fds,
        "flat": all(g["growth"] is not None and g["growth"] < TARGET_GROWTH for g in (rss, fds)),
        "server_stderr_tail": (err or "")[-2000:]}
    result = {"benchmark": STEM, "command": common.command_line(), "started": started, "finished": common.utc_now(),
              "machine": {**common.machine_info(args.threads), "load_average_start": load_start,
                          "load_average_end": common.load_average()},
              "minutes": args.minutes, "clients": args.clients, "idle": args.idle, "index_items": args.items,
              "nbits": 48, "max_active": args.max_active, "max_connections": args.max_connections,
              "server_command": " ".join(["dsh", *cmd[3:]]), "summary": summary, "minutes_rows": rows,
              "samples": run["samples"]}
    print(f"requests {summary['requests']:,}, errors {summary['errors']}, health {summary['health_ok']}/"
          f"{summary['health_checks']}, RSS growth {_pct(rss['growth'])}, fd growth {_pct(fds['growth'])}, "
          f"idle open at end {summary['idle_open_end']}/{args.idle}")
    if args.out:
        common.write_results(args.out, STEM, result, markdown(result))
    ok = summary["errors"] == 0 and summary["flat"] and alive and summary["health_ok"] == summary["health_checks"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

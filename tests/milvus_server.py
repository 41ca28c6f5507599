"""A real Milvus server for the tests and benchmarks: the ``milvus`` package (2.3.x, "embedded Milvus") runs a
Milvus standalone process in a folder of its own, on local ports; dsh reaches it at ``http://127.0.0.1:PORT``.

>>> with EmbeddedMilvus(tmp_path / "milvus") as server:     # about 8 s to start, on 2 cores
...     index = MilvusIndex.create(server.uri, "c", 16)

:func:`why_not` says why no server can be had here (the package is missing, or the platform has no binary), or
None; :meth:`EmbeddedMilvus.start` raises ``RuntimeError`` when the server does not come up. Run as a script it
starts one in a folder and prints its URI until interrupted (for a benchmark against a server)::

    python tests/milvus_server.py /tmp/milvus-data
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import time
from pathlib import Path

# The proxy publishes a time tick every 200 ms by default, and a search with consistency level Strong (what dsh
# asks for, so that a write through one client is found through another at once) waits for the next one; 20 ms
# keeps that wait short at a small cost of background work.
# One DML channel instead of 16: each channel carries every tick, and a test's collections need one; the idle
# server's CPU falls from about 14% to 8% of a core.
SETTINGS = {"proxy.timeTickInterval": 20, "rootCoord.dmlChannelNum": 1}
# Milvus's components advertise their address to each other; the loopback keeps that traffic on this machine.
for _part in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"):
    SETTINGS[f"{_part}.ip"] = "127.0.0.1"
ETCD_PEER_PORT = 2380  # the embedded etcd's, fixed (not in the package's settings): one such server per machine


def why_not() -> str | None:
    """None where an embedded Milvus server can be started here, else why not (one line)."""
    if importlib.util.find_spec("milvus") is None:
        return "the embedded Milvus server is not installed: pip install 'dsh[milvus-server]' (milvus 2.3.x)"
    if not sys.platform.startswith("linux") and sys.platform != "darwin":
        return f"the milvus package has no server binary for {sys.platform}"
    return None


class EmbeddedMilvus:
    """One Milvus server process whose data, configuration and logs live in ``folder``; :attr:`uri` once started.

    ``stop`` kills it (SIGKILL: its orderly shutdown takes tens of seconds and writes nothing dsh needs, since
    every write dsh acknowledges has been accepted by the server's write-ahead log, which a restart replays)."""

    def __init__(self, folder: str | os.PathLike, settings: dict | None = None):
        self.folder = Path(folder)
        self.settings = {**SETTINGS, **(settings or {})}
        self._server = None

    def start(self, timeout: float = 120.0) -> "EmbeddedMilvus":
        from milvus import MilvusServer

        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", ETCD_PEER_PORT))
            except OSError:
                raise RuntimeError(f"port {ETCD_PEER_PORT} (the embedded Milvus's etcd) is taken: another embedded "
                                   f"Milvus server runs on this machine (point $DSH_TEST_MILVUS_URI at it)") from None
        self.folder.mkdir(parents=True, exist_ok=True)
        server = MilvusServer(wait_for_started=False)
        server.set_base_dir(str(self.folder))
        for key, value in self.settings.items():
            server.config.set(key, value)
        server.start()
        self._server = server
        try:
            server.wait_started(timeout=int(timeout * 1000))
        except (TimeoutError, RuntimeError) as e:
            self.stop()
            log = self.folder / "logs" / "milvus-stderr.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.is_file() else []
            raise RuntimeError(f"the embedded Milvus server did not start in {self.folder}: {e}; "
                               f"{' | '.join(tail) or 'no log'}") from None
        return self

    @property
    def port(self) -> int:
        return int(self._server.listen_port)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None or server.server_proc is None:
            return
        proc = server.server_proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        server.server_proc = None
        for fd in server.proc_fds.values():
            fd.close()
        server.proc_fds.clear()

    def __enter__(self) -> "EmbeddedMilvus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python tests/milvus_server.py", description="start an embedded Milvus server")
    p.add_argument("folder", help="where its data, configuration and logs live")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a server setting over this module's SETTINGS, e.g. --set proxy.timeTickInterval=10 "
                        "(repeatable)")
    args = p.parse_args(argv)
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        settings[key] = int(value) if value.lstrip("-").isdigit() else value
    reason = why_not()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    with EmbeddedMilvus(args.folder, settings) as server:
        print(f"Milvus at {server.uri} (started in {time.perf_counter() - t0:.1f} s; data in {args.folder}; "
              f"settings {settings or 'as in this module'}); "
              f"Ctrl+C stops it", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while server.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

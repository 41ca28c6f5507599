"""`dsh serve` in a child process on a free port of 127.0.0.1, for the tests that kill it (SIGKILL) or run
several at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


class ServeProcess:
    """``dsh serve ARGS --port PORT --quiet`` started, and answering ``/healthz``, once constructed; ``url``;
    ``preexec_fn`` runs in the child before it starts (e.g. a resource limit)."""

    def __init__(self, args: list[str], preexec_fn=None, timeout: float = 120):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dsh", "serve", *args, "--port", str(self.port), "--quiet"],
            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"dsh serve exited: {self.proc.stderr.read()}"
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise AssertionError("dsh serve did not answer in time")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stderr.close()

"""Bounded concurrency of `dsh serve`: requests past ``--max-active`` are answered 503 JSON at once (``/healthz``
never), and a live server holding many idle connections still answers health and searches, while connections
past ``--max-connections`` are refused with 503 rather than left hanging."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
import httpx  # noqa: E402
from serve.test_serve_browser import free_port, wait_healthy  # noqa: E402

from dsh.serve.app import ActiveLimit  # noqa: E402


def test_requests_past_the_limit_get_503_json_and_health_still_answers():
    async def scenario():
        inside, release = asyncio.Semaphore(0), asyncio.Event()

        async def app(scope, receive, send):  # holds every request but /healthz until released
            if scope["path"] != "/healthz":
                inside.release()
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"done"})

        transport = httpx.ASGITransport(app=ActiveLimit(app, limit=2))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = [asyncio.create_task(c.get(f"/api/slow/{i}")) for i in range(2)]
            for _ in held:
                await inside.acquire()  # both are in progress now
            extra = await c.get("/api/slow/extra")
            health = await c.get("/healthz")
            release.set()
            done = await asyncio.gather(*held)
            after = await c.get("/api/slow/after")
        return extra, health, done, after

    extra, health, done, after = asyncio.run(scenario())
    assert extra.status_code == 503 and extra.headers["retry-after"] == "1"
    assert extra.json() == {"error": {"status": 503, "message": "busy: 2 requests in progress; retry shortly"}}
    assert health.status_code == 200
    assert [r.status_code for r in done] == [200, 200]
    assert after.status_code == 200  # the count went back down


def _get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _search_hex(port: int, code: str) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("POST", "/api/search?k=5", body=json.dumps({"hex": code}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, digits_run):
    """A live `dsh serve` over 40 digit images with --max-connections 60."""
    from conftest import write_digit_folder

    from dsh.cli import main

    root = tmp_path_factory.mktemp("limits")
    folder = root / "imgs"
    write_digit_folder(folder, 40)
    index = root / "db.dshidx"
    assert main(["index", "--images", str(folder), "--run", str(digits_run), "--out", str(index), "--quiet"]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dsh", "serve", "--index", str(index), "--host", "127.0.0.1",
                             "--port", str(port), "--quiet", "--max-active", "4", "--max-connections", "60"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "DSH_DEBUG": ""})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield port, index
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_idle_connections_do_not_stop_health_or_search(limited_server):
    from dsh.codes.bits import to_hex
    from dsh.index.flat import HammingIndex

    port, index = limited_server
    held = HammingIndex.load(index)
    hex_code = to_hex(held.codes[3:4], held.nbits)[0]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
    try:
        assert _get(port, "/healthz")[0] == 200
        status, body = _search_hex(port, hex_code)
        assert status == 200 and body["results"][0]["distance"] == 0  # the item itself is found
        # 50 idle + these 15 pass the limit of 60 connections: what is past it is refused at once, not hung
        more = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(15)]
        try:
            assert _get(port, "/healthz")[0] == 503
        finally:
            for s in more:
                s.close()
    finally:
        for s in idle:
            s.close()
    # the connections closed, the server answers again
    for _ in range(100):
        if _get(port, "/healthz")[0] == 200:
            break
    assert _get(port, "/healthz")[0] == 200

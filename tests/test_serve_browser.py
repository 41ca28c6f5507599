"""The web page in a real browser: headless Chromium (Debian's, driven by Playwright) loads the page from a live
`dsh serve` on 127.0.0.1, uploads a real test image and sees its code and the neighbours appear."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's chromium; "
                                                         "apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"dsh serve exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("dsh serve did not become healthy in time")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, digits_run):
    from conftest import write_digit_folder

    from dsh.cli import main

    root = tmp_path_factory.mktemp("browser")
    folder = root / "imgs"
    write_digit_folder(folder, 60, scale=8)
    index = root / "db.dshidx"
    assert main(["index", "--images", str(folder), "--run", str(digits_run), "--out", str(index), "--quiet"]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dsh", "serve", "--index", str(index), "--host", "127.0.0.1",
                             "--port", str(port), "--quiet"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DSH_DEBUG": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, sorted(folder.rglob("*.png")), root
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_page_uploads_an_image_and_shows_neighbours(live_server):
    url, files, root = live_server
    query = files[4]
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("#class-table table")  # the index's class hash table came from /api/info
            assert "8-bit codes" in page.inner_text("#model")
            page.fill("#k", "6")
            page.set_input_files("#file", str(query))
            page.wait_for_selector(".neighbor")
            tiles = page.query_selector_all(".neighbor")
            assert len(tiles) == 6
            code = page.inner_text("#code-hex")
            assert code.startswith("0x") and len(page.inner_text("#code-bits").replace(" ", "")) == 8
            # neighbour images are loaded through the API and really shown
            page.wait_for_function("[...document.querySelectorAll('.neighbor img')].every(i => i.naturalWidth > 0)")
            first = tiles[0].inner_text()
            assert "d = 0" in first  # the query image itself is in the index (or a look-alike with its code)
            # the hex box gives the same answer as the upload
            page.fill("#hex", code[2:])
            page.click("#hex-form button")
            page.wait_for_function(f"document.querySelector('#code-hex').textContent === '{code}'")
            assert not page.is_visible("#error") and not errors
            page.screenshot(path=str(root / "page.png"), full_page=True)
        finally:
            browser.close()
    assert (root / "page.png").stat().st_size > 10_000

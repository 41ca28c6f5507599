"""The docs' picture of the page: a live ``dsh serve`` on 127.0.0.1, a real query uploaded in headless Chromium.

    python benchmarks/tools/serve_screenshot.py --index runs/serve_load/index.dshidx --run RUN \\
        --query ../shared/data/cifar10-jpeg/test/cat/0001.jpg --out benchmarks/results/serve_page.png

Needs Playwright and Debian's chromium (``apt-get install chromium``), as the browser test does.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
from speed.serve_load import free_port, wait_healthy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True)
    p.add_argument("--run", help="model (default: the index's)")
    p.add_argument("--query", required=True, help="image file to upload")
    p.add_argument("--k", type=int, default=24)
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    port = free_port()
    cmd = [sys.executable, "-m", "dsh", "serve", "--index", args.index, "--port", str(port), "--quiet"]
    proc = subprocess.Popen(cmd + (["--run", args.run] if args.run else []), stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(port, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1180, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#class-table table")
            page.fill("#k", str(args.k))
            page.set_input_files("#file", args.query)
            page.wait_for_selector(".neighbor img")
            page.wait_for_function("[...document.querySelectorAll('.neighbor img')].every(i => i.naturalWidth > 0)")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

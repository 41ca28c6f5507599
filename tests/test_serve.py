"""The HTTP service in-process (FastAPI's test client): every endpoint, the token, results equal to `dsh search
--json`, and bad input of every kind answered with a 4xx JSON error while the server stays healthy."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
from conftest import write_digit_folder  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from dsh.cli import main  # noqa: E402
from dsh.runtime.encoder import Encoder  # noqa: E402
from dsh.runtime.searcher import Searcher  # noqa: E402
from dsh.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits_run):
    """An index of 80 digit images (paths in its catalog) made with a short run, and an app over it (with and
    without a token)."""
    root = tmp_path_factory.mktemp("serve")
    shutil.copytree(digits_run, root / "run")
    folder = root / "imgs"
    write_digit_folder(folder, 80)
    index = root / "db.dshidx"
    assert main(["index", "--images", str(folder), "--run", str(root / "run"), "--out", str(index), "--quiet"]) == 0
    settings = ServeSettings(max_upload_bytes=200_000, max_pixels=100_000, max_k=50, max_images=4)
    app = create_app(Searcher.open(index), settings)
    locked = create_app(Searcher.open(index), ServeSettings(token=TOKEN))
    return {"root": root, "folder": folder, "index": index, "client": TestClient(app),
            "locked": TestClient(locked), "files": sorted(folder.rglob("*.png"))}


def is_json_error(r, status: int, served) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["message"]
    assert "Traceback" not in r.text and str(served["root"]) not in r.text  # no traceback, no server path
    return body["error"]


def test_health_info_and_docs(served):
    c = served["client"]
    assert c.get("/healthz").json() == {"status": "ok", "items": 80}
    info = c.get("/api/info").json()
    assert info["model"]["nbits"] == 8 and info["model"]["input_shape"] == [1, 8, 8]
    assert info["index"]["items"] == 80 and info["index"]["has_catalog"]
    classes = {row["name"] for row in info["class_table"]["classes"]}
    assert classes == {p.parent.name for p in served["files"]}
    schema = c.get("/openapi.json").json()
    assert {"/api/search", "/api/encode", "/api/items/{item_id}", "/api/info", "/healthz"} <= set(schema["paths"])
    docs = c.get("/docs").text
    assert "swagger" in docs.lower() and "cdn" not in docs.lower()  # served from the package, works offline
    page = c.get("/")
    assert page.status_code == 200 and "<title>dsh" in page.text
    assert c.get("/static/app.js").status_code == 200


def test_search_equals_the_command_line(served, capsys):
    c, query = served["client"], served["files"][5]
    r = c.post("/api/search?k=7", files={"image": ("q.png", query.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    api = r.json()
    capsys.readouterr()
    assert main(["search", "--index", str(served["index"]), "--image", str(query), "-k", "7", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["queries"][0]
    assert api["query"]["code"] == cli["code"] and api["query"]["bits"] == cli["bits"]
    assert [{k: v for k, v in n.items() if k != "image_url"} for n in api["results"]] == cli["results"]
    assert all(n["image_url"] == f"/api/items/{n['id']}/image" for n in api["results"])
    # by hex, and within a radius: the same as the library
    lib = Searcher.open(served["index"])
    hexed = c.post("/api/search?radius=1", json={"hex": api["query"]["hex"]}).json()
    want = lib.search_hex([api["query"]["hex"]], radius=1)[0]
    assert [(n["id"], n["distance"]) for n in hexed["results"]] == [(n.id, n.distance) for n in want.neighbors]
    assert len(hexed["results"]) >= 1


def test_encode_items_and_images(served):
    c, files = served["client"], served["files"]
    r = c.post("/api/encode?u=true", files=[("image", (f.name, f.read_bytes(), "image/png")) for f in files[:3]])
    assert r.status_code == 200, r.text
    out = r.json()
    ref = Encoder.from_run(served["root"] / "run").encode(files[:3])
    assert [row["hex"] for row in out["codes"]] == [format(int(c), "02X") for c in ref.codes[:, 0]]
    np.testing.assert_allclose([row["u"] for row in out["codes"]], ref.u, atol=1e-5)
    item = c.get("/api/items/3").json()
    assert item["id"] == 3 and item["path"].endswith(".png") and item["image_url"] == "/api/items/3/image"
    img = c.get("/api/items/3/image")
    assert img.status_code == 200 and img.content == open(item["path"], "rb").read()


def test_token(served):
    locked = served["locked"]
    assert locked.get("/healthz").status_code == 200  # health checks need no token
    is_json_error(locked.get("/api/info"), 401, served)
    is_json_error(locked.get("/api/info", headers={"Authorization": "Bearer wrong"}), 401, served)
    is_json_error(locked.get("/api/info", headers={"Authorization": TOKEN}), 401, served)
    assert locked.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A valid 1-bit PNG of width x height (144 megapixels: 432 MB as RGB) that compresses to about 20 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def big_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb():
    return png_bomb()


def bad_requests(served, bomb):
    png = served["files"][0].read_bytes()
    img = lambda data, name="q.png": {"image": (name, data, "image/png")}  # noqa: E731
    return [
        ("empty body", lambda c: c.post("/api/search"), 415),
        ("empty multipart file", lambda c: c.post("/api/search", files=img(b"")), 400),
        ("wrong field name", lambda c: c.post("/api/search", files={"picture": ("q.png", png, "image/png")}), 422),
        ("huge upload", lambda c: c.post("/api/search", files=img(b"\0" * 300_000)), 413),
        ("decompression bomb", lambda c: c.post("/api/search", files=img(bomb)), 413),
        ("giant bomb", lambda c: c.post("/api/search", files=img(png_bomb(30000, 30000))), 413),
        ("too many pixels", lambda c: c.post("/api/search", files=img(big_png(400))), 413),
        ("text as image", lambda c: c.post("/api/search", files=img(b"just some text", "notes.txt")), 415),
        ("truncated png", lambda c: c.post("/api/search", files=img(png[:40])), 415),
        ("wrong hex length", lambda c: c.post("/api/search", json={"hex": "0F0F"}), 422),
        ("not hex", lambda c: c.post("/api/search", json={"hex": "zz"}), 422),
        ("hex not a string", lambda c: c.post("/api/search", json={"hex": 15}), 422),
        ("malformed json", lambda c: c.post("/api/search", content=b"{nope",
                                            headers={"content-type": "application/json"}), 422),
        ("k=0", lambda c: c.post("/api/search?k=0", json={"hex": "0F"}), 422),
        ("k=10^9", lambda c: c.post("/api/search?k=1000000000", json={"hex": "0F"}), 422),
        ("k not a number", lambda c: c.post("/api/search?k=ten", json={"hex": "0F"}), 422),
        ("radius < 0", lambda c: c.post("/api/search?radius=-1", json={"hex": "0F"}), 422),
        ("radius > nbits", lambda c: c.post("/api/search?radius=99", json={"hex": "0F"}), 422),
        ("unknown id", lambda c: c.get("/api/items/12345"), 404),
        ("negative id", lambda c: c.get("/api/items/-1"), 404),
        ("path-like id", lambda c: c.get("/api/items/..%2F..%2Fetc%2Fpasswd"), 404),
        ("path-like id, raw", lambda c: c.get("/api/items/../../etc/passwd"), 404),
        ("image of unknown id", lambda c: c.get("/api/items/999/image"), 404),
        ("encode with no file", lambda c: c.post("/api/encode"), 422),
        ("encode too many images", lambda c: c.post("/api/encode", files=[("image", ("a.png", png))] * 5), 413),
        ("wrong method", lambda c: c.get("/api/search"), 405),
        ("unknown route", lambda c: c.get("/api/nothing"), 404),
        ("no map image", lambda c: c.get("/api/map.png"), 404),
    ]


def test_bad_input_gets_a_json_4xx_and_the_server_stays_healthy(served, bomb):
    c = served["client"]
    cases = bad_requests(served, bomb)
    assert len(cases) >= 15
    for name, call, status in cases:
        err = is_json_error(call(c), status, served)
        assert "\n" not in err["message"], name
    assert c.get("/healthz").status_code == 200
    ok = c.post("/api/search?k=3", files={"image": ("q.png", served["files"][0].read_bytes(), "image/png")})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3


def test_a_torch_free_server(served, tmp_path):
    """With an ONNX model the whole service runs where torch cannot even be imported."""
    import subprocess
    import sys

    from dsh.runtime.export import export_model

    export_model(served["root"] / "run", tmp_path / "m.onnx")
    query = served["files"][2]
    script = f"""
import sys
sys.modules["torch"] = None
sys.modules["torchvision"] = None
from fastapi.testclient import TestClient
from dsh.runtime.searcher import Searcher
from dsh.serve import create_app
app = create_app(Searcher.open({str(served["index"])!r}, model={str(tmp_path / "m.onnx")!r}))
r = TestClient(app).post("/api/search?k=4", files={{"image": ("q.png", open({str(query)!r}, "rb").read())}})
assert r.status_code == 200, r.text
print(r.json()["query"]["hex"], [n["id"] for n in r.json()["results"]])
"""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    ref = served["client"].post("/api/search?k=4", files={"image": ("q.png", query.read_bytes(), "image/png")}).json()
    assert out.stdout.split()[0] == ref["query"]["hex"]
    assert out.stdout.strip().split(" ", 1)[1] == str([n["id"] for n in ref["results"]])

"""A writable service in-process: POST /api/items adds uploaded images (kept in the data folder, shown by
/api/items/{id}/image, found by their own picture at distance 0), DELETE /api/items/{id} removes one; a read-only
service answers 403; bad input is a 4xx JSON error that changes nothing."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
from conftest import write_digit_folder  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from dsh.cli import main  # noqa: E402
from dsh.index.live import LiveIndex, log_path  # noqa: E402
from dsh.runtime.searcher import Searcher  # noqa: E402
from dsh.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "t0ken"


@pytest.fixture
def service(tmp_path, digits_run):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    files = write_digit_folder(tmp_path / "imgs", 60, scale=2)
    first = tmp_path / "first"
    for f in files[:40]:
        (first / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, first / f.parent.name / f.name)
    index = tmp_path / "db.dshidx"
    assert main(["index", "--images", str(first), "--run", str(run), "--out", str(index), "--quiet"]) == 0
    live = LiveIndex.open(index)
    data = tmp_path / "data"
    app = create_app(Searcher.open(live), ServeSettings(writable=True, data_dir=str(data), max_images=4))
    yield {"client": TestClient(app), "live": live, "new": files[40:], "index": index, "data": data,
           "tmp": tmp_path}
    live.close(fold=False)


def upload(paths, **fields):
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
    return {"files": files, "data": fields}


def json_error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status
    assert "Traceback" not in r.text
    return body["error"]["message"]


def test_add_find_show_remove(service):
    c, live, new = service["client"], service["live"], service["new"]
    names = live.catalog.class_names
    r = c.post("/api/items", **upload(new[:3], label=["2", "", ""], **{"class": ["", names[5], ""]},
                                      key=["a", "b", ""]))
    assert r.status_code == 201, r.text
    items = r.json()["items"]
    assert [it["id"] for it in items] == [40, 41, 42]
    assert [it["label"] for it in items] == [2, 5, -1] and items[1]["class"] == names[5]
    assert [it["key"] for it in items] == ["a", "b", ""]
    assert c.get("/healthz").json()["items"] == 43 and c.get("/api/info").json()["index"]["items"] == 43
    for it, path in zip(items, new[:3]):
        assert c.get(it["image_url"]).content == path.read_bytes()  # kept in the data folder, shown from there
        hits = c.post("/api/search?radius=0", files={"image": ("q.png", path.read_bytes(), "image/png")}).json()
        assert it["id"] in [h["id"] for h in hits["results"]]  # found by its own picture at distance 0
        assert all(h["distance"] == 0 for h in hits["results"])
    assert sorted(p.name for p in service["data"].iterdir()) == ["40.png", "41.png", "42.png"]

    assert c.delete("/api/items/41").json() == {"removed": 41}
    assert "no item 41" in json_error(c.delete("/api/items/41"), 404)
    json_error(c.get("/api/items/41"), 404)
    json_error(c.get("/api/items/41/image"), 404)
    assert not (service["data"] / "41.png").exists()
    assert c.delete("/api/items/0").status_code == 200  # an item of the file, kept elsewhere: its image stays
    assert live.ntotal == 41 and sorted(set(live.ids) & {0, 40, 41, 42}) == [40, 42]
    # the ids go on after the largest ever given
    assert c.post("/api/items", **upload(new[3:4])).json()["items"][0]["id"] == 43


def test_bad_input_changes_nothing(service):
    c, live = service["client"], service["live"]
    before = (live.ntotal, log_path(service["index"]).stat().st_size)
    png = service["new"][:1]
    not_image = {"files": [("image", ("x.png", b"this is not an image", "image/png"))]}
    assert "x.png" in json_error(c.post("/api/items", **not_image), 415)
    assert "label[0] must be an integer" in json_error(c.post("/api/items", **upload(png, label=["abc"])), 422)
    assert "between -1 and 9" in json_error(c.post("/api/items", **upload(png, label=["12"])), 422)
    assert "not one of the index's classes" in json_error(c.post("/api/items", **upload(png, **{"class": ["x"]})),
                                                          422)
    assert "disagree" in json_error(c.post("/api/items", **upload(png, label=["1"], **{"class": ["2"]})), 422)
    assert "one per image" in json_error(c.post("/api/items", **upload(png, key=["a", "b"])), 422)
    assert "'image'" in json_error(c.post("/api/items", data={"label": "1"}, files={"x": ("a", b"1")}), 422)
    json_error(c.post("/api/items", json={"image": "x"}), 415)
    json_error(c.post("/api/items", **upload(service["new"][:5])), 413)
    json_error(c.delete("/api/items/123456"), 404)
    json_error(c.delete("/api/items/-1"), 404)
    json_error(c.delete("/api/items/abc"), 422)
    assert (live.ntotal, log_path(service["index"]).stat().st_size) == before
    assert not service["data"].exists() or not any(service["data"].iterdir())


def test_read_only_and_token(service, tmp_path):
    live, png = service["live"], service["new"][:1]
    ro = TestClient(create_app(Searcher.open(live.snapshot()), ServeSettings()))
    assert "read-only" in json_error(ro.post("/api/items", **upload(png)), 403)
    json_error(ro.delete("/api/items/3"), 403)
    assert ro.get("/api/info").json()["writable"] is False
    locked = TestClient(create_app(Searcher.open(live), ServeSettings(token=TOKEN, writable=True,
                                                                 data_dir=str(tmp_path / "d2"))))
    json_error(locked.post("/api/items", **upload(png)), 401)
    json_error(locked.delete("/api/items/3"), 401)
    r = locked.post("/api/items", headers={"Authorization": f"Bearer {TOKEN}"}, **upload(png))
    assert r.status_code == 201 and live.ntotal == 41


def test_a_jpeg_upload_is_kept_as_jpeg(service):
    c = service["client"]
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 200, np.uint8), "L").save(buf, "JPEG")
    r = c.post("/api/items", files={"image": ("photo.jpeg", buf.getvalue(), "image/jpeg")})
    item = r.json()["items"][0]
    got = c.get(item["image_url"])
    assert got.headers["content-type"] == "image/jpeg" and got.content == buf.getvalue()
    assert (service["data"] / f"{item['id']}.jpg").is_file()


def test_a_read_only_service_follows_dsh_index_add(service):
    service["live"].close(fold=False)  # the writer is another process's now: dsh index add
    index, tmp, new = service["index"], service["tmp"], service["new"]
    reader = LiveIndex.open(index, writable=False)
    reader.follow_seconds = 0.0  # look for changes at every request
    c = TestClient(create_app(Searcher.open(reader), ServeSettings()))
    assert c.get("/healthz").json()["items"] == 40
    more = tmp / "more"
    for f in new[:3]:
        (more / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, more / f.parent.name / f.name)
    assert main(["index", "add", "--index", str(index), "--images", str(more), "--quiet"]) == 0
    assert c.get("/healthz").json()["items"] == 43  # logged by the writer, taken in by the reader

    def found(path) -> list[int]:
        hits = c.post("/api/search?radius=0", files={"image": ("q.png", path.read_bytes(), "image/png")}).json()
        return [h["id"] for h in hits["results"]]

    assert all(set(found(f)) & {40, 41, 42} for f in new[:3])
    assert main(["index", "remove", "--index", str(index), "--ids", "41", "--fold", "--quiet"]) == 0
    assert c.get("/healthz").json()["items"] == 42  # folded into a new file: the reader reads it
    assert c.get("/api/items/41").status_code == 404 and c.get("/api/items/42").status_code == 200
    reader.close()


@pytest.mark.parametrize("flags, message", [
    (["--writable", "--fold-after", "0"], "--fold-after must be a positive number"),
    (["--fold-after", "5"], "--fold-after is for --writable over an index file"),
])
def test_a_bad_fold_after_is_one_line(service, capsys, flags, message):
    service["live"].close(fold=False)
    code = main(["serve", "--index", str(service["index"]), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1]

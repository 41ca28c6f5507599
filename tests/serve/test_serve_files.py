"""The service sends an item's picture only from an image file under an allowed root: a shared index whose catalog
names the server's other files (``/etc/passwd``, a symlink out of the root, a text file named ``.png``) gets 404s."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from dsh.cli import main  # noqa: E402
from dsh.index import HammingIndex  # noqa: E402
from dsh.runtime.searcher import Searcher  # noqa: E402
from dsh.serve import ServeSettings, create_app  # noqa: E402
from dsh.serve.image_files import ImageFiles  # noqa: E402


def png(path, value: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path.read_bytes()


@pytest.fixture
def shared(tmp_path):
    """An index built with the library's API whose catalog names, item by item: the server's /etc/passwd, an
    image outside the index's folder, a symlink inside it that leads outside, a text file named .png, a real image
    inside, a missing file, a path that climbs out with '..', and a symlink inside that leads to /etc/passwd."""
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    inside_bytes = png(root / "a" / "in.png", 10)
    outside_bytes = png(outside / "out.png", 200)
    (root / "link.png").symlink_to(outside / "out.png")
    (root / "notes.png").write_text("not an image, whatever its name says")
    (root / "passwd.png").symlink_to("/etc/passwd")
    paths = ["/etc/passwd", str(outside / "out.png"), str(root / "link.png"), str(root / "notes.png"),
             str(root / "a" / "in.png"), str(root / "gone.png"), str(root / ".." / "elsewhere" / "out.png"),
             str(root / "passwd.png")]
    index = HammingIndex(8)
    index.add(np.arange(len(paths), dtype=np.uint8)[:, None], paths=paths)
    return {"index": index, "root": root, "outside": outside, "inside": inside_bytes, "outside_bytes": outside_bytes,
            "tmp": tmp_path}


def client(shared, digits_run, recorded_root: bool, image_roots=()) -> TestClient:
    index = shared["index"]
    index.metadata.pop("image_root", None)
    if recorded_root:
        index.metadata["image_root"] = str(shared["root"])
    path = shared["tmp"] / "shared.dshidx"
    index.save(path)
    app = create_app(Searcher.open(path, model=str(digits_run), force=True),
                     ServeSettings(image_roots=tuple(map(str, image_roots))))
    return TestClient(app)


def served(c: TestClient, n: int = 8) -> dict[int, bytes]:
    out = {}
    for i in range(n):
        r = c.get(f"/api/items/{i}/image")
        assert r.status_code in (200, 404), r.text
        if r.status_code == 200:
            assert r.headers["content-type"] == "image/png"
            out[i] = r.content
        else:
            assert r.json()["error"]["message"] == f"item {i} has no image file"
    return out


def test_nothing_is_served_without_an_image_root(shared, digits_run):
    assert served(client(shared, digits_run, recorded_root=False)) == {}


def test_only_images_under_the_recorded_root(shared, digits_run):
    c = client(shared, digits_run, recorded_root=True)
    assert c.app.state.image_roots == [shared["root"].resolve()]
    assert served(c) == {4: shared["inside"]}
    assert "root:" not in c.get("/api/items/0/image").text


def test_an_operator_root_adds_its_images_and_nothing_else(shared, digits_run):
    c = client(shared, digits_run, recorded_root=True, image_roots=[shared["outside"]])
    # the outside image by its own path, through the symlink and through '..': all resolve under an allowed root
    assert served(c) == {1: shared["outside_bytes"], 2: shared["outside_bytes"], 4: shared["inside"],
                         6: shared["outside_bytes"]}


def test_image_files_against_a_plain_check(tmp_path):
    """ImageFiles.find agrees with a slow obvious rule: realpath under a root, a regular file, PIL names a format."""
    root = tmp_path / "r"
    png(root / "x.png", 1)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "y.jpg")
    (root / "z.txt").write_text("hello")
    (root / "loop").symlink_to(root / "loop")
    os.mkdir(root / "dir.png")
    candidates = [root / n for n in ("x.png", "y.jpg", "z.txt", "loop", "dir.png", "missing.png")] + [None, ""]
    files = ImageFiles([root, tmp_path / "no-such-folder"])
    assert files.roots == [root.resolve()]
    for c in candidates:
        real = os.path.realpath(c) if c else None
        expected = bool(real and real.startswith(str(root.resolve()) + os.sep) and os.path.isfile(real)
                        and open(real, "rb").read(4) in (b"\x89PNG", b"\xff\xd8\xff\xe0"))
        assert (files.find(c) is not None) == expected, c
    assert files.find(root / "y.jpg")[1] == "image/jpeg"


def test_a_missing_image_root_flag_is_one_line(shared, digits_run, capsys):
    path = shared["tmp"] / "shared.dshidx"
    shared["index"].save(path)
    code = main(["serve", "--index", str(path), "--run", str(digits_run), "--force",
                 "--image-root", str(shared["tmp"] / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("no such folder") and "--image-root" in err[-1]

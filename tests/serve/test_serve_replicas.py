"""Two writable `dsh serve` processes over one Milvus collection on a real Milvus server (the ``milvus_server_uri``
fixture), sharing one data folder for uploaded images, as replicas behind a load balancer would: an item added
through one is found through the other at once (by its own picture at distance 0, its record and its image), and
removed through the other it is gone from the first; with both taking adds and removes at once, either can be
killed with SIGKILL at a random moment and started again without losing an acknowledged change or keeping any
other (the one change in flight at the kill either whole or not at all).

Skipped, saying why, where no Milvus server starts. About two minutes on 2 cores (mostly starting services)."""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed (the dev extra)")
pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
pytest.importorskip("pymilvus", reason="the milvus extra is not installed: pip install 'dsh[milvus]'")
from conftest import write_digit_folder  # noqa: E402
from serve_process import ServeProcess  # noqa: E402
from test_serve_live_crash import stream  # noqa: E402  (a client's stream of adds and removes of its own items)

from dsh.cli import main  # noqa: E402
from dsh.index import open_index  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


class Replica(ServeProcess):
    """``dsh serve --writable --store milvus`` over ``collection`` in a child process on a free port."""

    def __init__(self, uri: str, collection: str, data):
        super().__init__(["--store", "milvus", "--uri", uri, "--collection", collection, "--writable",
                          "--data-dir", str(data)])


@pytest.fixture
def served(tmp_path, digits_run, milvus_server_uri, request):
    """20 digit images indexed into a new collection with a copy of the digits run; the shared data folder; 60
    more images to upload. Yields ``(uri, collection, data folder, pictures)``."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    write_digit_folder(tmp_path / "first", 20)
    pool = write_digit_folder(tmp_path / "pool", 60)
    name = "r_" + request.node.name[:50]
    assert main(["index", "--images", str(tmp_path / "first"), "--run", str(run), "--store", "milvus", "--uri",
                 milvus_server_uri, "--collection", name, "--overwrite", "--quiet"]) == 0
    yield milvus_server_uri, name, tmp_path / "data", pool
    with open_index(milvus_server_uri, collection=name) as index:
        index.drop()


def state_of(uri: str, collection: str) -> dict[int, str]:
    """id -> key of every item the collection holds now."""
    with open_index(uri, collection=collection) as index:
        return {r["id"]: r.get("key", "") for r in index.lookup(index.ids)}


def upload(client, picture, key: str) -> int:
    """Add ``picture`` with ``key`` through a replica; its id."""
    r = client.post("/api/items", files={"image": (picture.name, picture.read_bytes(), "image/png")},
                    data={"key": key})
    assert r.status_code == 201, r.text
    return r.json()["items"][0]["id"]


def test_an_item_added_through_one_replica_is_found_through_the_other_at_once(served):
    uri, name, data, pool = served
    replicas = [Replica(uri, name, data), Replica(uri, name, data)]
    try:
        clients = [httpx.Client(base_url=r.url, timeout=30) for r in replicas]
        for n, picture in enumerate(pool[:6]):
            one, other = clients[n % 2], clients[1 - n % 2]
            new = upload(one, picture, f"k{n}")
            # at once, through the other: found by its own picture at distance 0, with its record and image
            hits = other.post("/api/search?radius=0", files={"image": ("q.png", picture.read_bytes(),
                                                                       "image/png")}).json()["results"]
            assert {"id": new, "distance": 0} in [{"id": h["id"], "distance": h["distance"]} for h in hits]
            assert other.get(f"/api/items/{new}").json()["key"] == f"k{n}"
            assert other.get(f"/api/items/{new}/image").content == picture.read_bytes()
        assert [c.get("/healthz").json()["items"] for c in clients] == [26, 26]
        # removed through the other: gone from the first at once
        assert clients[1].delete(f"/api/items/{new}").status_code == 200
        assert clients[0].get(f"/api/items/{new}").status_code == 404
        hits = clients[0].post("/api/search?radius=0", files={"image": ("q.png", pool[5].read_bytes(),
                                                                         "image/png")}).json()["results"]
        assert new not in [h["id"] for h in hits]
        assert [c.get("/healthz").json()["items"] for c in clients] == [25, 25]
        for c in clients:
            c.close()
    finally:
        for r in replicas:
            r.kill()


def test_either_replica_killed_and_restarted_loses_nothing(served):
    """Both replicas take a stream of adds and removes at once; one of them (A, then B) is killed at a
    random moment and started again. After each round the collection holds exactly what the clients were told,
    give or take the one change in flight at the kill."""
    uri, name, data, pool = served
    rng = random.Random(11)
    base = state_of(uri, name)  # the indexed items, which the streams leave alone
    owned = {"A": {}, "B": {}}  # id -> key of the items each stream added and was told of, less those it removed
    made = {"A": [], "B": []}  # the keys of every add each stream sent
    replicas = {p: Replica(uri, name, data) for p in owned}
    try:
        for victim in ("A", "B"):
            stop = threading.Event()
            in_flight = {p: [] for p in replicas}
            streams = [threading.Thread(target=stream, args=(r.url, stop, in_flight[p], owned[p], pool,
                                                             random.Random(rng.random()), made[p]))
                       for p, r in replicas.items()]
            for t in streams:
                t.start()
            time.sleep(rng.uniform(1.0, 3.0))
            replicas[victim].kill()  # at a random moment of its stream; the other goes on
            time.sleep(0.3)
            stop.set()
            for t in streams:
                t.join(timeout=60)
            got = state_of(uri, name)
            doubt = in_flight[victim]
            known = {**base, **owned["A"], **owned["B"]}
            if doubt and doubt[0][0] == "add":
                extra = {i: k for i, k in got.items() if i not in known}
                assert set(extra.values()) <= {doubt[0][1]} and len(extra) <= 1
                owned[victim].update(extra)
            elif doubt and doubt[0][1] not in got:
                owned[victim].pop(doubt[0][1], None)
            expected = {**base, **owned["A"], **owned["B"]}
            assert len(expected) == len(base) + len(owned["A"]) + len(owned["B"])  # no id given twice
            assert got == expected, victim
            replicas[victim] = Replica(uri, name, data)  # started again: it serves what the collection holds
            assert httpx.get(replicas[victim].url + "/healthz").json()["items"] == len(expected)
        assert not [k for p in made for k in made[p] if k.startswith("failed")]
        assert len(made["A"]) >= 4 and len(made["B"]) >= 4  # both streams ran, across the kills
        kept = [*owned["A"], *owned["B"]]
        assert kept and all((data / f"{i}.png").is_file() for i in kept)  # every kept upload's image is there
    finally:
        for r in replicas.values():
            r.kill()

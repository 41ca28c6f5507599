"""A writable `dsh serve` killed with SIGKILL in the middle of a stream of adds and removes, at random moments,
several times: after each restart every acknowledged change is there and nothing else (against the set of items
the client keeps). And a disk that refuses the log's growth (RLIMIT_FSIZE): a 507 JSON answer, the index as it
was."""

from __future__ import annotations

import random
import resource
import shutil
import signal
import threading
import time

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed (the dev extra)")
pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dsh[serve]')")
from conftest import write_digit_folder  # noqa: E402
from serve_process import ServeProcess  # noqa: E402

from dsh.cli import main  # noqa: E402
from dsh.index.flat import HammingIndex  # noqa: E402
from dsh.index.live import LiveIndex, has_changes_logged, log_path  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


class Server(ServeProcess):
    """``dsh serve --writable`` over an index file in a child process on a free port of 127.0.0.1."""

    def __init__(self, index, data, file_limit: int | None = None, fold_after: int | None = None):
        def limit():  # the child's largest file: a disk that takes no more
            if file_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

        folds = [] if fold_after is None else ["--fold-after", str(fold_after)]
        super().__init__(["--index", str(index), "--writable", "--data-dir", str(data), *folds], preexec_fn=limit,
                         timeout=90)


@pytest.fixture
def setup(tmp_path, digits_run):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    write_digit_folder(tmp_path / "first", 20)
    pool = write_digit_folder(tmp_path / "pool", 80)
    index = tmp_path / "db.dshidx"
    assert main(["index", "--images", str(tmp_path / "first"), "--run", str(run), "--out", str(index),
                 "--quiet"]) == 0
    return index, tmp_path / "data", pool


def state_of(index) -> dict[int, str]:
    """id -> key of every item the files hold now (read-only: the log replayed as a restart would)."""
    with LiveIndex.open(index, writable=False) as live:
        return {r["id"]: r.get("key", "") for r in live.lookup(live.ids)}


def stream(url, stop, in_flight, expected, pool, rng, made) -> None:
    """Adds (each with a new key) and removes, one at a time, until ``stop`` or the server is gone; ``expected``
    (id -> key) follows every answer, ``in_flight`` holds the change sent and not yet answered."""
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            added = [i for i, k in expected.items() if k.startswith("op-")]
            try:
                if added and rng.random() < 0.35:
                    victim = rng.choice(added)
                    in_flight[:] = [("remove", victim)]
                    r = c.delete(f"/api/items/{victim}")
                    if r.status_code != 200:
                        made.append(f"failed: {r.text}")
                        return
                    del expected[victim]
                else:
                    key, pic = f"op-{len(made) + 1}", rng.choice(pool)
                    made.append(key)
                    in_flight[:] = [("add", key)]
                    r = c.post("/api/items", files={"image": (pic.name, pic.read_bytes(), "image/png")},
                               data={"key": key})
                    if r.status_code != 201:
                        made.append(f"failed: {r.text}")
                        return
                    expected[r.json()["items"][0]["id"]] = key
            except httpx.HTTPError:
                return  # killed: this change is in doubt
            in_flight.clear()


def test_every_acknowledged_change_survives_kill_9(setup):
    index, data, pool = setup
    rng = random.Random(7)
    expected = state_of(index)  # id -> key: what the client was told
    made: list[str] = []  # the keys of every add sent
    for round_ in range(3):
        server = Server(index, data, fold_after=3)  # folds in the background all along: kills land in them too
        in_flight: list[tuple] = []
        stop = threading.Event()

        client = threading.Thread(target=stream, args=(server.url, stop, in_flight, expected, pool, rng, made))
        client.start()
        # a few changes first, so that folds (every 3 added items) run whatever the machine's speed; then a
        # random moment
        first, deadline = len(made), time.monotonic() + 60
        while len(made) < first + 6 and client.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        server.kill()  # at a random moment of the stream
        stop.set()
        client.join(timeout=60)
        got = state_of(index)
        # the one change that was sent but not answered may or may not have happened; nothing else may differ
        if in_flight and in_flight[0][0] == "add":
            extra = {i: k for i, k in got.items() if i not in expected}
            assert set(extra.values()) <= {in_flight[0][1]} and len(extra) <= 1
            expected.update(extra)
        elif in_flight:
            if in_flight[0][1] not in got:
                expected.pop(in_flight[0][1], None)
        assert got == expected, f"round {round_}"
        assert sum(k.startswith("op-") for k in expected.values()) > 0 or round_ == 0
        for i, k in expected.items():  # every kept upload's image is there
            if k.startswith("op-"):
                assert (data / f"{i}.png").is_file()
    assert not [k for k in made if k.startswith("failed")]
    assert len(made) >= 8  # the stream did run: adds were acknowledged across the kills
    assert HammingIndex.load(index).metadata.get("log_seq", 0) > 0  # and folds ran between them
    # a clean restart and stop: the log is folded into the index file, which alone then holds the same
    server = Server(index, data)
    with httpx.Client(base_url=server.url) as c:
        some = next(i for i, k in expected.items() if k.startswith("op-"))
        picture = (data / f"{some}.png").read_bytes()
        hits = c.post("/api/search?radius=0", files={"image": ("q.png", picture, "image/png")}).json()["results"]
        assert some in [h["id"] for h in hits]
        assert c.get(f"/api/items/{some}/image").content == picture
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=60) == 0
    server.proc.stderr.close()
    assert not has_changes_logged(index)  # folded: an empty log
    assert state_of(index) == expected


def test_a_full_disk_during_an_add_is_a_507_and_changes_nothing(setup):
    index, data, pool = setup
    more = index.parent / "more"
    write_digit_folder(more, 30)
    assert main(["index", "add", "--index", str(index), "--images", str(more), "--quiet"]) == 0
    before = state_of(index)
    size = log_path(index).stat().st_size  # the log may not grow; an uploaded image (a few hundred bytes) fits
    server = Server(index, data, file_limit=size)
    try:
        r = httpx.post(server.url + "/api/items", files={"image": ("a.png", pool[0].read_bytes(), "image/png")},
                       timeout=30)
        assert r.status_code == 507, r.text
        message = r.json()["error"]["message"]
        assert "cannot write the change" in message and "nothing was changed" in message and "\n" not in message
        assert str(index.parent) not in r.text
        assert httpx.get(server.url + "/healthz").json()["items"] == len(before)
        assert not data.exists() or not any(data.iterdir())  # the kept image was taken back
    finally:
        server.kill()
    assert log_path(index).stat().st_size == size
    assert state_of(index) == before


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_folds_the_log_into_the_index_file(setup, stop):
    """What a service manager sends (SIGTERM) stops the service as cleanly as Ctrl-C (SIGINT): the changes it
    acknowledged are folded into the index file and the log left empty."""
    index, data, pool = setup
    before = state_of(index)
    server = Server(index, data)
    try:
        r = httpx.post(server.url + "/api/items", files={"image": ("a.png", pool[0].read_bytes(), "image/png")},
                       timeout=30)
        assert r.status_code == 201, r.text
        new = r.json()["items"][0]["id"]
        assert has_changes_logged(index)  # logged, not yet folded
        server.proc.send_signal(stop)
        assert server.proc.wait(timeout=60) == 0
    finally:
        if server.proc.poll() is None:
            server.kill()
        server.proc.stderr.close()
    assert not has_changes_logged(index)  # folded: an empty log
    assert set(state_of(index)) == set(before) | {new}

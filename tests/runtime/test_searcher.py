"""Searcher (encoder + index + catalog) and the commands on top of it: results equal a brute-force ranking with the
right catalog record for every id, an index remembers its model, and mismatched files are refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import train_digits_run, write_digit_folder

from dsh.cli import main
from dsh.codes.hamming import pairwise_hamming
from dsh.errors import InputError
from dsh.index.flat import HammingIndex
from dsh.runtime.encoder import Encoder
from dsh.runtime.searcher import Searcher, index_codes, index_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_run):
    root = tmp_path_factory.mktemp("search")
    folder = root / "imgs"
    write_digit_folder(folder, 60)
    return root, digits_run, folder


def brute_force(q_codes, db_codes, db_ids, k):
    """Ranking by (distance, id) with a stable sort over the database in id order."""
    d = pairwise_hamming(q_codes, db_codes)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), db_ids[order]


def test_searcher_matches_brute_force_with_catalog_records(setup):
    root, run, folder = setup
    enc = Encoder.from_run(run)
    index = index_folder(enc, folder)
    files = sorted(p for p in folder.rglob("*.png"))
    assert index.ntotal == len(files) == 60
    codes = enc.encode(files).codes
    expected_records = {i: (int(p.parent.name), str(p.resolve())) for i, p in enumerate(files)}

    # remove some items, add them back under new ids: the records move with their ids, never by position
    index.remove([3, 10, 11])
    index.add(codes[[3, 10]], ids=np.array([105, 100]), labels=np.array([3, 9]), paths=["x/a.png", "x/b.png"])
    expected_records = {i: r for i, r in expected_records.items() if i not in (3, 10, 11)}
    expected_records.update({100: (9, "x/b.png"), 105: (3, "x/a.png")})
    searcher = Searcher(index, enc, name="memory")
    results = searcher.search(files[:5], k=7)
    D, I = brute_force(codes[:5], index.codes, index.ids, 7)
    for j, r in enumerate(results):
        assert [n.id for n in r.neighbors] == I[j].tolist()
        assert [n.distance for n in r.neighbors] == D[j].tolist()
        for n in r.neighbors:
            assert (n.label, n.path) == expected_records[n.id]
            assert n.class_name == str(n.label)
    # range search: everything within the radius, by (distance, id)
    radius = int(D[:, -1].max())
    full_d = pairwise_hamming(codes[:5], index.codes)
    for j, r in enumerate(searcher.search(files[:5], radius=radius)):
        within = np.flatnonzero(full_d[j] <= radius)
        want = sorted(zip(full_d[j][within].tolist(), index.ids[within].tolist()))
        assert [(n.distance, n.id) for n in r.neighbors] == want
    # k beyond the index is clamped before anything is allocated
    assert len(searcher.search_codes(codes[:1], k=10**12)[0].neighbors) == index.ntotal
    with pytest.raises(InputError):
        searcher.search_codes(codes[:1], k=0)


def test_cli_index_search_and_library_agree(setup, capsys, tmp_path):
    root, run, folder = setup
    idx = tmp_path / "imgs.dshidx"
    assert main(["index", "--images", str(folder), "--run", str(run), "--out", str(idx), "--quiet"]) == 0
    assert len(list(tmp_path.glob("imgs.dshidx.*.catalog"))) == 1
    query = next(folder.rglob("*.png"))
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--image", str(query), "-k", "5", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["queries"][0]
    lib = Searcher.open(idx).search([query], k=5)[0]
    assert cli["code"] == f"0x{lib.hex}" and cli["results"] == [n.to_dict() for n in lib.neighbors]
    # the query image is in the index: it is found at distance 0 (among look-alikes with the same code)
    assert str(query.resolve()) in [n.path for n in Searcher.open(idx).search([query], radius=0)[0].neighbors]

    # a different model is refused (its codes mean something else) unless forced
    other = train_digits_run(tmp_path / "other", epochs=2, seed=1)
    assert main(["search", "--index", str(idx), "--image", str(query), "--run", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not the model that made the codes" in err and len(err.splitlines()) == 1
    assert main(["search", "--index", str(idx), "--image", str(query), "--run", str(other), "--force"]) == 0

    # an index with the catalog of another index: one line naming both
    idx2 = tmp_path / "second.dshidx"
    assert main(["index", "--images", str(folder), "--run", str(run), "--out", str(idx2), "--quiet"]) == 0
    [own], [other] = tmp_path.glob("imgs.dshidx.*.catalog"), tmp_path.glob("second.dshidx.*.catalog")
    shutil.copy(other, own)
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--hex", "0F"]) == 2
    err = capsys.readouterr().err.strip()
    assert "do not belong together" in err and "imgs.dshidx" in err and len(err.splitlines()) == 1


def test_export_command_and_search_with_the_exported_model(setup, capsys, tmp_path):
    root, run, folder = setup
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run), "--out", str(onnx_path)]) == 0
    assert "fingerprint" in capsys.readouterr().out
    idx = tmp_path / "db.dshidx"
    # an index built with the torch model is searched with its ONNX export: same fingerprint, same codes
    assert main(["index", "--images", str(folder), "--run", str(run), "--backend", "torch", "--out", str(idx),
                 "--quiet"]) == 0
    query = sorted(folder.rglob("*.png"))[7]
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--image", str(query), "--model", str(onnx_path), "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["search", "--index", str(idx), "--image", str(query), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == a
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.bin")]) == 2
    assert "suffix" in capsys.readouterr().err


def test_an_index_of_a_code_file_holds_its_catalog_and_its_model(setup, tmp_path):
    from dsh.codes.codefile import CodeFile
    from dsh.runtime.encoder import Encoder

    _, run, _ = setup
    encoder = Encoder.from_run(run)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (20, 1), dtype=np.uint8)
    cf = CodeFile(codes, 8, labels=rng.integers(0, 3, 20), paths=np.array([f"/x/{i}.png" for i in range(20)]),
                  class_names=np.array(["a", "b", "c"]))
    index = index_codes(cf, tmp_path / "db.npz", encoder)
    assert np.array_equal(np.asarray(index.codes), codes) and index.ntotal == 20
    assert index.lookup([3]) == [{"id": 3, "label": int(cf.labels[3]), "class": "abc"[cf.labels[3]],
                                  "path": "/x/3.png"}]
    assert index.metadata["model"]["fingerprint"] == encoder.fingerprint
    assert index.metadata["source"] == str((tmp_path / "db.npz").resolve())
    assert "model" not in index_codes(cf, tmp_path / "db.npz").metadata  # no encoder: no model recorded
    with pytest.raises(InputError, match=r"makes 8-bit codes but .*db16.npz holds 16-bit codes"):
        index_codes(CodeFile(np.zeros((2, 2), np.uint8), 16), tmp_path / "db16.npz", encoder)


@pytest.mark.parametrize("argv, needle", [
    (["encode", "--model", "{tmp}/garbage.onnx", "--images", "{tmp}", "--out", "{tmp}/x.npz"], "garbage.onnx"),
    (["encode", "--model", "{tmp}/plain.txt", "--images", "{tmp}", "--out", "{tmp}/x.npz"], "plain.txt"),
    (["encode", "--run", "{run}", "--images", "{tmp}/bad-images", "--out", "{tmp}/x.npz"], "broken.png"),
    (["encode", "--run", "{run}", "--split", "test", "--out", "{tmp}/x.npz", "--batch-size", "0"], "batch_size"),
    (["encode", "--run", "{run}", "--split", "test", "--out", "{tmp}/x.npz", "--resume"], "--resume"),
    (["search", "--index", "{tmp}/idx.dshidx", "--image", "{tmp}/bad-images/broken.png", "--run", "{run}"],
     "broken.png"),
    (["search", "--index", "{tmp}/idx.dshidx", "--hex", "ZZ"], "ZZ"),
    (["export", "--run", "{tmp}/nothing", "--out", "{tmp}/m.onnx"], "nothing"),
])
def test_bad_input_gives_one_line(setup, argv, needle, tmp_path, capsys):
    root, run, folder = setup
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01not onnx" * 10)
    (tmp_path / "plain.txt").write_text("hello")
    (tmp_path / "bad-images").mkdir()
    (tmp_path / "bad-images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    index = HammingIndex(8)
    index.add(np.arange(8, dtype=np.uint8)[:, None])
    index.save(tmp_path / "idx.dshidx")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsh: error:") and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.npz").exists()

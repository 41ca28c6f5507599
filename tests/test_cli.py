"""The command line end to end on the embedded digits: train a few steps, encode, eval, report, viz, index, search;
and each kind of bad input gives one line on stderr and a non-zero exit, no traceback."""

import json

import numpy as np
import pytest
import torch

from dsh.cli import main
from dsh.codes.codefile import load_codes
from dsh.codes.hamming import pairwise_hamming


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny digits run (2 short epochs), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["train", "--dataset", "digits", "--bits", "8", "--epochs", "2", "--batch-size", "64",
               "--out", str(out), "--quiet", "--projector-samples", "50"])
    assert rc == 0
    return out


def test_train_writes_a_complete_run(run_dir):
    for name in ("best.pt", "last.pt", "config.json", "history.json"):
        assert (run_dir / name).is_file(), name
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["nbits"] == 8 and cfg["dataset"] == "digits" and cfg["epochs"] == 2
    assert list((run_dir / "tb").glob("events.out.tfevents.*")), "TensorBoard events"
    assert any((run_dir / "tb").rglob("projector_config.pbtxt")), "embedding projector"
    assert len(json.loads((run_dir / "history.json").read_text())) == 2


def test_encode_eval_report(run_dir, tmp_path, capsys):
    q, db = tmp_path / "q.npz", tmp_path / "db.npz"
    assert main(["encode", "--run", str(run_dir), "--split", "test", "--out", str(q), "--keep-u", "--quiet"]) == 0
    assert main(["encode", "--run", str(run_dir), "--split", "train", "--out", str(db), "--quiet"]) == 0
    qc, dbc = load_codes(q), load_codes(db)
    assert qc.nbits == 8 and qc.codes.shape == (len(qc.labels), 1) and qc.u.shape == (len(qc.labels), 8)
    assert dbc.u is None and len(dbc) > len(qc)
    # the stored codes are the signs of the stored u
    np.testing.assert_array_equal(np.unpackbits(qc.codes, axis=1, bitorder="little").astype(bool), qc.u >= 0)
    capsys.readouterr()

    assert main(["eval", "--query", str(q), "--database", str(db), "--json", "--topk", "100", "--ties",
                 "position"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"map", "precision_at_radius", "map_at_k"} and result["topk"] == 100 and result["radius"] == 2
    # mAP against a slow reference: stable sort by distance, ties by database position
    d = pairwise_hamming(qc.codes, dbc.codes)
    aps = []
    for i in range(len(qc)):
        order = np.argsort(d[i], kind="stable")
        rel = dbc.labels[order] == qc.labels[i]
        hits = np.cumsum(rel)
        ranks = np.arange(1, len(rel) + 1)
        aps.append((hits[rel] / ranks[rel]).mean() if rel.any() else 0.0)
    assert result["map"] == pytest.approx(np.mean(aps), abs=1e-9)
    inside = d <= 2
    same = dbc.labels[None, :] == qc.labels[:, None]
    want = np.where(inside.any(1), (inside & same).sum(1) / np.maximum(inside.sum(1), 1), 0.0).mean()
    assert result["precision_at_radius"] == pytest.approx(want, abs=1e-12)

    assert main(["report", "--codes", str(q)]) == 0
    text = capsys.readouterr().out
    assert "| class |" in text and "0x" in text
    assert main(["report", "--codes", str(q), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["nbits"] == 8 and len(table["classes"]) == 10

    curves = tmp_path / "curves"
    assert main(["eval", "--query", str(q), "--database", str(db), "--curves", str(curves)]) == 0
    assert (curves / "pr_curve.png").stat().st_size > 0 and (curves / "curves.json").is_file()


def test_viz_writes_pngs(run_dir, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["viz", "--run", str(run_dir), "--split", "test", "--out", str(out), "--max-points", "300"]) == 0
    for name in ("umap.png", "tsne.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_index_and_search(run_dir, tmp_path, capsys):
    db = tmp_path / "db.npz"
    assert main(["encode", "--run", str(run_dir), "--split", "train", "--out", str(db), "--quiet"]) == 0
    idx = tmp_path / "db.dshidx"
    assert main(["index", "--codes", str(db), "--out", str(idx)]) == 0
    cf = load_codes(db)
    capsys.readouterr()
    hex_code = format(int(cf.codes[5, 0]), "02X")
    assert main(["search", "--index", str(idx), "--hex", hex_code, "-k", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    d = pairwise_hamming(cf.codes[5:6], cf.codes)[0]
    expected = np.argsort(d, kind="stable")[:5]
    assert [r["id"] for r in res] == expected.tolist()
    assert res[0]["distance"] == 0 and "label" in res[0]
    assert main(["search", "--index", str(idx), "--hex", hex_code, "--radius", "0", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert [r["id"] for r in res] == np.flatnonzero(d == 0).tolist()

    # a codes file as queries: each query's neighbours equal the brute-force stable ranking
    q = tmp_path / "q.npz"
    assert main(["encode", "--run", str(run_dir), "--split", "test", "--out", str(q), "--quiet"]) == 0
    qc = load_codes(q)
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--codes", str(q), "-k", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["queries"]
    assert len(out) == len(qc)
    dq = pairwise_hamming(qc.codes, cf.codes)
    for i in (0, 17, len(qc) - 1):
        assert [r["id"] for r in out[i]["results"]] == np.argsort(dq[i], kind="stable")[:7].tolist()

    # codes of another length than the index: one line, naming both
    from dsh.codes.codefile import CodeFile, save_codes

    other = tmp_path / "other.npz"
    save_codes(other, CodeFile(np.zeros((2, 2), np.uint8), 16, labels=np.zeros(2, np.int64)))
    assert main(["search", "--index", str(idx), "--codes", str(other)]) == 2
    err = one_error_line(capsys)
    assert "16-bit" in err and "8-bit" in err


def test_search_by_image(run_dir, tmp_path, capsys):
    from PIL import Image

    from dsh.data import load_split

    test = load_split("digits", "test")
    folder = tmp_path / "imgs"
    for i in range(6):
        cls = test.class_names[int(test.labels[i])]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i, 0].numpy(), mode="L").save(folder / cls / f"{i}.png")
    idx = tmp_path / "imgs.dshidx"
    assert main(["index", "--images", str(folder), "--run", str(run_dir), "--out", str(idx), "--quiet"]) == 0
    one = next(folder.rglob("0.png"))
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--image", str(one), "-k", "6", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert len(res) == 6 and [r["distance"] for r in res] == sorted(r["distance"] for r in res)
    # the query image itself is in the index, so it is found at distance 0 (maybe tied with look-alikes)
    assert any(r["path"] == str(one.resolve()) and r["distance"] == 0 for r in res)
    # an image of another size is resized to the trained size by default (the one input policy) and searched;
    # with --no-resize it is refused in one line
    big = tmp_path / "big.png"
    Image.open(one).resize((20, 20), Image.NEAREST).save(big)
    assert main(["search", "--index", str(idx), "--image", str(big), "-k", "6", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert len(res) == 6
    assert main(["search", "--index", str(idx), "--image", str(big), "--no-resize"]) == 2
    err = capsys.readouterr().err
    assert "big.png" in err and "--resize" in err and len(err.strip().splitlines()) == 1


def test_resume_and_determinism(tmp_path, capsys):
    from dsh.config import TrainConfig
    from dsh.train.loop import train

    cfg = TrainConfig(dataset="digits", nbits=8, epochs=2, batch_size=64, tensorboard=False)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train(cfg, a, progress=False, log=lambda m: None)
    train(cfg, b, progress=False, log=lambda m: None)
    # c: stopped after one epoch, then resumed from the command line: must end where a did
    train(cfg, c, progress=False, log=lambda m: None, stop_after=1)
    assert torch.load(c / "last.pt", weights_only=True)["epoch"] == 0
    capsys.readouterr()
    assert main(["train", "--out", str(c), "--resume", "--epochs", "5"]) == 2  # the saved settings rule a resume
    assert "--epochs" in one_error_line(capsys)
    assert main(["train", "--out", str(c), "--resume", "--quiet"]) == 0
    final = {p: torch.load(p / "last.pt", weights_only=True) for p in (a, b, c)}
    assert final[c]["epoch"] == 1
    for k, v in final[a]["state_dict"].items():
        assert torch.equal(v, final[b]["state_dict"][k]), f"same seed, different weights at {k}"
        assert torch.equal(v, final[c]["state_dict"][k]), f"resumed run differs at {k}"
    capsys.readouterr()
    assert main(["train", "--dataset", "digits", "--out", str(a), "--quiet"]) == 2  # refuses to overwrite a run
    assert "--resume" in one_error_line(capsys)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsh: error:"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--dataset", "mnist", "--data-root", "/nonexistent/dsh-data", "--no-download", "--out", "{tmp}/r"],
         "/nonexistent/dsh-data"),
        (["train", "--dataset", "digits", "--model", "no-such-net", "--out", "{tmp}/r"], "no-such-net"),
        (["train", "--dataset", "digits", "--bits", "0", "--out", "{tmp}/r"], "nbits"),
        (["train", "--dataset", "folder", "--data-root", "{tmp}/empty", "--out", "{tmp}/r"], "empty"),
        (["encode", "--run", "{tmp}/nothing-here", "--out", "{tmp}/x.npz"], "nothing-here"),
        (["eval", "--query", "{tmp}/missing.npz", "--database", "{tmp}/missing.npz"], "missing.npz"),
        (["search", "--index", "{tmp}/missing.idx", "--hex", "F7"], "missing.idx"),
    ],
)
def test_bad_input_gives_one_line(argv, needle, tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert needle in one_error_line(capsys)


def test_corrupt_and_mismatched_checkpoints(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    assert main(["encode", "--run", str(bad), "--out", str(tmp_path / "x.npz")]) == 2
    assert "bad.pt" in one_error_line(capsys)

    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt["model_config"] = {**ckpt["model_config"], "nbits": 16}  # weights of an 8-bit head
    mismatched = tmp_path / "mismatched.pt"
    torch.save(ckpt, mismatched)  # altered after it was written: its digest no longer matches
    assert main(["encode", "--run", str(mismatched), "--out", str(tmp_path / "x.npz")]) == 2
    assert "checksum mismatch" in one_error_line(capsys)
    del ckpt["digest"]  # made so by hand (as before checkpoints had a digest): the weights do not fit the model
    torch.save(ckpt, mismatched)
    assert main(["encode", "--run", str(mismatched), "--out", str(tmp_path / "x.npz")]) == 2
    assert "do not match" in one_error_line(capsys)

    torch.save({"something": "else"}, tmp_path / "other.pt")
    assert main(["encode", "--run", str(tmp_path / "other.pt"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "not a dsh checkpoint" in one_error_line(capsys)


def test_demo_end_to_end_short(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--no-plots", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Class hash table" in text and "mAP@all" in text
    summary = json.loads((out / "demo.json").read_text())
    assert summary["nbits"] == 8 and 0 <= summary["map"] <= 1 and len(summary["class_table"]["classes"]) == 10
    # it ends by saying how to search the run in a browser, and the index it names searches like the codes
    assert f"dsh serve --index {out / 'database.dshidx'}" in text
    from dsh.runtime.searcher import Searcher

    db_codes = load_codes(out / "database.npz")
    hit = Searcher.open(out / "database.dshidx").search_codes(db_codes.codes[:1], k=3)[0]
    assert hit.neighbors[0].distance == 0 and hit.neighbors[0].label is not None
    assert load_codes(out / "query.npz").u is not None and load_codes(out / "database.npz").u is None
    # a second demo keeps the first run and writes beside it
    assert main(["demo", "--out", str(out), "--epochs", "1", "--no-plots", "--quiet"]) == 0
    assert len(list(tmp_path.glob("demo-*"))) == 1 and (out / "best.pt").is_file()


def test_unlabelled_codes_are_left_out_of_eval_and_report(tmp_path, capsys):
    """label -1 is "no class": it must not form a class of its own (that gave mAP 1.0 on unlabelled codes)."""
    from dsh.codes.codefile import CodeFile, save_codes
    from dsh.eval.metrics import mean_average_precision

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (40, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)
    labels[::4] = -1
    save_codes(tmp_path / "q.npz", CodeFile(codes[:20], 8, labels=labels[:20]))
    save_codes(tmp_path / "db.npz", CodeFile(codes[20:], 8, labels=labels[20:]))
    assert main(["eval", "--query", str(tmp_path / "q.npz"), "--database", str(tmp_path / "db.npz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["excluded_unlabelled"] == {"queries": 5, "database": 5}
    keep_q, keep_db = labels[:20] >= 0, labels[20:] >= 0
    want = mean_average_precision(codes[:20][keep_q], codes[20:][keep_db], labels[:20][keep_q], labels[20:][keep_db],
                                  nbits=8)
    assert result["n_queries"] == 15 and result["n_database"] == 15 and result["map"] == pytest.approx(want)
    assert main(["report", "--codes", str(tmp_path / "q.npz"), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["excluded_unlabelled"] == 5 and all(row["label"] >= 0 for row in table["classes"])
    # nothing labelled at all: refused in one line
    save_codes(tmp_path / "none.npz", CodeFile(codes[:5], 8, labels=np.full(5, -1)))
    assert main(["eval", "--query", str(tmp_path / "none.npz"), "--database", str(tmp_path / "db.npz")]) == 2
    assert "no row has a label" in one_error_line(capsys)

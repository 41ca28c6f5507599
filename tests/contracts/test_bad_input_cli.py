"""Bad input on the command line, command by command: each case is refused with exit status 2 and one line on
stderr that names the offending flag or file, with no traceback; nothing in a crafted file runs, and a refused
training leaves no folder behind. The files the cases name are ``bad_input.make_files``'s."""

from __future__ import annotations

import pytest
from bad_input import assert_one_line, expand, make_files

from dsh.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_run):
    return make_files(tmp_path_factory, digits_run)


# ---------------------------------------------------------------------------------------------------------------
# the command line: (argv, a word the one error line must contain)

CLI_CASES = {
    "train": [
        (["train", "--out", "{root}/t1", "--bits", "abc"], "--bits"),
        (["train", "--out", "{root}/t2", "--epochs", "0"], "--epochs"),
        (["train", "--out", "{root}/t3", "--lr", "nan"], "--lr"),
        (["train", "--out", "{root}/t4", "--batch-size", "1"], "--batch-size"),
        (["train", "--out", "{root}/t5", "--threads", "0"], "--threads"),
        (["train", "--out", "{root}/t6", "--optimizer", "adam"], "--optimizer"),
        (["train", "--out", "{root}/t7", "--val-size", "-1"], "--val-size"),
        (["train", "--out", "{root}/t8", "--preset", "nope"], "nope"),
        (["train", "--out", "{root}/t9", "--dataset", "nope"], "nope"),
        (["train", "--out", "{root}/t10", "--model", "no-such-net"], "no-such-net"),
        (["train", "--out", "{root}/t11", "--nproc", "0"], "--nproc"),
        (["train", "--out", "{root}/t12", "--config", "{root}/missing.yaml"], "missing.yaml"),
        (["train", "--out", "{root}/t13", "--config", "{bad.json}"], "bad.json"),
        (["train", "--out", "{root}/t14", "--config", "{list.yaml}"], "list.yaml"),
        (["train", "--out", "{root}/t15", "--config", "{unknown.json}"], "colour"),
        (["train", "--out", "{root}/t16", "--config", "{typed.yaml}"], "--epochs"),
        (["train", "--out", "{root}/t17", "--config", "{python.yaml}"], "python.yaml"),
        (["train", "--out", "{root}/t18", "--config", "{bomb.yaml}"], "--dataset"),
        (["train", "--out", "{root}/t19", "--config", "{keys.yaml}"], "unknown setting"),
        (["train", "--out", "{root}/t20", "--config", "{latin1.json}"], "latin1.json"),
        (["train", "--out", "{root}/t21", "--config", "{garbage_yaml}"], "garbage.yaml"),
        (["train", "--out", "{root}/t22", "--resume"], "nothing to resume"),
        (["train", "--out", "{run_copy}", "--bits", "8"], "--resume"),
        (["train", "--out", "{run_copy}", "--resume", "--lr", "0.1"], "--lr"),
        (["train", "--out", "{a_file}"], "a-file"),
        (["train", "--out", "{run_garbage_last}", "--resume"], "last.pt"),
        (["train", "--out", "{run_no_optimizer}", "--resume"], "optimizer"),
        (["train", "--out", "{root}/t23", "--batch-size", "100000", "--bits", "8"], "--batch-size"),
        (["train", "--out", "{root}/t24", "--dataset", "folder", "--data-root", "{empty_dir}"], "empty"),
    ],
    "encode": [
        (["encode", "--run", "{root}/no-run", "--out", "{root}/e1.npz"], "no-run"),
        (["encode", "--run", "{run}", "--out", "{root}/e2.npz", "--split", "nope"], "--split"),
        (["encode", "--run", "{run}", "--out", "{root}/e3.npz", "--batch-size", "0"], "batch_size"),
        (["encode", "--run", "{run}", "--out", "{root}/e4.npz", "--threads", "0"], "threads"),
        (["encode", "--run", "{run}", "--images", "{root}/no-folder", "--out", "{root}/e5.npz"], "no-folder"),
        (["encode", "--run", "{run}", "--images", "{empty_dir}", "--out", "{root}/e6.npz"], "no images"),
        (["encode", "--run", "{run}", "--images", "{broken_imgs}", "--out", "{root}/e7.npz", "--quiet"],
         "{broken_name}"),
        (["encode", "--run", "{run}", "--images", "{odd_imgs}", "--out", "{root}/e8.npz", "--no-resize",
          "--quiet"], "big.png"),
        (["encode", "--run", "{run}", "--split", "test", "--out", "{root}/e9.npz", "--resume"], "--resume"),
        (["encode", "--run", "{run}", "--images", "{imgs}", "--out", "{a_file}/e.npz", "--quiet"], "a-file"),
        (["encode", "--run", "{garbage_pt}", "--out", "{root}/e10.npz"], "garbage.pt"),
        (["encode", "--model", "{garbage_onnx}", "--images", "{imgs}", "--out", "{root}/e11.npz"], "garbage.onnx"),
        (["encode", "--model", "{garbage_safetensors}", "--images", "{imgs}", "--out", "{root}/e12.npz"],
         "garbage.safetensors"),
        (["encode", "--model", "{onnx}", "--backend", "torch", "--images", "{imgs}", "--out", "{root}/e13.npz"],
         "m.onnx"),
        (["encode", "--model", "{onnx}", "--split", "test", "--dataset", "nope", "--out", "{root}/e14.npz"],
         "nope"),
    ],
    "export": [
        (["export", "--run", "{run}", "--out", "{root}/m.bin"], "m.bin"),
        (["export", "--run", "{root}/no-run", "--out", "{root}/x.onnx"], "no-run"),
        (["export", "--run", "{run}", "--out", "{root}/x.onnx", "--format", "tflite"], "--format"),
        (["export", "--run", "{garbage_safetensors}", "--out", "{root}/x.onnx"], "garbage.safetensors"),
        (["export", "--run", "{run}", "--out", "{root}/x.onnx", "--opset", "1"], "--opset"),
        (["export", "--run", "{run}", "--out", "{a_file}/x.safetensors"], "a-file"),
    ],
    "eval": [
        (["eval", "--query", "{root}/missing.npz", "--database", "{q}"], "missing.npz"),
        (["eval", "--query", "{q}", "--database", "{q16}"], "q16.npz"),
        (["eval", "--query", "{nolabels}", "--database", "{q}"], "nolabels.npz"),
        (["eval", "--query", "{multihot}", "--database", "{q}"], "multihot.npz"),
        (["eval", "--query", "{unlabelled}", "--database", "{q}"], "unlabelled.npz"),
        (["eval", "--query", "{q}", "--database", "{q}", "--topk", "0"], "--topk"),
        (["eval", "--query", "{q}", "--database", "{q}", "--radius", "-1"], "--radius"),
        (["eval", "--query", "{q}", "--database", "{q}", "--protocol", "nope"], "nope"),
        (["eval", "--query", "{q}", "--database", "{q}", "--ties", "random"], "--ties"),
        (["eval", "--query", "{text}", "--database", "{q}"], "notes.txt"),
        (["eval", "--query", "{garbage_npz}", "--database", "{q}"], "garbage.npz"),
        (["eval", "--query", "{truncated_npz}", "--database", "{q}"], "truncated.npz"),
        (["eval", "--query", "{nbits_array}", "--database", "{q}"], "nbits_array.npz"),
        (["eval", "--query", "{q}", "--database", "{labels_text}"], "labels_text.npz"),
        (["eval", "--query", "{q}", "--database", "{q}", "--curves", "{a_file}/curves"], "a-file"),
    ],
    "report": [
        (["report", "--codes", "{multihot}"], "multihot.npz"),
        (["report", "--codes", "{unlabelled}"], "unlabelled.npz"),
        (["report", "--codes", "{root}/missing.npz"], "missing.npz"),
        (["report", "--codes", "{nbits_float}"], "nbits_float.npz"),
        (["report", "--codes", "{q}", "--close-bits", "-1"], "--close-bits"),
    ],
    "viz": [
        (["viz", "--out", "{root}/v"], "--run"),
        (["viz", "--codes", "{q}", "--out", "{root}/v"], "keep-u"),
        (["viz", "--codes", "{q}", "--method", "pca"], "--method"),
        (["viz", "--codes", "{u_shape}", "--out", "{root}/v"], "u_shape.npz"),
        (["viz", "--codes", "{q}", "--max-points", "0"], "--max-points"),
    ],
    "index": [
        (["index", "--codes", "{q}"], "--out"),
        (["index", "--codes", "{q}", "--out", "{root}/i.dshidx", "--uri", "x.db"], "--uri"),
        (["index", "--codes", "{q}", "--out", "{root}/i.dshidx", "--nlist", "4"], "--nlist"),
        (["index", "--images", "{imgs}", "--out", "{root}/i.dshidx"], "--run"),
        (["index", "--codes", "{q}", "--store", "milvus"], "--uri"),
        (["index", "--codes", "{q}", "--store", "milvus", "--uri", "x.db", "--collection", "c", "--overwrite",
          "--append"], "--overwrite"),
        (["index", "--codes", "{q16}", "--run", "{run}", "--out", "{root}/i.dshidx"], "q16.npz"),
        (["index", "--codes", "{root}/missing.npz", "--out", "{root}/i.dshidx"], "missing.npz"),
        (["index", "--codes", "{q}", "--out", "{a_file}/i.dshidx"], "a-file"),
        (["index", "--codes", "{codes_padding}", "--out", "{root}/i.dshidx"], "codes_padding.npz"),
        (["index", "--images", "{broken_imgs}", "--run", "{run}", "--out", "{root}/i.dshidx", "--quiet"],
         "{broken_name}"),
    ],
    "search": [
        (["search", "--index", "{idx}", "--hex", "ZZ"], "ZZ"),
        (["search", "--index", "{idx}", "--hex", "F7F7"], "F7F7"),
        (["search", "--index", "{idx}", "--hex", "F7", "-k", "0"], "-k"),
        (["search", "--index", "{idx}", "--hex", "F7", "--radius", "-1"], "--radius"),
        (["search", "--hex", "F7"], "--index"),
        (["search", "--index", "{idx}", "--hex", "F7", "--uri", "x.db"], "--uri"),
        (["search", "--index", "{idx}", "--hex", "F7", "-k", "many"], "-k"),
        (["search", "--index", "{garbage_dshidx}", "--hex", "F7"], "garbage.dshidx"),
        (["search", "--index", "{idx_truncated}", "--hex", "F7"], "truncated.dshidx"),
        (["search", "--index", "{idx_flipped}", "--hex", "F7"], "flipped.dshidx"),
        (["search", "--index", "{idx_version}", "--hex", "F7"], "version.dshidx"),
        (["search", "--index", "{idx_nocat}", "--hex", "F7"], "{nocat_catalog}"),
        (["search", "--index", "{idx_othercat}", "--hex", "F7"], "othercat.dshidx"),
        (["search", "--index", "{idx}", "--image", "{img}"], "--run"),
        (["search", "--index", "{idx}", "--codes", "{q16}"], "q16.npz"),
        (["search", "--index", "{idx_run}", "--image", "{root}/missing.png"], "missing.png"),
        (["search", "--index", "{idx_run}", "--image", "{text_png}"], "text.png"),
        (["search", "--index", "{idx_run}", "--image", "{bomb_png}"], "bomb.png"),
        (["search", "--index", "{idx_run}", "--image", "{empty_dir}"], "empty"),
        (["search", "--index", "{idx_run}", "--image", "{big_png}", "--no-resize"], "big.png"),
        (["search", "--index", "{idx_evil}", "--image", "{img}"], "evil.pt"),
        (["search", "--index", "{idx_run}", "--image", "{img}", "--model", "{st_tampered}"],
         "tampered.safetensors"),
    ],
    "serve": [
        (["serve", "--index", "{root}/missing.dshidx"], "missing.dshidx"),
        (["serve", "--index", "{idx_run}", "--max-k", "0"], "--max-k"),
        (["serve", "--index", "{idx_run}", "--max-upload-mb", "0"], "--max-upload-mb"),
        (["serve", "--index", "{idx_run}", "--port", "70000"], "--port"),
        (["serve", "--index", "{idx_run}", "--max-pixels", "0"], "--max-pixels"),
        (["serve", "--index", "{idx_run}", "--map", "{root}/missing-map.png"], "--map"),
        (["serve", "--index", "{idx}"], "--run"),
        (["serve", "--index", "{idx_run}", "--model", "{onnx_nometa}"], "onnx_nometa.onnx"),
        (["serve", "--index", "{idx_run}", "--port", "http"], "--port"),
        (["serve", "--index", "{idx_run}", "--max-active", "0"], "--max-active"),
        (["serve", "--index", "{idx_run}", "--max-connections", "0"], "--max-connections"),
    ],
    "general": [
        (["frobnicate"], "frobnicate"),
        ([], "COMMAND"),
        (["search", "--index", "{idx}", "--hex", "F7", "--colour", "red"], "--colour"),
    ],
}

CLI_PARAMS = [pytest.param(area, argv, needle, id=f"{area}-{i}")
              for area, cases in CLI_CASES.items() for i, (argv, needle) in enumerate(cases)]


@pytest.fixture
def no_server(monkeypatch):
    """dsh serve must refuse its bad input before it listens: a server started by a case fails the test."""
    try:
        import uvicorn
    except ImportError:
        return

    def refuse(*a, **k):
        raise AssertionError("dsh serve started a server for bad input")

    monkeypatch.setattr(uvicorn, "run", refuse)


@pytest.mark.parametrize("area, argv, needle", CLI_PARAMS)
def test_cli_bad_input(area, argv, needle, files, capsys, no_server):
    if area == "serve":
        pytest.importorskip("fastapi", reason="the serve extra is not installed")
    outs_before = {p.name for p in files["root"].iterdir()}
    rc = main(expand(argv, files))
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out
    assert_one_line(err, expand([needle], files)[0])
    assert not files["marker"].exists(), "a crafted file ran code"
    if area == "train":
        # a refused training leaves no half-made run folder behind
        made = {p.name for p in files["root"].iterdir()} - outs_before
        assert not made, made


def test_failed_training_leaves_no_folder(files, capsys):
    """A train that fails before its first checkpoint removes what it made (it used to leave RUN/config.json)."""
    out = files["root"] / "failed-run"
    assert main(["train", "--out", str(out), "--dataset", "folder", "--data-root", str(files["empty_dir"]),
                 "--quiet"]) == 2
    assert_one_line(capsys.readouterr().err, "empty")
    assert not out.exists()
    # a folder that was there before keeps what it held (and only that)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(out), "--dataset", "folder", "--data-root", str(files["empty_dir"]),
                 "--quiet"]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

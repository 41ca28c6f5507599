"""Bad input of every kind, across the command line, the file loaders and HTTP: each case is refused with the
right exit status (or HTTP status), one line that names the offending flag or file, and no traceback.

No case trains: they share the session's tiny digits run (``digits_run``) and a folder of files, good and broken,
made once for the module (``files``). Cases that could run code from a file (a crafted pickle, a YAML tag, an
object array) also check that nothing ran. The counts by area are in README.md ("Reliability").
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_digit_folder

from dsh.cli import main
from dsh.codes.codefile import CodeFile, load_codes, save_codes
from dsh.errors import UserError
from dsh.index.flat import HammingIndex

HAVE_SERVE = importlib.util.find_spec("fastapi") is not None
if HAVE_SERVE:  # test_serve.py's app, its fixtures and its 28 bad requests, reused here rather than copied
    import test_serve
    from test_serve import bomb, served  # noqa: F401  (pytest finds fixtures imported into a test module)

# ---------------------------------------------------------------------------------------------------------------
# helpers


def assert_one_line(text: str, needle: str, prefix: str = "dsh: error:") -> str:
    """``text`` (stderr) is one line starting with ``prefix``, naming ``needle``, with no traceback."""
    line = text.strip()
    assert "Traceback" not in text, text
    assert len(line.splitlines()) == 1, text
    assert line.startswith(prefix), text
    assert needle in line, (needle, line)
    return line


def assert_user_error(call, needle: str, kind: type = UserError) -> str:
    """``call()`` raises a ``kind`` (a :class:`UserError`) whose message is one line naming ``needle``."""
    with pytest.raises(UserError) as info:
        call()
    assert isinstance(info.value, kind), (type(info.value), info.value)
    message = str(info.value)
    assert "\n" not in message and needle in message, (needle, message)
    return message


class RunsCode:
    """Unpickling this would run ``touch MARKER``: nothing of dsh may ever unpickle it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height``, and nothing to decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def rewrite_trailer(path: Path) -> None:
    """Recompute the CRC-32 trailer of a dsh binary file (index, catalog) after editing it, so that the structure
    checks behind the checksum are what refuses it."""
    from dsh.utils.fileio import END_MARKER, TRAILER

    data = bytearray(path.read_bytes())
    body = bytes(data[: -TRAILER.size])
    path.write_bytes(body + TRAILER.pack(zlib.crc32(body), END_MARKER))


# ---------------------------------------------------------------------------------------------------------------
# the files every case draws on


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_run):
    from dsh.runtime.export import export_model

    root = tmp_path_factory.mktemp("bad-input")
    p: dict[str, Path] = {"root": root, "run": digits_run}
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (30, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 30)
    names = np.array(["a", "b", "c"])

    def codefile(name, **kw):
        p[name] = root / f"{name}.npz"
        save_codes(p[name], CodeFile(**kw))

    codefile("q", codes=codes, nbits=8, labels=labels, class_names=names)
    codefile("q16", codes=rng.integers(0, 256, (4, 2), dtype=np.uint8), nbits=16, labels=np.zeros(4, np.int64))
    codefile("nolabels", codes=codes, nbits=8)
    codefile("multihot", codes=codes, nbits=8, labels=np.eye(3, dtype=np.uint8)[labels])
    codefile("unlabelled", codes=codes, nbits=8, labels=np.full(30, -1))
    # readable .npz files that are not code files
    for name, arrays in {
        "nbits_array": dict(codes=codes, nbits=np.array([8, 8])),
        "nbits_float": dict(codes=codes, nbits=np.float64(8.5)),
        "nbits_text": dict(codes=codes, nbits=np.array("eight")),
        "nbits_zero": dict(codes=codes, nbits=np.int64(0)),
        "nbits_huge": dict(codes=codes, nbits=np.int64(10**12)),
        "no_codes": dict(nbits=np.int64(8)),
        "codes_float": dict(codes=codes.astype(np.float32), nbits=np.int64(8)),
        "codes_wide": dict(codes=np.zeros((3, 4), np.uint8), nbits=np.int64(8)),
        "codes_padding": dict(codes=np.full((3, 1), 255, np.uint8), nbits=np.int64(5)),
        "labels_text": dict(codes=codes, nbits=np.int64(8), labels=np.array(["x"] * 30)),
        "labels_rows": dict(codes=codes, nbits=np.int64(8), labels=np.zeros(7, np.int64)),
        "labels_3d": dict(codes=codes, nbits=np.int64(8), labels=np.zeros((30, 2, 2), np.int64)),
        "labels_below": dict(codes=codes, nbits=np.int64(8), labels=np.full(30, -5)),
        "u_shape": dict(codes=codes, nbits=np.int64(8), labels=labels, u=np.zeros((30, 3), np.float32)),
        "paths_2d": dict(codes=codes, nbits=np.int64(8), paths=np.array([["a"]] * 30)),
    }.items():
        p[name] = root / f"{name}.npz"
        np.savez(p[name], **arrays)
    p["marker"] = root / "RAN"  # a crafted file that ran code would create it
    p["object_npz"] = root / "object.npz"
    np.savez(p["object_npz"], codes=np.array([RunsCode(p["marker"])], dtype=object), nbits=np.int64(8))
    good = p["q"].read_bytes()
    (root / "truncated.npz").write_bytes(good[: len(good) // 2])
    p["truncated_npz"] = root / "truncated.npz"
    p["text"] = root / "notes.txt"
    p["text"].write_text("just some text\n")
    p["garbage"] = root / "garbage.bin"
    p["garbage"].write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    for suffix in ("npz", "dshidx", "pt", "onnx", "safetensors", "json", "yaml"):
        p[f"garbage_{suffix}"] = root / f"garbage.{suffix}"
        shutil.copy(p["garbage"], p[f"garbage_{suffix}"])
    p["a_file"] = root / "a-file"
    p["a_file"].write_text("a file where a folder should be")

    # index files: good, without a model record, with its catalog missing or another's, broken ones
    index = HammingIndex(8)
    index.add(codes, labels=labels, class_names=list(names))
    p["idx"] = root / "db.dshidx"
    index.save(p["idx"])
    p["idx_nocat"] = root / "nocat.dshidx"
    index.save(p["idx_nocat"])
    os.unlink(root / "nocat.dshidx.catalog")
    p["idx_othercat"] = root / "othercat.dshidx"
    index.save(p["idx_othercat"])
    index.save(root / "second.dshidx")
    shutil.copy(root / "second.dshidx.catalog", root / "othercat.dshidx.catalog")  # another uid
    data = p["idx"].read_bytes()
    p["idx_truncated"] = root / "truncated.dshidx"
    p["idx_truncated"].write_bytes(data[:-20])
    p["idx_flipped"] = root / "flipped.dshidx"
    flipped = bytearray(data)
    flipped[70] ^= 0x10  # inside the codes
    p["idx_flipped"].write_bytes(bytes(flipped))
    p["idx_version"] = root / "version.dshidx"
    v = bytearray(data)
    v[len(b"DSHIDX\0\0") if data.startswith(b"DSHIDX\0\0") else 8] ^= 0x40
    p["idx_version"].write_bytes(bytes(v))

    # images
    p["imgs"] = root / "imgs"
    write_digit_folder(p["imgs"], 10)
    p["img"] = sorted(p["imgs"].rglob("*.png"))[0]
    p["empty_dir"] = root / "empty"
    p["empty_dir"].mkdir()
    p["broken_imgs"] = root / "broken-imgs"
    shutil.copytree(p["imgs"], p["broken_imgs"])
    broken = sorted(p["broken_imgs"].rglob("*.png"))[3]
    broken.write_bytes(broken.read_bytes()[:30])
    p["broken_png"] = broken
    p["broken_name"] = broken.name
    p["text_png"] = root / "text.png"
    p["text_png"].write_text("not an image")
    p["bomb_png"] = root / "bomb.png"
    p["bomb_png"].write_bytes(png_header_only(100_000, 100_000))
    from PIL import Image

    p["big_png"] = root / "big.png"
    Image.open(p["img"]).resize((20, 20)).save(p["big_png"])
    p["odd_imgs"] = root / "odd-imgs"
    (p["odd_imgs"] / "0").mkdir(parents=True)
    shutil.copy(p["big_png"], p["odd_imgs"] / "0" / "big.png")

    # an index made with the run (it records the model), and one whose record names a crafted checkpoint
    p["idx_run"] = root / "run.dshidx"
    assert main(["index", "--images", str(p["imgs"]), "--run", str(digits_run), "--out", str(p["idx_run"]),
                 "--quiet"]) == 0
    p["evil_pt"] = root / "evil.pt"
    torch.save({"format": "dsh-checkpoint", "payload": RunsCode(p["marker"])}, p["evil_pt"])
    evil_index = HammingIndex(8)
    evil_index.add(codes)
    p["idx_evil"] = root / "evil.dshidx"
    evil_index.save(p["idx_evil"], metadata={"model": {"path": str(p["evil_pt"]), "fingerprint": "0" * 64}})

    # checkpoints
    with_digest = torch.load(digits_run / "best.pt", weights_only=True)
    best = {k: v for k, v in with_digest.items() if k != "digest"}  # crafted by hand: no digest to give it away
    p["altered_pt"] = root / "altered.pt"
    torch.save({**with_digest, "class_names": ["x"] * 10}, p["altered_pt"])  # altered: its digest no longer fits
    p["notdsh_pt"] = root / "other.pt"
    torch.save({"something": "else"}, p["notdsh_pt"])
    p["future_pt"] = root / "future.pt"
    torch.save({**best, "version": 99}, p["future_pt"])
    p["lacking_pt"] = root / "lacking.pt"
    torch.save({k: v for k, v in best.items() if k != "state_dict"}, p["lacking_pt"])
    p["badconfig_pt"] = root / "badconfig.pt"
    torch.save({**best, "model_config": "paper"}, p["badconfig_pt"])
    p["mismatch_pt"] = root / "mismatch.pt"
    torch.save({**best, "model_config": {**best["model_config"], "nbits": 16}}, p["mismatch_pt"])
    p["badnorm_pt"] = root / "badnorm.pt"
    torch.save({**best, "normalizer": {"mean": [0.5]}}, p["badnorm_pt"])
    p["truncated_pt"] = root / "truncated.pt"
    raw = (digits_run / "best.pt").read_bytes()
    p["truncated_pt"].write_bytes(raw[: len(raw) // 2])
    # run folders to resume: a garbage last.pt, a last.pt that is a checkpoint but not a resumable one
    for name, content in (("run_garbage_last", p["garbage"].read_bytes()), ("run_no_optimizer", None)):
        d = root / name
        d.mkdir()
        if content is None:
            torch.save({k: v for k, v in best.items() if k != "optimizer"}, d / "last.pt")
        else:
            (d / "last.pt").write_bytes(content)
        p[name] = d
    p["run_copy"] = root / "run-copy"
    shutil.copytree(digits_run, p["run_copy"])

    # exported model files: good ones and damaged ones
    p["onnx"] = root / "m.onnx"
    export_model(digits_run, p["onnx"])
    p["st"] = root / "m.safetensors"
    export_model(digits_run, p["st"])
    import onnx

    proto = onnx.load(str(p["onnx"]))
    meta = {e.key: e.value for e in proto.metadata_props}
    for name, value in (("onnx_nometa", None), ("onnx_badjson", "{not json"),
                        ("onnx_shape", json.dumps({**json.loads(meta["dsh"]), "input_shape": [3, 8, 8]}))):
        m = onnx.load(str(p["onnx"]))
        del m.metadata_props[:]
        if value is not None:
            e = m.metadata_props.add()
            e.key, e.value = "dsh", value
        p[name] = root / f"{name}.onnx"
        onnx.save(m, str(p[name]))
    st = bytearray(p["st"].read_bytes())
    st[-3] ^= 0x01  # a weight's last byte: the fingerprint in the header no longer matches
    p["st_tampered"] = root / "tampered.safetensors"
    p["st_tampered"].write_bytes(bytes(st))
    from safetensors.torch import save_file

    p["st_nometa"] = root / "nometa.safetensors"
    save_file({"w": torch.zeros(2)}, str(p["st_nometa"]))

    # configs
    configs = {
        "bad.json": "{nope",
        "list.yaml": "- 1\n- 2\n",
        "unknown.json": json.dumps({"colour": "blue"}),
        "typed.yaml": "epochs: 'many'\n",
        "python.yaml": f"epochs: !!python/object/apply:os.system ['touch {p['marker']}']\n",
        # a "billion laughs": 9^7 strings if expanded; its repr in the error message must stay short
        "bomb.yaml": "dataset:\n  - &a [x, x, x, x, x, x, x, x, x]\n"
                     + "".join(f"  - &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcde", "bcdef"))
                     + f"  - [{', '.join(['*f'] * 9)}]\n",
        "keys.yaml": "1: 2\nepochs: 3\n",
    }
    for name, text in configs.items():
        p[name] = root / name
        p[name].write_text(text)
    p["latin1.json"] = root / "latin1.json"
    p["latin1.json"].write_bytes('{"dataset": "caf\xe9"}'.encode("latin-1"))
    return p


def expand(argv: list[str], files: dict) -> list[str]:
    out = []
    for a in argv:
        for key in sorted(files, key=len, reverse=True):
            a = a.replace("{" + key + "}", str(files[key]))
        out.append(a)
    return out


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
        (["search", "--index", "{idx_nocat}", "--hex", "F7"], "nocat.dshidx.catalog"),
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


# ---------------------------------------------------------------------------------------------------------------
# the file loaders, called directly: (the loader, the file's key in `files`, what the message must name)


def _codes(key):
    return lambda f: load_codes(f[key])


def _index(key):
    return lambda f: HammingIndex.load(f[key])


def _catalog(key):
    from dsh.index.catalog import Catalog

    return lambda f: Catalog.load(f[key])


def _checkpoint(key):
    from dsh.models.checkpoint import load_model

    return lambda f: load_model(f[key])


def _model(key):
    from dsh.runtime.encoder import Encoder

    return lambda f: Encoder.from_file(f[key], backend="torch" if not str(f[key]).endswith(".onnx") else "auto")


def _config(key):
    from dsh.config import resolve_config

    return lambda f: resolve_config(config_file=f[key])


def _image(key):
    from dsh.utils.imageio import decode_image

    return lambda f: decode_image(f[key], (8, 8), "L")


LOADER_CASES = {
    "code files": [(_codes(k), k) for k in (
        "garbage_npz", "truncated_npz", "text", "object_npz", "nbits_array", "nbits_float", "nbits_text",
        "nbits_zero", "nbits_huge", "no_codes", "codes_float", "codes_wide", "codes_padding", "labels_text",
        "labels_rows", "labels_3d", "labels_below", "u_shape", "paths_2d")],
    "index files": [(_index(k), k) for k in (
        "garbage_dshidx", "idx_truncated", "idx_flipped", "idx_version", "text")]
    + [(_index("idx_nocat"), "idx_nocat"), (_index("idx_othercat"), "idx_othercat")],
    "catalog files": [(_catalog(k), k) for k in ("garbage", "idx", "text")],
    "checkpoints": [(_checkpoint(k), k) for k in (
        "garbage_pt", "truncated_pt", "evil_pt", "notdsh_pt", "future_pt", "lacking_pt", "badconfig_pt",
        "mismatch_pt", "badnorm_pt", "altered_pt", "empty_dir")],
    "model files": [(_model(k), k) for k in (
        "garbage_onnx", "onnx_nometa", "onnx_badjson", "onnx_shape", "garbage_safetensors", "st_tampered",
        "st_nometa")],
    "configs": [(_config(k), k) for k in (
        "bad.json", "list.yaml", "unknown.json", "typed.yaml", "python.yaml", "bomb.yaml", "keys.yaml",
        "latin1.json", "garbage_json")],
    "images": [(_image(k), k) for k in ("text_png", "bomb_png", "broken_png", "empty_dir", "garbage")]
    + [(lambda f: decode_image_bytes(b""), "empty bytes"), (lambda f: decode_image_bytes(b"\x89PNG\r\n"), "bytes")],
}


def decode_image_bytes(data: bytes):
    from dsh.utils.imageio import decode_image

    return decode_image(data, (8, 8), "L")


LOADER_PARAMS = [pytest.param(call, key, id=f"{area}-{key}") for area, cases in LOADER_CASES.items()
                 for call, key in cases]


@pytest.mark.parametrize("call, key", LOADER_PARAMS)
def test_loader_refuses(call, key, files):
    needle = files[key].name if key in files else ""
    if key in ("idx_nocat", "idx_othercat"):
        needle = files[key].name  # the index, and for the catalog also the catalog file
    assert_user_error(lambda: call(files), needle)
    assert not files["marker"].exists(), "a crafted file ran code"


def test_code_file_nbits_array_is_one_line(files):
    """nbits stored as an array used to end in a TypeError traceback ("only length-1 arrays ...")."""
    msg = assert_user_error(lambda: load_codes(files["nbits_array"]), "nbits_array.npz")
    assert "'nbits' must be one integer" in msg
    msg = assert_user_error(lambda: load_codes(files["nbits_float"]), "nbits_float.npz")
    assert "'nbits'" in msg  # 8.5 used to load silently as 8


def test_loading_shared_files_runs_no_code(files):
    """Everything a user might share loads without executing code: checkpoints (weights_only), YAML configs
    (safe_load), code files (allow_pickle=False), index metadata (JSON; the model it names is loaded as a
    checkpoint, so through weights_only too)."""
    from dsh.config import read_config_file
    from dsh.errors import DataError, ModelFileError
    from dsh.models.checkpoint import read_checkpoint
    from dsh.runtime.searcher import Searcher

    assert_user_error(lambda: read_checkpoint(files["evil_pt"]), "refused", ModelFileError)
    assert_user_error(lambda: read_config_file(files["python.yaml"]), "python.yaml", DataError)
    assert_user_error(lambda: load_codes(files["object_npz"]), "object.npz", DataError)
    searcher = Searcher.open(files["idx_evil"])
    assert_user_error(lambda: searcher.search([str(files["img"])], k=1), "evil.pt", ModelFileError)
    assert not files["marker"].exists()


# ---------------------------------------------------------------------------------------------------------------
# HTTP: test_serve.py's 28 kinds of bad request, run here one by one, and more


SERVE_CASES = 28  # test_serve.bad_requests
needs_serve = pytest.mark.skipif(not HAVE_SERVE, reason="the serve extra is not installed (pip install 'dsh[serve]')")


@pytest.fixture(scope="module")
def serve_cases(served, bomb):
    cases = test_serve.bad_requests(served, bomb)
    assert len(cases) == SERVE_CASES
    return cases


@needs_serve
@pytest.mark.parametrize("i", range(SERVE_CASES))
def test_http_bad_request_from_test_serve(i, serve_cases, served):
    name, call, status = serve_cases[i]
    err = test_serve.is_json_error(call(served["client"]), status, served)
    assert "\n" not in err["message"], name


def more_bad_requests(served):
    png = served["files"][0].read_bytes()
    return [
        ("hex with inner space", lambda c: c.post("/api/search", json={"hex": "0 F"}), 422, "hex"),
        ("hex as a list", lambda c: c.post("/api/search", json={"hex": ["0F"]}), 422, "hex"),
        ("hex missing", lambda c: c.post("/api/search", json={"code": "0F"}), 422, "hex"),
        ("radius not whole", lambda c: c.post("/api/search?radius=1.5", json={"hex": "0F"}), 422, "radius"),
        ("k negative", lambda c: c.post("/api/search?k=-3", json={"hex": "0F"}), 422, "k"),
        ("radius not a number", lambda c: c.post("/api/search?radius=two", json={"hex": "0F"}), 422, "radius"),
        ("id not a number", lambda c: c.get("/api/items/abc"), 422, "item_id"),
        ("encode a text file", lambda c: c.post("/api/encode", files={"image": ("a.txt", b"hello", "text/plain")}),
         415, "a.txt"),
        ("encode one good one bad", lambda c: c.post("/api/encode", files=[("image", ("a.png", png, "image/png")),
                                                                          ("image", ("b.png", png[:50], "image/png"))]),
         415, "b.png"),
        ("JSON body to encode", lambda c: c.post("/api/encode", json={"hex": "0F"}), 422, "image"),
        ("token with the wrong scheme", lambda c: c.get("/api/info", headers={"Authorization": "Basic x"}), 401, ""),
    ]


@needs_serve
def test_more_http_bad_requests(served):
    locked = served["locked"]
    cases = more_bad_requests(served)
    assert len(cases) == MORE_HTTP_CASES
    for name, call, status, needle in cases:
        client = locked if "token" in name else served["client"]
        err = test_serve.is_json_error(call(client), status, served)
        assert "\n" not in err["message"], name
        assert needle.lower() in err["message"].lower(), (name, err["message"])
    assert served["client"].get("/healthz").status_code == 200


MORE_HTTP_CASES = 11


def test_case_counts():
    """The counts README.md's "Reliability" section gives."""
    counts = {area: len(cases) for area, cases in CLI_CASES.items()}
    counts.update({area: len(cases) for area, cases in LOADER_CASES.items()})
    counts["HTTP"] = SERVE_CASES + MORE_HTTP_CASES
    assert sum(counts.values()) >= 60
    print(json.dumps(counts))

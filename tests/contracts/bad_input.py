"""What the bad-input contracts (``test_bad_input_*.py`` beside this file) share: the checks that an error is one
line naming the flag or file, and the folder of files, good and broken, that the command-line and loader cases draw
on (:func:`make_files`, behind each test module's ``files`` fixture).

No case trains: the files come from the session's tiny digits run (``digits_run``). Cases that could run code from
a file (a crafted pickle, a YAML tag, an object array) also check that nothing ran. The counts by area are in
docs/reliability.md ("Bad input, by area"), checked by ``test_bad_input_counts.py``.
"""

from __future__ import annotations

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
from dsh.codes.codefile import CodeFile, save_codes
from dsh.errors import UserError
from dsh.index.flat import HammingIndex

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


def make_files(tmp_path_factory, digits_run) -> dict[str, Path]:
    """The files the cases name, by key (``{key}`` in an argv), in a new temporary folder (``"root"``)."""
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
    nocat = root / index.metadata["catalog"]["file"]
    os.unlink(nocat)
    p["nocat_catalog"] = nocat.name
    p["idx_othercat"] = root / "othercat.dshidx"
    index.save(p["idx_othercat"])
    othercat = root / index.metadata["catalog"]["file"]
    index.save(root / "second.dshidx")
    shutil.copy(root / index.metadata["catalog"]["file"], othercat)  # another uid
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

    from dsh.models.sealing import PLACEHOLDER, SAFETENSORS_PREFIX, seal
    from dsh.runtime.export import sealed_onnx

    def reseal(data: bytes, prefix: bytes) -> bytes:
        start = data.index(prefix) + len(prefix)
        return seal(data[:start] + PLACEHOLDER.encode() + data[start + 64 :], prefix)

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
        p[name].write_bytes(sealed_onnx(m))  # sealed, so that what they say is what is refused
    m = onnx.load(str(p["onnx"]))  # the exported model without its seal (another tool's, or an old export)
    kept = [e for e in m.metadata_props if e.key != "dsh_sha256"]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    p["onnx_unsealed"] = root / "onnx_unsealed.onnx"
    onnx.save(m, str(p["onnx_unsealed"]))
    m = onnx.load(str(p["onnx"]))  # sealed, and a second output beside u
    node = m.graph.node.add()
    node.op_type, node.input[:], node.output[:] = "Identity", [m.graph.output[0].name], ["u_copy"]
    m.graph.output.add().CopyFrom(m.graph.output[0])
    m.graph.output[1].name = "u_copy"
    p["onnx_two_outputs"] = root / "onnx_two_outputs.onnx"
    p["onnx_two_outputs"].write_bytes(sealed_onnx(m))
    flipped = bytearray(p["onnx"].read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # a weight's bit: the seal no longer matches
    p["onnx_flipped"] = root / "onnx_flipped.onnx"
    p["onnx_flipped"].write_bytes(bytes(flipped))
    st = bytearray(p["st"].read_bytes())
    st[-3] ^= 0x01  # a weight's last byte: the fingerprint in the header no longer matches
    p["st_tampered"] = root / "tampered.safetensors"
    p["st_tampered"].write_bytes(bytes(st))
    p["st_resealed"] = root / "resealed.safetensors"  # the same, sealed again: the fingerprint refuses it
    p["st_resealed"].write_bytes(reseal(bytes(st), SAFETENSORS_PREFIX))
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

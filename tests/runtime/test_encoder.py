"""The library layer: Encoder (every kind of image input, one policy), exports (ONNX, safetensors), torch-free
encoding, streaming folder encode with resume, and the Searcher. Checked against torch on the same weights and
against explicit per-image references."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_digit_folder
from PIL import Image

from dsh.codes.bits import codes_from_u
from dsh.errors import DataError, InputError, ModelFileError
from dsh.runtime.encoder import Encoder

# ONNX and torch run the same float32 graph; their kernels sum in different orders (measured: <= 4e-7)
U_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def digits_test():
    from dsh.data import load_split

    s = load_split("digits", "test")
    return s.images.numpy(), s.labels.numpy(), list(s.class_names)


@pytest.fixture(scope="module")
def encoders(digits_run):
    return {"torch": Encoder.from_run(digits_run, backend="torch"),
            "onnxruntime": Encoder.from_run(digits_run, backend="onnxruntime")}


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
    from dsh.runtime.export import export_model

    d = tmp_path_factory.mktemp("export")
    export_model(digits_run, d / "model.onnx")
    export_model(digits_run, d / "model.safetensors")
    return d


def torch_reference_u(run, images: np.ndarray) -> np.ndarray:
    """The slow obvious reference: the checkpoint's model on normalised float images, one image at a time."""
    import torch

    from dsh.models.checkpoint import load_model

    loaded = load_model(run)
    with torch.no_grad():
        return np.concatenate([loaded.model(loaded.normalizer(torch.from_numpy(img[None]))).numpy()
                               for img in images])


def test_encoder_matches_the_checkpoint_model(digits_run, digits_test, encoders):
    images, _, _ = digits_test
    ref = torch_reference_u(digits_run, images)
    for name, enc in encoders.items():
        assert enc.backend == name and enc.nbits == 8 and enc.input_shape == (1, 8, 8)
        assert enc.class_names == [str(i) for i in range(10)]
        u, codes = enc.encode(images)
        assert u.dtype == np.float32 and u.shape == (len(images), 8) and codes.dtype == np.uint8
        np.testing.assert_allclose(u, ref, atol=U_TOLERANCE, rtol=0)
        np.testing.assert_array_equal(codes, codes_from_u(u))
        assert (codes == codes_from_u(ref)).all(axis=1).mean() >= 0.999
    assert encoders["torch"].fingerprint == encoders["onnxruntime"].fingerprint


def test_every_kind_of_input_gives_the_same_codes(tmp_path, digits_test, encoders):
    images, _, _ = digits_test
    enc = encoders["onnxruntime"]
    x = images[:12]  # uint8[12, 1, 8, 8]
    want = enc.encode(x)
    paths = []
    for i, img in enumerate(x):
        p = tmp_path / f"{i}.png"
        Image.fromarray(img[0], "L").save(p)
        paths.append(p)
    as_bytes = [p.read_bytes() for p in paths]
    as_pil = [Image.open(io.BytesIO(b)) for b in as_bytes]
    for other in (x.transpose(0, 2, 3, 1), x[:, 0], paths, [str(p) for p in paths], as_bytes, as_pil):
        got = enc.encode(other)
        np.testing.assert_array_equal(got.u, want.u)
    # colour inputs become grey exactly as PIL converts them, whether they come as files or arrays
    rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    files = []
    for i, a in enumerate(rgb):
        files.append(tmp_path / f"rgb{i}.png")
        Image.fromarray(a, "RGB").save(files[-1])
    grey = np.stack([np.asarray(Image.fromarray(a, "RGB").convert("L")) for a in rgb])[:, None]
    np.testing.assert_array_equal(enc.prepare(rgb), grey)
    np.testing.assert_array_equal(enc.prepare(files), grey)
    np.testing.assert_array_equal(enc.encode(rgb).u, enc.encode(grey).u)


def test_resize_policy(tmp_path, encoders):
    enc = encoders["torch"]
    big = np.random.default_rng(1).integers(0, 256, (2, 1, 16, 24), dtype=np.uint8)
    x = enc.prepare(big)
    assert x.shape == (2, 1, 8, 8)
    # the same geometry as a file resized on decode: cover (8x12), then centre-crop to 8x8
    p = tmp_path / "wide.png"
    Image.fromarray(big[0, 0], "L").save(p)
    np.testing.assert_array_equal(enc.prepare([p])[0], x[0])
    strict = Encoder(enc.runtime, enc.info, source=enc.source, resize=False)
    with pytest.raises(InputError, match="24x16 pixels but the model takes 8x8"):
        strict.encode(big)
    with pytest.raises(InputError, match="wide.png is 24x16"):
        strict.encode([p])


def test_bad_images_are_refused_in_one_line(tmp_path, encoders, monkeypatch):
    enc = encoders["torch"]
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    cases = [
        ([text], DataError, "cannot decode image .*notes.png"),
        ([tmp_path / "missing.png"], DataError, "no such image file"),
        ([b"\x89PNG\r\n\x1a\n garbage"], DataError, "cannot decode image <"),
        (np.zeros((2, 4, 8, 8), np.uint8), InputError, "channel axis of 1 or 3"),
        (np.zeros((2, 8, 8, 4), np.float32), InputError, "must be uint8"),
        (np.zeros((8, 8), np.uint8), InputError, "shape"),
        ([], InputError, "no images"),
        (42, InputError, "cannot read images from a int"),
    ]
    for images, error, pattern in cases:
        with pytest.raises(error, match=pattern) as info:
            enc.encode(images)
        assert "\n" not in str(info.value)
    # the pixel limit is read from the header, before decoding (a decompression bomb costs nothing)
    p = tmp_path / "large.png"
    Image.fromarray(np.zeros((40, 40), np.uint8), "L").save(p)
    with pytest.raises(InputError, match="1,600 pixels, over the limit of 1,000"):
        Encoder(enc.runtime, enc.info, source=enc.source, max_pixels=1000).encode([p])
    monkeypatch.setenv("DSH_MAX_PIXELS", "1599")  # the setting's default comes from the environment
    with pytest.raises(InputError, match="over the limit of 1,599"):
        Encoder(enc.runtime, enc.info, source=enc.source).encode([p])
    assert Encoder(enc.runtime, enc.info, source=enc.source, max_pixels=1600).encode([p]).u.shape == (1, 8)


def test_exports_make_the_same_codes(digits_run, digits_test, exported, encoders):
    images, _, _ = digits_test
    onnx_path, st_path = exported / "model.onnx", exported / "model.safetensors"
    assert not list(exported.glob("*.data")), "the ONNX file must be self-contained"
    ref = encoders["torch"].encode(images)
    for enc in (Encoder.from_file(onnx_path), Encoder.from_file(st_path, backend="torch"),
                Encoder.from_file(st_path)):
        got = enc.encode(images)
        np.testing.assert_allclose(got.u, ref.u, atol=U_TOLERANCE, rtol=0)
        assert (got.codes == ref.codes).all(axis=1).mean() >= 0.999
        assert enc.fingerprint == encoders["torch"].fingerprint and enc.class_names == encoders["torch"].class_names
    # dynamic batch: 1 and 37 images through the same ONNX file
    onnx_enc = Encoder.from_file(onnx_path, batch_size=37)
    np.testing.assert_allclose(onnx_enc.encode(images[:1]).u, ref.u[:1], atol=U_TOLERANCE, rtol=0)
    np.testing.assert_allclose(onnx_enc.encode(images[:74]).u, ref.u[:74], atol=U_TOLERANCE, rtol=0)
    # what a consumer needs is in the ONNX metadata
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    info = json.loads(meta["dsh"])
    assert info["nbits"] == 8 and info["input_shape"] == [1, 8, 8] and info["input"]["layout"] == "NCHW"
    assert info["class_names"] == [str(i) for i in range(10)] and "packbits" in info["code_convention"]
    assert info["dsh_version"]
    # the safetensors file loads without pickle: its header is JSON
    header_len = int.from_bytes(st_path.read_bytes()[:8], "little")
    header = json.loads(st_path.read_bytes()[8 : 8 + header_len])
    assert json.loads(header["__metadata__"]["dsh"])["nbits"] == 8


def test_model_files_that_are_not_dsh_models(tmp_path, exported):
    import onnx
    import torch

    from dsh.runtime.export import sealed_onnx, sealed_safetensors

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(ModelFileError, match="garbage.onnx: not a dsh model file"):
        Encoder.from_file(garbage)
    # a valid ONNX model that is not a dsh model: no dsh metadata
    plain = tmp_path / "plain.onnx"
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter, as dsh.runtime.export uses it
        torch.onnx.export(torch.nn.Flatten(), (torch.zeros(1, 1, 2, 2),), plain, dynamo=False)
    with pytest.raises(ModelFileError, match="plain.onnx: not a dsh model"):
        Encoder.from_file(plain)
    # an ONNX graph whose input does not match what its metadata says
    proto = onnx.load(str(exported / "model.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == "dsh")
    info = json.loads(entry.value)
    info["input_shape"] = [3, 32, 32]
    entry.value = json.dumps(info)
    other = tmp_path / "other-shape.onnx"
    other.write_bytes(sealed_onnx(proto))  # sealed again, so the graph check is what refuses it
    with pytest.raises(ModelFileError, match=r"other-shape.onnx: its input is tensor\(uint8\)"):
        Encoder.from_file(other)
    # a safetensors file whose weights were altered no longer matches its fingerprint
    from safetensors.torch import load_file, save_file

    st = exported / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(st))
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(tmp_path / "altered.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="altered.safetensors: checksum mismatch"):
        Encoder.from_file(tmp_path / "altered.safetensors")
    # and sealed again (as a crafted file would be), it still does not match its fingerprint
    (tmp_path / "resealed.safetensors").write_bytes(sealed_safetensors(tensors, meta))
    with pytest.raises(ModelFileError, match="do not match the fingerprint"):
        Encoder.from_file(tmp_path / "resealed.safetensors")
    with pytest.raises(InputError, match="runs on onnxruntime, not torch"):
        Encoder.from_file(exported / "model.onnx", backend="torch")


def test_torch_free_encoding(tmp_path, exported):
    """With torch unimportable, an ONNX model encodes files from the API and the command line."""
    folder = tmp_path / "imgs"
    write_digit_folder(folder, 40)
    out = tmp_path / "codes.npz"
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
sys.modules["torchvision"] = None
from dsh.runtime.encoder import Encoder
from dsh.cli import main
enc = Encoder.from_file({str(exported / "model.onnx")!r})
u, codes = enc.encode(sorted(__import__("glob").glob({str(folder)!r} + "/*/*.png")))
assert u.shape == (40, 8), u.shape
rc = main(["encode", "--model", {str(exported / "model.onnx")!r}, "--images", {str(folder)!r}, "--out",
           {str(out)!r}, "--quiet", "--keep-u"])
assert rc == 0, rc
assert sys.modules["torch"] is None
print("ok", enc.backend)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "ok onnxruntime"
    from dsh.codes.codefile import load_codes

    cf = load_codes(out)
    ref = Encoder.from_file(exported / "model.onnx").encode([folder / p for p in cf.paths])
    np.testing.assert_array_equal(cf.codes, ref.codes)
    np.testing.assert_array_equal(cf.labels, [int(Path(p).parts[0]) for p in cf.paths])


def test_streaming_folder_encode_and_resume(tmp_path, exported, digits_test, monkeypatch):
    from dsh.codes.codefile import load_codes
    from dsh.runtime.folder_encode import encode_folder, parts_dir

    names = digits_test[2]
    folder = tmp_path / "imgs"
    write_digit_folder(folder, 90)
    enc = Encoder.from_file(exported / "model.onnx", batch_size=16, workers=2)
    whole = tmp_path / "whole.npz"
    done = encode_folder(enc, folder, whole, keep_u=True, part_size=25)
    assert done.count == 90 and not parts_dir(whole).exists()
    cf = load_codes(whole)
    ref = enc.encode([folder / p for p in cf.paths])
    np.testing.assert_array_equal(cf.codes, ref.codes)
    np.testing.assert_array_equal(cf.u, ref.u)
    assert list(cf.paths) == sorted(cf.paths) and list(cf.class_names) == names

    # interrupted after two of four parts: the finished parts stay on disk, and --resume encodes only the rest
    out = tmp_path / "resumed.npz"
    real, calls = enc.iter_encode_files, []

    def dies_on_third_part(paths, **kw):
        calls.append(len(paths))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(paths, **kw)

    monkeypatch.setattr(enc, "iter_encode_files", dies_on_third_part)
    with pytest.raises(KeyboardInterrupt):
        encode_folder(enc, folder, out, keep_u=True, part_size=25)
    assert sorted(p.name for p in parts_dir(out).glob("part-*.npz")) == ["part-000000.npz", "part-000001.npz"]
    with pytest.raises(DataError, match="--resume"):
        encode_folder(enc, folder, out, keep_u=True, part_size=25)
    calls.clear()
    monkeypatch.setattr(enc, "iter_encode_files", lambda paths, **kw: calls.append(len(paths)) or real(paths, **kw))
    done = encode_folder(enc, folder, out, keep_u=True, part_size=25, resume=True)
    assert done.resumed_parts == 2 and calls == [25, 15]
    again = load_codes(out)
    np.testing.assert_array_equal(again.codes, cf.codes)
    np.testing.assert_array_equal(again.u, cf.u)
    np.testing.assert_array_equal(again.paths, cf.paths)
    # parts of another model or folder are not mixed in
    monkeypatch.setattr(enc, "iter_encode_files", dies_on_third_part)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        encode_folder(enc, folder, out, part_size=25)
    next(folder.rglob("*.png")).unlink()
    with pytest.raises(DataError, match="other files, another model"):
        encode_folder(enc, folder, out, part_size=25, resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "cifar10-jpeg"])
def test_onnx_equals_torch_on_real_images(dataset, shared_data, tmp_path):
    """On real test images, the ONNX export makes the codes of the torch model: >= 99.9% identical, u within 1e-4.

    The weights are freshly initialised (a trained run is the benchmark's job, benchmarks/speed/encode_throughput.py):
    untrained outputs sit closer to 0, where a sign flip from rounding is likelier, so this is the harsher case."""
    import torch

    from dsh.models import Normalizer
    from dsh.models.checkpoint import save_checkpoint
    from dsh.models.registry import create_model
    from dsh.runtime.export import export_model
    from dsh.utils.imageio import ImageList

    torch.manual_seed(0)
    if dataset == "mnist":
        from dsh.data import load_split

        images = load_split("mnist", "test", data_root=shared_data, download=False).images[:2000].numpy()
        model, shape = create_model("paper", 12, in_channels=1, image_size=28), [1, 28, 28]
    else:
        listing = ImageList(shared_data / "cifar10-jpeg" / "test")
        images = listing.full_paths()[::5]  # 2,000 JPEG files across all classes, decoded by the encoder
        model, shape = create_model("paper-bn", 48, in_channels=3, image_size=32), [3, 32, 32]
    model.eval()
    normalizer = Normalizer([0.45] * shape[0], [0.25] * shape[0])
    save_checkpoint(tmp_path / "best.pt", {
        "model_config": dict(model.config), "nbits": model.config["nbits"], "input_shape": shape,
        "normalizer": normalizer.to_dict(), "class_names": [str(i) for i in range(10)], "config": {},
        "epoch": 0, "state_dict": model.state_dict()})
    export_model(tmp_path, tmp_path / "m.onnx")
    ref = Encoder.from_run(tmp_path, backend="torch").encode(images)
    got = Encoder.from_file(tmp_path / "m.onnx").encode(images)
    assert len(got.u) == 2000
    assert float(np.abs(got.u - ref.u).max()) <= U_TOLERANCE
    assert (got.codes == ref.codes).all(axis=1).mean() >= 0.999


def test_sharded_encoding_reads_back_as_one_file(tmp_path, exported, capsys):
    """Shards written by separate processes (--shard I/N, or torchrun's RANK/WORLD_SIZE) read as the one file a
    single process writes: by dsh eval and dsh index alike."""
    from dsh.cli import main
    from dsh.codes.codefile import load_codes
    from dsh.errors import DataError

    folder = tmp_path / "imgs"
    write_digit_folder(folder, 50)
    model = str(exported / "model.onnx")
    whole, sharded = tmp_path / "whole.npz", tmp_path / "sharded.npz"
    assert main(["encode", "--model", model, "--images", str(folder), "--out", str(whole), "--quiet"]) == 0
    for rank in range(3):
        assert main(["encode", "--model", model, "--images", str(folder), "--out", str(sharded), "--shard",
                     f"{rank}/3", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.glob("sharded*")) == [f"sharded-0000{r}-of-00003.npz" for r in range(3)]
    a, b = load_codes(whole), load_codes(sharded)
    for field in ("codes", "labels", "paths"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert [len(load_codes(p)) for p in sorted(tmp_path.glob("sharded-*"))] == [17, 17, 16]
    capsys.readouterr()
    assert main(["eval", "--query", str(whole), "--database", str(sharded), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_database"] == 50
    assert main(["index", "--codes", str(sharded), "--out", str(tmp_path / "db.dshidx")]) == 0
    # an incomplete set is refused in one line
    (tmp_path / "sharded-00001-of-00003.npz").unlink()
    with pytest.raises(DataError, match="shard 1 of 3 is missing"):
        load_codes(sharded)
    with pytest.raises(InputError, match="--shard must be I/N"):
        from dsh.codes.shards import parse_shard

        parse_shard("3/3")


@pytest.mark.slow
def test_torchrun_launch_encodes_disjoint_shards(tmp_path, exported):
    """The same torchrun launch as training: each rank encodes its own shard (no collective is needed)."""
    from dsh.codes.codefile import load_codes

    folder = tmp_path / "imgs"
    write_digit_folder(folder, 30)
    out = tmp_path / "codes.npz"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                        "127.0.0.1", "--master-port", str(port), "-m", "dsh", "encode", "--model",
                        str(exported / "model.onnx"), "--images", str(folder), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("codes-*")) == ["codes-00000-of-00002.npz", "codes-00001-of-00002.npz"]
    joined = load_codes(out)
    ref = Encoder.from_file(exported / "model.onnx").encode([folder / p for p in joined.paths])
    np.testing.assert_array_equal(joined.codes, ref.codes)
    assert len(joined) == 30 and list(joined.paths) == sorted(joined.paths)

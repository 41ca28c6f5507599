"""Flip test-time augmentation: the Encoder's option on every encode path and runtime, and the ONNX export that
folds it into the graph (recorded in the model's JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dsh.errors import InputError
from dsh.models.modelinfo import tta_flip_fingerprint
from dsh.runtime.encoder import Encoder

U_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images():
    from dsh.data import load_split

    return load_split("digits", "test").images.numpy()[:40]  # uint8[40, 1, 8, 8]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_tta_is_the_mean_of_the_image_and_its_mirror(digits_run, images, backend):
    plain = Encoder.from_run(digits_run, backend=backend)
    tta = Encoder.from_run(digits_run, backend=backend, tta_flip=True, batch_size=16)  # several batches
    assert tta.tta_flip and not plain.tta_flip and "tta_flip=True" in repr(tta)
    a = plain.encode_array(images).u
    b = plain.encode_array(np.ascontiguousarray(images[..., ::-1])).u
    assert np.abs(a - b).max() > 1e-3  # a mirrored digit is another input: the test can fail
    want = (a + b) * np.float32(0.5)
    u, codes = tta.encode_array(images)
    np.testing.assert_allclose(u, want, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(tta.encode(images).u, u)  # encode() goes the same way
    assert tta.fingerprint == tta_flip_fingerprint(plain.fingerprint) != plain.fingerprint


def test_tta_on_streamed_files(digits_run, images, tmp_path):
    tta = Encoder.from_run(digits_run, backend="torch", tta_flip=True, batch_size=8, workers=1)
    paths = []
    for i, img in enumerate(images[:20]):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(img[0], "L").save(paths[-1])
    got = np.concatenate([e.u for _, e in tta.iter_encode_files(paths)])
    np.testing.assert_allclose(got, tta.encode_array(images[:20]).u, atol=1e-6, rtol=0)


def test_onnx_export_with_tta(digits_run, images, tmp_path):
    from dsh.runtime.export import export_model

    info = export_model(digits_run, tmp_path / "tta.onnx", tta_flip=True)
    assert info.tta_flip
    from_file = Encoder.from_file(tmp_path / "tta.onnx")
    assert from_file.tta_flip and from_file.info.tta_flip  # read back from the file's JSON
    torch_tta = Encoder.from_run(digits_run, backend="torch", tta_flip=True)
    np.testing.assert_allclose(from_file.encode_array(images).u, torch_tta.encode_array(images).u,
                               atol=U_TOLERANCE, rtol=0)
    assert from_file.fingerprint == torch_tta.fingerprint == info.fingerprint  # same codes, same fingerprint
    # asking for TTA again does not flip twice; asking to turn it off is refused in one line
    np.testing.assert_array_equal(Encoder.from_file(tmp_path / "tta.onnx", tta_flip=True).encode_array(images).u,
                                  from_file.encode_array(images).u)
    with pytest.raises(InputError, match="cannot be turned off") as err:
        Encoder.from_file(tmp_path / "tta.onnx", tta_flip=False)
    assert "\n" not in str(err.value)

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "tta.onnx")).metadata_props}
    assert json.loads(meta["dsh"])["tta_flip"] is True
    export_model(digits_run, tmp_path / "plain.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "plain.onnx")).metadata_props}
    assert json.loads(meta["dsh"])["tta_flip"] is False
    with pytest.raises(InputError, match="ONNX graphs only"):
        export_model(digits_run, tmp_path / "w.safetensors", tta_flip=True)


@pytest.mark.parametrize("widths", [(8, 16, 16), None])
def test_airbench_onnx_and_torch_agree_with_and_without_tta(tmp_path, widths):
    """The airbench network through a checkpoint (as tests/test_checkpoint.py writes one): ONNX and torch agree."""
    import torch
    from test_checkpoint import payload_for

    from dsh.models import Normalizer
    from dsh.models.checkpoint import BEST, save_checkpoint
    from dsh.models.registry import create_model

    torch.manual_seed(0)
    kwargs = {} if widths is None else {"widths": widths}
    model = create_model("airbench", 16, in_channels=1, image_size=28, **kwargs)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    normalizer = Normalizer.fit(x)
    model.init_whitening(x, normalizer)
    model.train()(normalizer(x))  # move the BN statistics off their defaults
    save_checkpoint(tmp_path / BEST, payload_for(model.eval(), normalizer))
    images = x[:10].numpy()
    for tta in (False, True):
        t = Encoder.from_run(tmp_path, backend="torch", tta_flip=tta).encode_array(images).u
        o = Encoder.from_run(tmp_path, backend="onnxruntime", tta_flip=tta).encode_array(images).u
        np.testing.assert_allclose(o, t, atol=U_TOLERANCE, rtol=0)
    from dsh.runtime.export import export_model

    export_model(tmp_path, tmp_path / "m.onnx", tta_flip=True)
    np.testing.assert_allclose(Encoder.from_file(tmp_path / "m.onnx").encode_array(images).u, t, atol=U_TOLERANCE,
                               rtol=0)


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    """A short digits run trained with the ``tta_flip`` setting: validation chose its best epoch on TTA codes."""
    from dsh.config import TrainConfig
    from dsh.train.loop import train

    out = tmp_path_factory.mktemp("tta-run") / "run"
    train(TrainConfig(dataset="digits", nbits=8, epochs=2, batch_size=64, tensorboard=False, tta_flip=True), out,
          progress=False, log=lambda m: None)
    return out


def test_a_run_trained_with_tta_encodes_with_it_by_default(tta_run, images, tmp_path):
    from dsh.runtime.export import export_model

    default = Encoder.from_run(tta_run, backend="torch")
    plain = Encoder.from_run(tta_run, backend="torch", tta_flip=False)  # a plain model can still be asked for
    assert default.tta_flip and not plain.tta_flip
    mirrored = plain.encode_array(images[..., ::-1].copy()).u
    np.testing.assert_allclose(default.encode_array(images).u, (plain.encode_array(images).u + mirrored) / 2,
                               atol=1e-6, rtol=0)
    assert default.fingerprint == tta_flip_fingerprint(plain.fingerprint)
    # the ONNX export folds it into the graph unless told not to; a safetensors file's encoder applies it
    info = export_model(tta_run, tmp_path / "m.onnx")
    assert info.tta_flip and info.fingerprint == default.fingerprint
    np.testing.assert_allclose(Encoder.from_file(tmp_path / "m.onnx").encode_array(images).u,
                               default.encode_array(images).u, atol=U_TOLERANCE, rtol=0)
    assert not export_model(tta_run, tmp_path / "plain.onnx", tta_flip=False).tta_flip
    export_model(tta_run, tmp_path / "w.safetensors")
    assert Encoder.from_file(tmp_path / "w.safetensors", backend="torch").fingerprint == default.fingerprint


def test_validation_with_tta_scores_the_mean_codes(tta_run):
    """The setting reaches validation: the recorded best val mAP is that of TTA codes, not the plain model's."""
    import torch

    from dsh.codes.bits import codes_from_u
    from dsh.data.splits import load_parts
    from dsh.eval.metrics import mean_average_precision
    from dsh.models.checkpoint import load_model
    from dsh.train.loop import validation_map

    loaded = load_model(tta_run / "best.pt")
    model = loaded.model.to(memory_format=torch.channels_last)  # as it was trained (channels_last)
    (val,) = load_parts("digits", ("val",), seed=0)
    got, u = validation_map(model, val.images, val.labels, loaded.normalizer, "cpu", channels_last=True,
                            tta_flip=True)
    with torch.no_grad():
        x = loaded.normalizer(val.images)
        mean = ((model.eval()(x) + model(torch.flip(x, dims=(3,)))) / 2).numpy()
    np.testing.assert_allclose(u, mean, atol=1e-5, rtol=0)  # validation scored the mean of image and mirror
    labels = val.labels.numpy()
    order = np.random.default_rng(0).permutation(len(labels))  # validation_map's two halves
    q, db = order[: len(order) // 2], order[len(order) // 2 :]
    codes = codes_from_u(u)
    assert got == pytest.approx(mean_average_precision(codes[q], codes[db], labels[q], labels[db], nbits=8), abs=1e-9)
    # the figure training recorded for its best epoch is this one (a u within 1e-6 of 0 could flip one bit)
    summary = json.loads((tta_run / "summary.json").read_text())
    assert got == pytest.approx(summary["best_val_map"], abs=5e-3)


def test_cli_tta_flag_overrides_the_run(tta_run, tmp_path):
    from dsh.cli import main

    assert main(["export", "--run", str(tta_run), "--out", str(tmp_path / "p.onnx"), "--no-tta-flip"]) == 0
    assert not Encoder.from_file(tmp_path / "p.onnx", tta_flip=False).tta_flip
    assert main(["encode", "--run", str(tta_run), "--out", str(tmp_path / "a.npz"), "--quiet", "--backend",
                 "torch"]) == 0
    assert main(["encode", "--run", str(tta_run), "--out", str(tmp_path / "b.npz"), "--quiet", "--backend",
                 "torch", "--no-tta-flip"]) == 0
    from dsh.codes.codefile import load_codes

    a, b = load_codes(tmp_path / "a.npz"), load_codes(tmp_path / "b.npz")
    expected_a = Encoder.from_run(tta_run, backend="torch")
    expected_b = Encoder.from_run(tta_run, backend="torch", tta_flip=False)
    from dsh.data.splits import load_part

    test = load_part("digits", "test", seed=0).images.numpy()
    np.testing.assert_array_equal(a.codes, expected_a.encode_array(test).codes)
    np.testing.assert_array_equal(b.codes, expected_b.encode_array(test).codes)

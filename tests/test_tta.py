"""Flip test-time augmentation: the Encoder's option on every encode path and runtime, and the ONNX export that
folds it into the graph (recorded in the model's JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dsh.encoder import Encoder
from dsh.errors import InputError
from dsh.modelinfo import tta_flip_fingerprint

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
    from dsh.export import export_model

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

    from dsh.checkpoint import BEST, save_checkpoint
    from dsh.data import Normalizer
    from dsh.models import create_model

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
    from dsh.export import export_model

    export_model(tmp_path, tmp_path / "m.onnx", tta_flip=True)
    np.testing.assert_allclose(Encoder.from_file(tmp_path / "m.onnx").encode_array(images).u, t, atol=U_TOLERANCE,
                               rtol=0)

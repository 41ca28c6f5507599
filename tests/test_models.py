"""The model registry; one contract test runs over every registered model, so a new model is tested for free."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from dsh.models import registry as models
from dsh.models.registry import create_model, list_models, register_model

# (in_channels, image_size): 8x8 digits, 28x28 MNIST, 32x32 CIFAR. resnet50 is the slow one and shares its code
# with resnet18, so it runs on 8x8 images only; checks that do not depend on the input size use SMALL.
INPUTS = [(1, 8), (1, 28), (3, 32)]
SMALL = (3, 8)
CONTRACT = [(name, c, s) for name in list_models() for c, s in (INPUTS if name != "resnet50" else [(1, 8), (3, 8)])]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Batches of 2-4 tiny images gain nothing from a second thread, and on shared cores two OpenMP threads waiting
    # on each other made this file several times slower under load.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name,in_channels,image_size", CONTRACT)
def test_contract(name, in_channels, image_size):
    model = create_model(name, nbits=12, in_channels=in_channels, image_size=image_size).train()
    x = torch.randn(3, in_channels, image_size, image_size)  # batch >= 2 so that BN works in train mode
    u = model(x)  # (B, nbits)
    assert u.shape == (3, 12) and u.dtype == torch.float32
    assert torch.isfinite(u).all()
    assert 0 < u.abs().mean() < 1, "the hash layer should start small but not at zero"

    (u * torch.randn_like(u)).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("nbits", [1, 12, 64])
@pytest.mark.parametrize("name", list_models())
def test_output_width(name, nbits):
    c, s = SMALL
    u = create_model(name, nbits, c, s).eval()(torch.randn(2, c, s, s))
    assert u.shape == (2, nbits)


@pytest.mark.parametrize("name", list_models())
def test_channels_last(name):
    c, s = SMALL if name == "resnet50" else (3, 32)
    model = create_model(name, 16, c, s).eval()
    x = torch.randn(4, c, s, s)
    expected = model(x)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    u = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(u, expected, rtol=1e-4, atol=1e-5)
    cl.train()(x.contiguous(memory_format=torch.channels_last)).sum().backward()


@pytest.mark.parametrize("name", list_models())
def test_rebuild_from_config(name):
    c, s = SMALL
    model = create_model(name, 12, c, s).eval()
    assert model.config == {"name": name, "nbits": 12, "in_channels": c, "image_size": s}
    again = create_model(**model.config).eval()
    state = model.state_dict()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in state.items()}
    again.load_state_dict(state)
    x = torch.randn(2, c, s, s)
    torch.testing.assert_close(again(x), model(x))


def test_config_keeps_kwargs():
    model = create_model("resnet-small", 16, 1, 28, widths=(8, 16), blocks=(1, 2))
    assert model.config["widths"] == (8, 16) and model.config["blocks"] == (1, 2)
    assert create_model(**model.config).state_dict().keys() == model.state_dict().keys()
    bn = create_model("paper", 16, 1, 28, batch_norm=True)
    assert bn.config["batch_norm"] is True
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in create_model("paper", 16).modules())


def test_paper_net_layout():
    # Caffe "same" convs and ceil-mode pools: 32 -> 16 -> 8 -> 4 and 28 -> 14 -> 7 -> 3, so fc 500 sees 64 * 4 * 4
    # and 64 * 3 * 3 features.
    assert create_model("paper", 12, 3, 32).fc[0].in_features == 64 * 4 * 4
    assert create_model("paper", 12, 1, 28).fc[0].in_features == 64 * 3 * 3
    assert create_model("paper", 12, 3, 32).hash.in_features == 500


def test_errors():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; choose from: .*paper"):
        create_model("nope", 12)
    for nbits in (0, -3, 2.5):
        with pytest.raises(ValueError, match="nbits"):
            create_model("paper", nbits)


def test_register_model(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @register_model("tiny")
    def tiny(nbits, in_channels, image_size, hidden=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.Linear(hidden, nbits))

    assert "tiny" in list_models()
    model = create_model("tiny", 5, 1, 4, hidden=3)
    assert model(torch.randn(2, 1, 4, 4)).shape == (2, 5)
    assert model.config == {"name": "tiny", "nbits": 5, "in_channels": 1, "image_size": 4, "hidden": 3}
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny")(tiny)


def test_torchvision_small_input_stem():
    model = create_model("resnet18", 12, 1, 32)
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    assert model.backbone.conv1.in_channels == 1
    assert isinstance(model.backbone.maxpool, nn.Identity)
    big = create_model("resnet18", 12, 3, 224)
    assert big.backbone.conv1.kernel_size == (7, 7) and isinstance(big.backbone.maxpool, nn.MaxPool2d)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 state_dict (with its ImageNet ``fc``), as a user would save downloaded weights."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return path, state


def test_weights_path_loads_backbone(resnet18_file):
    path, state = resnet18_file
    model = create_model("resnet18", 12, 3, 224, weights_path=path)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    assert "weights_path" not in model.config  # the checkpoint carries the weights

    # small input: every layer but the replaced 3x3 stem comes from the file
    small = create_model("resnet18", 12, 3, 32, weights_path=path)
    torch.testing.assert_close(small.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert small.backbone.conv1.weight.shape == (64, 3, 3, 3)

    # one channel at full size: the RGB stem is summed over its input channels
    grey = create_model("resnet18", 12, 1, 224, weights_path=path)
    torch.testing.assert_close(grey.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_weights_path_errors(resnet18_file, tmp_path):
    path, _ = resnet18_file
    missing = tmp_path / "missing.pth"
    with pytest.raises(ValueError, match="missing.pth"):
        create_model("resnet18", 12, weights_path=missing)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth") as err:
        create_model("resnet18", 12, weights_path=junk)
    assert "\n" not in str(err.value)

    with pytest.raises(ValueError, match="resnet18.pth.*does not match a torchvision resnet50") as err:
        create_model("resnet50", 12, 3, 32, weights_path=path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["paper", "paper-bn", "resnet-small"])
def test_non_square_images(name):
    model = create_model(name, nbits=10, in_channels=3, image_size=(24, 40)).eval()
    with torch.no_grad():
        u = model(torch.randn(2, 3, 24, 40))
    assert u.shape == (2, 10) and torch.isfinite(u).all()
    assert model.config["image_size"] == [24, 40]
    rebuilt = create_model(**model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert create_model(name, nbits=10, image_size=(32, 32)).config["image_size"] == 32


# --------------------------------------------------------------------------------------------------- airbench


@pytest.mark.parametrize("image_size", [(8, 8), (28, 28), (32, 32), (2, 9)])
def test_airbench_sizes(image_size):
    # a side of 1 pixel is not pooled again, so 8x8 digits and thin images keep a feature map
    model = create_model("airbench", 8, 1, image_size, widths=(4, 8, 8)).eval()
    assert model(torch.randn(2, 1, *image_size)).shape == (2, 8)
    with pytest.raises(ValueError, match="at least 2x2"):
        create_model("airbench", 8, 1, (1, 5))


def test_airbench_config_round_trip():
    model = create_model("airbench", 16, 3, 32, widths=[48, 192, 192])  # a list, as JSON gives it back
    again = create_model(**model.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert again.groups[2][0].out_channels == 192 and again.whiten.out_channels == 24


def test_a_base_width_sets_every_group_and_models_without_one_refuse_it():
    model = create_model("airbench", 8, 3, 32, width=12)  # the recipe's 1:4:4 ratio
    assert [g[0].out_channels for g in model.groups] == [12, 48, 48]
    again = create_model(**model.config)  # the checkpoint's record rebuilds the same network
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="model 'paper' has no setting width"):
        create_model("paper", 8, 1, 28, width=12)


def test_training_builds_the_width_it_is_given(tmp_path):
    from dsh.config import TrainConfig
    from dsh.models.checkpoint import load_model
    from dsh.train.loop import train

    train(TrainConfig(dataset="digits", model="airbench", width=4, nbits=8, epochs=1, batch_size=64,
                      tensorboard=False), tmp_path, progress=False, log=lambda m: None)
    model = load_model(tmp_path / "best.pt").model
    assert [g[0].out_channels for g in model.groups] == [4, 16, 16]


def test_a_width_for_a_model_without_one_is_refused_by_its_flag_before_any_data_is_read(tmp_path, capsys):
    from dsh.cli import main
    from dsh.models.registry import model_settings

    assert model_settings("airbench") == ("widths", "width") and model_settings("paper") == ("batch_norm",)
    # a dataset folder that does not exist: the settings are refused before it is looked for
    args = ["train", "--dataset", "list", "--data-root", str(tmp_path / "absent"), "--model", "paper",
            "--width", "12", "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dsh: error: width (--width) is not a setting of model 'paper'; models with it: airbench"]
    assert not (tmp_path / "run").exists()  # nothing written either


def test_airbench_whitening_init_whitens_patches():
    from dsh.models import Normalizer

    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (300, 3, 12, 12), generator=g).float()
    images = ((base + base.roll(1, 3) + base.roll(1, 1)) / 3).round().to(torch.uint8)  # correlated pixels
    normalizer = Normalizer.fit(images)
    model = create_model("airbench", 8, 3, 12, widths=(4, 8, 8)).to(memory_format=torch.channels_last)
    model.init_whitening(images, normalizer, eps=0.0)
    assert model.whiten.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        z = model.whiten(normalizer(images))  # (N, 24, 11, 11)
    rows = z.permute(0, 2, 3, 1).reshape(-1, 24).double()
    half = rows[:, :12]
    torch.testing.assert_close(torch.cov(half.T), torch.eye(12, dtype=torch.double), atol=1e-4, rtol=0)
    torch.testing.assert_close(half.mean(0), torch.zeros(12, dtype=torch.double), atol=1e-4, rtol=0)
    torch.testing.assert_close(rows[:, 12:], -half)  # each direction with both signs
    with pytest.raises(ValueError, match="init_whitening needs"):
        model.init_whitening(images[:, :1], normalizer)


def test_airbench_optimizer_groups():
    model = create_model("airbench", 8, 1, 28, widths=(4, 8, 8))
    groups = model.optimizer_groups(0.1, 5e-4, bias_lr_scale=8.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # a partition of the parameters
    by_name = {g["name"]: g for g in groups}
    assert by_name["biases"]["lr"] == pytest.approx(0.8) and by_name["biases"]["weight_decay"] == 0
    assert by_name["whitening"]["lr"] == 0 and by_name["weights"]["weight_decay"] == 5e-4
    assert all(p.ndim == 1 for g in groups if g["name"] != "weights" and g["name"] != "whitening"
               for p in g["params"])
    torch.optim.SGD([{k: v for k, v in g.items() if k != "name"} for g in groups], lr=0.1, momentum=0.9)


def test_a_registered_model_and_protocol_appear_in_every_help_and_choice_without_another_edit(monkeypatch):
    from pathlib import Path

    import dsh.data.protocols as protocols
    from dsh.cli import build_parser
    from dsh.config import TrainConfig

    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    monkeypatch.setattr(protocols, "PROTOCOLS", dict(protocols.PROTOCOLS))
    register_model("tinynet")(lambda nbits, in_channels, image_size: nn.Linear(1, nbits))
    protocols.register_protocol(protocols.Protocol("tinysplit", "a test's own split", "split"))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from reproduce import paper_cifar10

    def choices_of_flag(parser, flag):
        return next(a.choices for a in parser._actions if flag in a.option_strings)

    cli = build_parser()
    subcommands = next(a for a in cli._actions if a.choices and "train" in a.choices).choices
    for sub, flag, name in (("train", "--model", "tinynet"), ("train", "--protocol", "tinysplit"),
                            ("eval", "--protocol", "tinysplit"), ("encode", "--protocol", "tinysplit")):
        choices = choices_of_flag(subcommands[sub], flag)  # train's are checked by TrainConfig, named in the help
        assert (choices is None or name in choices) and name in subcommands[sub].format_help(), (sub, flag)
    bench = paper_cifar10.build_parser()
    assert "tinynet" in choices_of_flag(bench, "--model") and "tinysplit" in choices_of_flag(bench, "--protocol")
    TrainConfig(model="tinynet", protocol="tinysplit").validate()  # and the config accepts them


def test_the_names_the_help_lists_without_torch_are_the_registry_s():
    """``dsh --help`` and the config checks read the model names from dsh.models.names, without importing the
    registry: a model registered here and not named there would be missing from them."""
    from dsh.config import choices_of
    from dsh.models.names import MODEL_NAMES

    assert list(MODEL_NAMES) == list_models()
    assert list(choices_of("model")) == list_models()  # the registry's own names, once it is loaded

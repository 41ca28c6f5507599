"""Settings: defaults < preset < config file < flags, and every preset names things that exist."""

import json

import pytest

from dsh.config import PRESETS, resolve_config
from dsh.errors import ConfigError, DataError
from dsh.models.registry import list_models


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    cfg = resolve_config({"dataset": "mnist"}, preset=name)
    assert cfg.model in list_models()
    for key, value in PRESETS[name].items():
        assert getattr(cfg, key) == value


def test_precedence_and_errors(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"lr": 0.5, "epochs": 3, "bits": 16}))
    cfg = resolve_config({"epochs": 7, "lr": None}, config_file=f, preset="cifar10-cpu")
    assert (cfg.lr, cfg.epochs, cfg.nbits, cfg.model) == (0.5, 7, 16, "airbench")  # flag > file > preset
    y = tmp_path / "c.yaml"
    y.write_text("optimizer: sgd\nmomentum: 0.8\n")
    assert resolve_config(config_file=y).optimizer == "sgd"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: cannot parse"):
        resolve_config(config_file=tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_config(config_file=tmp_path / "typo.json")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config(preset="nope")
    with pytest.raises(ConfigError, match="eval_every"):
        resolve_config({"eval_every": 0})


@pytest.mark.parametrize("settings, needle", [
    ({"tensorboard": "false"}, "tensorboard (--tensorboard) must be bool"),
    ({"epochs": "1"}, "epochs (--epochs) must be int"),
    ({"epochs": 2.5}, "epochs (--epochs) must be int"),
    ({"nbits": True}, "nbits (--nbits) must be int"),
    ({"nbits": [8]}, "nbits (--nbits) must be int"),
    ({"nbits": 10_000_000}, "between 1 and 4096"),
    ({"lr": float("nan")}, "lr (--lr) must be a finite number > 0"),
    ({"lr": "0.1"}, "lr (--lr) must be float"),
    ({"alpha": -0.5}, "alpha (--alpha) must be a finite number >= 0"),
    ({"margin": -1.0}, "margin (--margin)"),
    ({"crop_padding": -2}, "crop_padding (--crop-padding) must be >= 0"),
    ({"threads": -2}, "threads (--threads) must be >= 1"),
    ({"threads": 0}, "threads (--threads) must be >= 1"),
    ({"momentum": 1.5}, "momentum"),
    ({"val_size": -3}, "val_size"),
    ({"model": 3}, "model (--model) must be str"),
    ({"width": 0}, "width (--width) must be between 1 and 4096"),
    ({"tta_flip": "yes"}, "tta_flip (--tta-flip) must be bool"),
])
def test_every_setting_is_checked_by_type_and_range(settings, needle):
    from dsh.config import TrainConfig

    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(settings).validate()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_valid_values_of_every_kind_pass():
    from dsh.config import TrainConfig

    cfg = TrainConfig.from_dict({"val_size": 0.1, "margin": 16, "threads": 2, "crop_padding": 0, "lr": 1,
                                 "tensorboard": False}).validate()
    assert cfg.margin == 16 and cfg.lr == 1


def test_settings_from_text_types_and_errors():
    """One reading of settings from text (dsh train's flags, the benchmarks' --set, aliases from one table)."""
    from dsh.config import parse_assignments, parse_value

    got = parse_assignments(["lr=0.01", "sampler=balanced", "flip=false", "crop_padding=none", "val_size=0.1",
                             "epochs=3", "bits=16", "batch-size=64"])
    assert got == {"lr": 0.01, "sampler": "balanced", "flip": False, "crop_padding": None, "val_size": 0.1,
                   "epochs": 3, "nbits": 16, "batch_size": 64}
    assert isinstance(parse_assignments(["val_size=500"])["val_size"], int)
    assert parse_value("tta_flip", "yes") is True and parse_value("width", "none") is None
    with pytest.raises(ConfigError, match="unknown setting"):
        parse_assignments(["no_such_thing=1"])
    with pytest.raises(ConfigError, match=r"--set epochs=many: epochs \(--epochs\) must be int"):
        parse_assignments(["epochs=many"])
    with pytest.raises(ConfigError, match="sets dataset itself"):
        parse_assignments(["dataset=mnist"], reserved=("dataset",))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignments(["lr"])


def test_the_command_line_reads_settings_as_the_config_module_does(capsys):
    """dsh train's flags come from the TrainConfig fields: every field has a flag with its help, the alias table's
    names work, and a bad value is one line naming the setting."""
    import dataclasses

    from dsh.cli import build_parser, main
    from dsh.config import ALIASES, TrainConfig, choices_of, help_of

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    for f in dataclasses.fields(TrainConfig):
        action = by_dest[f.name]
        assert help_of(f.name) in action.help
        if choices_of(f.name):
            assert ", ".join(choices_of(f.name)) in action.help
    for alias, name in ALIASES.items():
        assert "--" + alias in by_dest[name].option_strings
    args = train.parse_args(["--out", "x", "--bits", "16", "--val-size", "0.25", "--crop-padding", "none"])
    assert (args.nbits, args.val_size, args.crop_padding) == (16, 0.25, None)
    assert main(["train", "--out", "x", "--epochs", "many"]) == 2
    err = capsys.readouterr().err
    assert "epochs (--epochs) must be int" in err and err.count("\n") == 1

"""Settings: defaults < preset < config file < flags, and every preset names things that exist."""

import json

import pytest

from dsh.config import PRESETS, resolve_config
from dsh.errors import ConfigError, DataError
from dsh.models import list_models


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
    assert (cfg.lr, cfg.epochs, cfg.nbits, cfg.model) == (0.5, 7, 16, "paper-bn")  # flag > file > preset
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

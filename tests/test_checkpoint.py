"""A checkpoint carries everything needed to rebuild the model and feed it; bad files are refused in one line."""

import pytest
import torch

from dsh.errors import DataError, ModelFileError
from dsh.models import Normalizer
from dsh.models.checkpoint import BEST, load_model, read_checkpoint, save_checkpoint
from dsh.models.registry import create_model


def payload_for(model, normalizer):
    return {
        "model_config": dict(model.config),
        "nbits": model.config["nbits"],
        "input_shape": [1, 28, 28],
        "normalizer": normalizer.to_dict(),
        "class_names": [str(i) for i in range(10)],
        "config": {"dataset": "mnist"},
        "epoch": 3,
        "state_dict": model.state_dict(),
    }


@pytest.mark.parametrize("name", ["paper", "resnet-small"])
def test_round_trip_gives_the_same_outputs(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, 12, in_channels=1, image_size=28).eval()
    normalizer = Normalizer([0.13], [0.31])
    save_checkpoint(tmp_path / BEST, payload_for(model, normalizer))
    loaded = load_model(tmp_path)  # a run folder resolves to its best.pt
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(normalizer(images))
        got = loaded.model(loaded.normalizer(images))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert loaded.nbits == 12 and loaded.input_shape == (1, 28, 28) and loaded.epoch == 3
    assert loaded.normalizer == normalizer and loaded.class_names[3] == "3"
    assert not loaded.model.training


def test_refuses_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such run folder"):
        read_checkpoint(tmp_path / "nope")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(DataError, match="no checkpoint in this run folder"):
        read_checkpoint(empty)
    truncated = tmp_path / "t.pt"
    model = create_model("paper", 8, in_channels=1, image_size=28)
    save_checkpoint(truncated, payload_for(model, Normalizer([0.1], [0.3])))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(DataError, match="t.pt: not a readable checkpoint"):
        read_checkpoint(truncated)
    lacking = tmp_path / "l.pt"
    save_checkpoint(lacking, {"nbits": 8})
    with pytest.raises(DataError, match="lacks 'model_config'"):
        read_checkpoint(lacking)


class _RunsCodeWhenUnpickled:
    """What a crafted checkpoint carries: unpickling it calls ``Path.touch`` on a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_crafted_checkpoint_is_refused_and_its_code_does_not_run(tmp_path):
    """A checkpoint whose pickle would run code is refused in one line, and the code does not run."""
    model = create_model("paper", 8, in_channels=1, image_size=28)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "best.pt"
    payload = payload_for(model, Normalizer([0.1], [0.3]))
    payload["config"] = {"dataset": "mnist", "hook": _RunsCodeWhenUnpickled(str(marker))}
    save_checkpoint(evil, payload)
    # the payload is live: an unsafe load really runs it (so the assertion below can fail)
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ModelFileError, match="refused") as info:
        load_model(tmp_path)
    assert "best.pt" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists(), "loading the crafted checkpoint ran its code"


def test_cli_refuses_a_crafted_checkpoint(tmp_path, capsys):
    from dsh.cli import main

    model = create_model("paper", 8, in_channels=1, image_size=28)
    marker = tmp_path / "code-ran"
    payload = payload_for(model, Normalizer([0.1], [0.3]))
    payload["normalizer"] = _RunsCodeWhenUnpickled(str(marker))
    save_checkpoint(tmp_path / "run" / "best.pt", payload)
    assert main(["encode", "--run", str(tmp_path / "run"), "--split", "test", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsh: error:") and "refused" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "x.npz").exists()


def test_training_checkpoints_load_safely(tmp_path):
    """What training writes (optimiser, scheduler, RNG state, history) is plain data: weights_only loads it."""
    from dsh.config import TrainConfig
    from dsh.train.loop import train

    train(TrainConfig(dataset="digits", nbits=8, epochs=1, batch_size=64, tensorboard=False), tmp_path / "r",
          progress=False, log=lambda m: None)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(tmp_path / "r" / name, weights_only=True)
        assert ckpt["format"] == "dsh-checkpoint" and "optimizer" in ckpt and "scheduler" in ckpt
    assert load_model(tmp_path / "r").nbits == 8

"""A checkpoint carries everything needed to rebuild the model and feed it; bad files are refused in one line."""

import pytest
import torch

from dsh.checkpoint import BEST, load_model, read_checkpoint, save_checkpoint
from dsh.data import Normalizer
from dsh.fileio import DataError
from dsh.models import create_model


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

"""The images a model's run used, worked out once in the library (dsh.train.model_part) for dsh encode, dsh viz and
any program: the run's dataset with the run's settings unless told otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from dsh.config import TrainConfig
from dsh.data.splits import load_parts
from dsh.errors import DataError
from dsh.runtime.encoder import Encoder
from dsh.train import model_part


def test_model_part_is_the_part_the_run_used(digits_run):
    encoder = Encoder.from_run(digits_run)
    cfg = TrainConfig.of_model(encoder.info, encoder.source)
    for part in ("val", "test"):
        want = load_parts("digits", (part,), **{**cfg.data_options(), "download": False})[0]
        got = model_part(encoder, part, download=False)
        assert len(got) > 0
        np.testing.assert_array_equal(got.images.numpy(), want.images.numpy())
        np.testing.assert_array_equal(got.labels.numpy(), want.labels.numpy())
    # the run has no protocol, so it has no query part, unless one is named
    with pytest.raises(DataError, match="needs a protocol"):
        model_part(encoder, "query", protocol="none")

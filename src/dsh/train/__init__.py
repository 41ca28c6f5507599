"""Training (torch): the DSH loss, the loop that brings a run's data and model together (set up in ``setup``,
optimised by ``optim``, standing where its ``Progress`` says, watched by ``diagnostics``), several processes under
torchrun, a trained run judged the standard way, and the seed experiment end to end.

Names are imported on first use."""

from __future__ import annotations

from ..utils.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "DSHLoss": "loss",
    "Progress": "progress",
    "train": "loop",
    "TrainResult": "loop",
    "launch_train": "launch",
    "encode_and_evaluate": "experiment",
    "model_part": "experiment",
    "run_demo": "demo",
})
__all__ = ["DSHLoss", "Progress", "TrainResult", "encode_and_evaluate", "launch_train", "model_part", "run_demo",
           "train"]

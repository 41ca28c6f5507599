"""Where a run stands (:class:`dsh.train.progress.Progress`) and what a resume restores: every field saved and
restored, and a resumed run standing, field by field and part by part, where an uninterrupted one stands."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import dsh.train.loop as loop
from dsh.config import TrainConfig
from dsh.models.checkpoint import read_checkpoint
from dsh.train.progress import STATEFUL, Progress, load_resume_state, resume_keys, resume_state

# fields that measure time and so differ between any two runs; every other field must be equal
TIMINGS = {"train_seconds"}


def test_every_field_is_saved_restored_and_required():
    state = Progress(epoch=4, best_val_map=0.5, best_epoch=3, history=[{"epoch": 1, "loss_total": 2.0}],
                     train_seconds=12.5, images_seen=640)
    defaults = Progress()
    for f in dataclasses.fields(Progress):  # the values above are no field's default: a lost field would show
        assert getattr(state, f.name) != getattr(defaults, f.name), f.name
    saved = state.state_dict()
    assert set(saved) == {f.name for f in dataclasses.fields(Progress)}
    restored = Progress()
    restored.load_state_dict(saved)
    assert restored == state
    saved["history"][0]["loss_total"] = 9.0  # a copy, both ways
    assert state.history[0]["loss_total"] == 2.0 and restored.history[0]["loss_total"] == 2.0
    assert set(resume_keys()) == {"config", *STATEFUL, *saved}
    for name in saved:  # a checkpoint without one of them is refused, and nothing of it is taken
        partial = Progress()
        with pytest.raises(KeyError, match=name):
            partial.load_state_dict({k: v for k, v in saved.items() if k != name})
        assert partial == Progress()
    with pytest.raises(ValueError):
        Progress().load_state_dict({**saved, "epoch": "four"})


def test_resume_state_and_its_inverse_go_through_every_part():
    class Part:
        def __init__(self, value):
            self.value = value

        def state_dict(self):
            return {"value": self.value}

        def load_state_dict(self, state):
            self.value = state["value"]

    state = Progress(epoch=2, images_seen=10)
    saved = resume_state(state, {"a": Part(1), "b": Part(2)})
    assert saved["a"] == {"value": 1} and saved["b"] == {"value": 2} and saved["epoch"] == 2
    parts, restored = {"a": Part(0), "b": Part(0)}, Progress()
    load_resume_state(restored, parts, saved)
    assert (parts["a"].value, parts["b"].value) == (1, 2) and restored == state


def assert_same(a, b, where: str) -> None:
    """Equal nested content: dicts by key, lists in order, tensors exactly (dtype, shape and values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_a_resumed_run_stands_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    cfg = TrainConfig(dataset="digits", nbits=8, epochs=3, batch_size=64, eval_every=2, tensorboard=False)
    seen: dict[str, list] = {}  # per run: (Progress, the stateful parts' states) after each epoch
    end_epoch = loop.end_epoch

    def recording(run, state, record, log, started):
        end_epoch(run, state, record, log, started)
        parts = {name: copy.deepcopy(part.state_dict()) for name, part in run.stateful().items()}
        seen.setdefault(run.run_dir.name, []).append((copy.deepcopy(state), parts))

    monkeypatch.setattr(loop, "end_epoch", recording)
    quiet = dict(progress=False, log=lambda m: None)
    loop.train(cfg, tmp_path / "whole", **quiet)
    loop.train(cfg, tmp_path / "resumed", stop_after=1, **quiet)
    loop.train(cfg, tmp_path / "resumed", resume=True, **quiet)

    whole, resumed = seen["whole"], seen["resumed"]
    assert [s.epoch for s, _ in whole] == [s.epoch for s, _ in resumed] == [0, 1, 2]
    for (a, parts_a), (b, parts_b) in zip(whole, resumed):
        for f in dataclasses.fields(Progress):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name in TIMINGS:
                assert x > 0 and y > 0, f.name
            elif f.name == "history":
                assert untimed(x) == untimed(y), f"epoch {a.epoch}: history"
            else:
                assert x == y, f"epoch {a.epoch}: {f.name} {x!r} != {y!r}"
        assert parts_a.keys() == set(STATEFUL)
        assert_same(parts_a, parts_b, f"epoch {a.epoch}")
    # the resumed run's totals cover its first call too, and validation ran on the due epochs only
    last = resumed[-1][0]
    assert last.images_seen == whole[-1][0].images_seen == 3 * whole[0][0].images_seen > 0
    assert ["val_map" in r for r in last.history] == [False, True, True]
    # what the last checkpoint holds is where the run stood
    _, saved = read_checkpoint(tmp_path / "resumed" / "last.pt", verify=True)
    on_disk = Progress()
    on_disk.load_state_dict(saved)
    assert on_disk == last
    assert_same({k: saved[k] for k in STATEFUL}, resumed[-1][1], "last.pt")


def test_min_steps_raises_the_epochs_of_a_small_dataset_and_a_resume_ends_alike(tmp_path):
    from dsh.train.setup import with_min_steps

    cfg = TrainConfig(dataset="digits", nbits=8, epochs=1, min_steps=7, batch_size=512, tensorboard=False)
    assert with_min_steps(cfg, 3, log=lambda m: None).epochs == 3  # ceil(7 / 3)
    assert with_min_steps(cfg, 7, log=lambda m: None) is cfg  # one epoch already makes 7 steps
    unset = dataclasses.replace(cfg, min_steps=None)
    assert with_min_steps(unset, 3, log=lambda m: None) is unset
    import re

    said: list[str] = []
    whole = loop.train(cfg, tmp_path / "whole", progress=False, log=said.append)
    steps = int(re.search(r"1 epochs of (\d+) steps are fewer than min_steps 7", "\n".join(said)).group(1))
    epochs = -(-7 // steps)
    assert epochs > 1 and len(whole.history) == epochs
    quiet = dict(progress=False, log=lambda m: None)
    loop.train(cfg, tmp_path / "resumed", stop_after=1, **quiet)
    resumed = loop.train(cfg, tmp_path / "resumed", resume=True, **quiet)
    assert len(resumed.history) == epochs
    assert read_checkpoint(tmp_path / "resumed", "last.pt")[1]["config"]["epochs"] == epochs

"""Where a training run stands, and all that ``--resume`` needs to continue it exactly.

A run's resumable state is two things, saved and restored by the same code in both directions:

- its :class:`Progress`: plain counters and records (epochs done, the best validation mAP, the history, ...);
  every field is saved and every field is restored, so a field added later is resumed with no other change;
- the state of the parts of its wiring that change as it trains (:data:`STATEFUL`): the weights, the optimiser,
  the schedule and the random streams, each an object with ``state_dict`` / ``load_state_dict``.

Both go into a checkpoint under their own top-level keys (``epoch``, ``history``, ``optimizer``, ``rng``, ...).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Progress:
    """Where a run stands after an epoch; rank 0's is the one saved (the other ranks keep only the counters).

    The optimisation steps done are no field of their own: at the end of an epoch they are ``(epoch + 1)`` times
    the steps of an epoch (:func:`dsh.train.loop.steps_done`), so there is nothing to keep in step with ``epoch``.
    """

    epoch: int = -1  # the last epoch trained, 0-based: -1 before the first
    best_val_map: float = -1.0  # the best validation mAP so far (-1: none yet)
    best_epoch: int = -1  # its epoch, 1-based (-1: none yet)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch: mean losses, val mAP, ...
    # totals over the whole run, resumes included, so an interrupted run reports its full cost
    train_seconds: float = 0.0  # wall time of the optimisation steps alone
    images_seen: int = 0  # training images of the global batches

    def state_dict(self) -> dict[str, Any]:
        """Every field, copied, under its own name."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Every field from ``state``, as the type of its default (a ``KeyError`` names a field ``state`` lacks, a
        ``TypeError`` or ``ValueError`` a value of another kind); keys of other parts are ignored."""
        values = {}
        for f in dataclasses.fields(self):
            kind = type(f.default_factory() if f.default is dataclasses.MISSING else f.default)
            values[f.name] = kind(copy.deepcopy(state[f.name]))
        for name, value in values.items():  # all or nothing
            setattr(self, name, value)


class Weights:
    """A network's weights as a checkpoint holds them: its own parameter names (never DDP's ``module.``), detached
    CPU tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


class RandomStreams:
    """The random streams a run draws from: torch's global one and the loader's generator (every batch's images
    and augmentation)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"torch": torch.get_rng_state(), "loader": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["loader"])


# the checkpoint keys of the wiring's parts that change as a run trains, in the order they are restored (the
# weights before the optimiser whose state refers to them); ``Run.stateful`` gives the parts under these names
STATEFUL = ("state_dict", "optimizer", "scheduler", "rng")


def resume_keys() -> tuple[str, ...]:
    """What a checkpoint must hold to be resumed: the settings, each stateful part and each field of
    :class:`Progress`."""
    return ("config", *STATEFUL, *(f.name for f in dataclasses.fields(Progress)))


def resume_state(progress: Progress, parts: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint entries a resume reads: ``progress``'s fields and the state of each part of ``parts``
    (``Run.stateful()``)."""
    return {**progress.state_dict(), **{name: part.state_dict() for name, part in parts.items()}}


def load_resume_state(progress: Progress, parts: dict[str, Any], state: dict[str, Any]) -> None:
    """The inverse of :func:`resume_state`: each part's state, then ``progress``, from a checkpoint's ``state``."""
    for name, part in parts.items():
        part.load_state_dict(state[name])
    progress.load_state_dict(state)

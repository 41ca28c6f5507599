"""A run's wiring, built by :func:`setup` from its two halves: the data (:func:`setup_data`: images, normaliser,
batches, validation split) and the model (:func:`setup_model`: network, loss, optimiser, schedule).

One process's wiring: what makes a run span several processes is added by :func:`dsh.train.loop.train`.
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..config import TrainConfig
from ..data import BatchLoader, ImageSet, default_augment
from ..data.splits import load_parts
from ..errors import ConfigError, DataError, ModelFileError, one_line
from ..models import checkpoint as ckpt_io
from ..models.normalize import Normalizer
from ..models.pretrained import PretrainedHashNet
from ..models.registry import create_model, list_models, model_settings
from .backbone import BackboneStart, CachedValidation, backbone_options, input_normalizer
from .backbone import prepare as prepare_backbone
from .loss import DSHLoss
from .optim import make_optimizer, make_scheduler, parameter_groups
from .progress import STATEFUL, Progress, RandomStreams, Weights, load_resume_state


def resolve_device(prefer: str = "auto") -> torch.device:
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# training settings that are the model builder's own keyword settings where a config sets them
MODEL_SETTINGS = ("width", "arch", "tune", "input_size", "backbone_lr_scale")


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    """The model builder's keyword settings that a config sets (:data:`MODEL_SETTINGS`); a :class:`ConfigError`
    naming the flag when ``cfg.model`` has no such setting."""
    options = {name: getattr(cfg, name) for name in MODEL_SETTINGS if getattr(cfg, name) is not None}
    accepted = model_settings(cfg.model)
    for name in options:
        if accepted is not None and name not in accepted:
            having = [m for m in list_models() if name in (model_settings(m) or ())]
            raise ConfigError(f"{name} (--{name.replace('_', '-')}) is not a setting of model {cfg.model!r}; "
                              f"models with it: {', '.join(having) or 'none'}")
    return options


# ---------------------------------------------------------------------------------------------------------------
# the data


@dataclass
class TrainData:
    """What a run trains and validates on: images decoded once (``uint8[N, C, H, W]``), the validation split
    carved from the training one (the test split is never looked at), and the batches of the training images."""

    fit: ImageSet  # labels int64[N] class ids, or multi-hot [N, n_classes]
    val: ImageSet
    normalizer: Normalizer  # uint8 pixels -> float32: a pretrained backbone's, or fitted on ``fit`` (or a resumed
    # run's own)
    loader: BatchLoader  # (x float32[B, C, H, W] normalised and augmented, y) per step, drop_last

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        channels, height, width = (int(v) for v in self.fit.images.shape[1:])
        return channels, height, width

    @property
    def generator(self) -> torch.Generator:
        """The loader's: every batch's images and augmentation are drawn from it."""
        return self.loader.generator


def setup_data(cfg: TrainConfig, device: torch.device, normalizer: dict[str, Any] | None = None) -> TrainData:
    """The training and validation images of ``cfg.dataset`` and the seeded batches of the training ones, on
    ``device``. ``normalizer``: a resumed run's (``Normalizer.to_dict()``); by default a new run's
    (:func:`dsh.train.backbone.input_normalizer`)."""
    fit, val = load_parts(cfg.dataset, ("fit", "val"), **cfg.data_options())
    if fit.labels.ndim != 1 and cfg.sampler == "balanced":
        raise ConfigError(f"sampler (--sampler) balanced draws P classes x K images and needs class ids; "
                          f"{cfg.dataset} has multi-hot labels: use --sampler random")
    norm = Normalizer.from_dict(normalizer) if normalizer is not None else input_normalizer(cfg, fit.images)
    augment = default_augment(cfg.dataset)
    if cfg.crop_padding is not None:
        augment = dataclasses.replace(augment, crop_padding=cfg.crop_padding)
    if cfg.flip is not None:
        augment = dataclasses.replace(augment, flip=cfg.flip)
    loader = BatchLoader(
        fit, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(cfg.seed),
        augment=augment, normalizer=norm, sampler=cfg.sampler, channels_last=cfg.channels_last, device=device,
    )
    if len(loader) == 0:
        raise DataError(f"{cfg.dataset}: {len(fit.labels)} training images make no full batch of "
                        f"{cfg.batch_size}; lower --batch-size")
    if len(val.labels) < 2:
        raise DataError(f"{cfg.dataset}: the validation split has {len(val.labels)} image(s), it needs 2 or more "
                        f"to choose the best epoch; raise --val-size")
    return TrainData(fit=fit, val=val, normalizer=norm, loader=loader)


# ---------------------------------------------------------------------------------------------------------------
# the model


def build_model(cfg: TrainConfig, input_shape: tuple[int, int, int], device: torch.device,
                new_run: bool = True) -> torch.nn.Module:
    """The network ``cfg`` names for images of ``input_shape`` (C, H, W), on ``device``: ``float32[B, C, H, W] ->
    u float32[B, nbits]``. A ``new_run`` of a pretrained model starts from its weights (ImageNet's by default);
    otherwise the weights are freshly initialised (a resumed run loads its own)."""
    channels, height, width = input_shape
    model = create_model(cfg.model, cfg.nbits, in_channels=channels, image_size=(height, width),
                         **model_options(cfg), **backbone_options(cfg, new_run=new_run)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class TrainModel:
    """What a run trains, as :func:`setup_model` builds it."""

    model: torch.nn.Module  # the network, float32[B, C, H, W] -> u float32[B, nbits]
    loss_fn: DSHLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    # a pretrained backbone's start (dsh.train.backbone): for tune=head, the feature batches, the module each step
    # trains (the head) and the cached validation features; else nothing
    start: BackboneStart = dataclasses.field(default_factory=BackboneStart)


def setup_model(cfg: TrainConfig, data: TrainData, device: torch.device, saved: dict[str, Any] | None = None,
                run_dir: Path | None = None, world_size: int = 1, log: Callable[[str], None] = print) -> TrainModel:
    """The network, the loss, the optimiser and the schedule of a run on ``data``. ``saved``: the checkpoint of a
    resumed run (in ``run_dir``), whose weights a pretrained backbone's features are computed with (the rest is
    restored by :func:`setup`). ``world_size``: the processes that will share each batch."""
    model = build_model(cfg, data.input_shape, device, new_run=saved is None)
    if saved is None and hasattr(model, "init_whitening"):  # airbench: its first layer from the training patches
        model.init_whitening(data.fit.images, data.normalizer, seed=cfg.seed)
    start = BackboneStart()
    if isinstance(model, PretrainedHashNet):  # features cached; the head warm-started, or trained alone on them
        if saved is not None:  # the features of a resumed run come from its own backbone, not a random one
            with resume_errors(run_dir):
                model.load_state_dict(saved["state_dict"])
        start = prepare_backbone(cfg, model, data.fit, data.val, data.normalizer, data.generator, device, world_size,
                                 log, new_run=saved is None)
    steps_per_epoch = len(start.batches if start.batches is not None else data.loader)
    loss_fn = DSHLoss(cfg.nbits, margin=cfg.margin, alpha=cfg.alpha)
    optimizer = make_optimizer(cfg, parameter_groups(cfg, model))
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch * cfg.epochs)
    return TrainModel(model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, start=start)


# ---------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    """A run's wiring: its settings, folder, data, network, loss, optimiser and schedule, as :func:`setup` builds
    them, and where it logs. Where the run stands is apart, in its :class:`~dsh.train.progress.Progress`.

    ``model``, ``batches`` and ``loss_fn`` are what the training step uses: in one process the network (or, for a
    pretrained backbone's head alone, the head), the loader (or the cached features' batches) and the loss
    themselves; :func:`dsh.train.loop.train` replaces them with their several-process forms.
    """

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    data: TrainData
    raw_model: torch.nn.Module  # the network itself: validation and checkpoints use it
    loss_fn: Callable  # (u float32[B, nbits], labels of the B rows) -> LossTerms, over all pairs of the B rows
    optimizer: torch.optim.Optimizer
    scheduler: Any
    model: torch.nn.Module | None = None  # the one each step trains: raw_model, its head, or DDP(raw_model)
    batches: Iterable | None = None  # (x, y) per step: data.loader, feature batches, or this process's rows
    cached_validation: CachedValidation | None = None  # a head-only run's validation features
    world_size: int = 1  # processes that share every batch
    writer: Any = None  # TensorBoard, rank 0 only

    def __post_init__(self) -> None:
        self.model = self.raw_model if self.model is None else self.model
        self.batches = self.data.loader if self.batches is None else self.batches

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def stateful(self) -> dict[str, Any]:
        """The parts that change as the run trains, under their checkpoint keys (:data:`~dsh.train.progress.STATEFUL`),
        each with ``state_dict`` / ``load_state_dict``."""
        parts = (Weights(self.raw_model), self.optimizer, self.scheduler, RandomStreams(self.data.generator))
        return dict(zip(STATEFUL, parts, strict=True))

    def description(self) -> dict[str, Any]:
        """What loading the network needs besides its weights (:func:`dsh.models.checkpoint.load_model`): its
        architecture, how to feed it, the class names and the run's settings."""
        return {
            "model_config": dict(self.raw_model.config),
            "nbits": self.cfg.nbits,
            "input_shape": list(self.data.input_shape),
            "normalizer": self.data.normalizer.to_dict(),
            "class_names": list(self.data.fit.class_names),
            "config": self.cfg.to_dict(),
        }


def setup(cfg: TrainConfig, run_dir: Path, device: torch.device, saved: dict[str, Any] | None = None,
          world_size: int = 1, log: Callable[[str], None] = print) -> tuple[Run, Progress]:
    """One process's run, seeded: its data, then its model; ``saved``, a checkpoint's content to resume from
    (``RUN/last.pt``), restored into both. ``world_size``: the processes that will share each batch; ``log``: where
    a pretrained backbone's feature caching reports. Returns the run and where it stands."""
    seed_everything(cfg.seed)
    data = setup_data(cfg, device, normalizer=saved["normalizer"] if saved is not None else None)
    cfg = with_min_steps(cfg, len(data.loader), log)
    parts = setup_model(cfg, data, device, saved, run_dir, world_size, log)
    run = Run(cfg=cfg, run_dir=run_dir, device=device, data=data, raw_model=parts.model, loss_fn=parts.loss_fn,
              optimizer=parts.optimizer, scheduler=parts.scheduler, model=parts.start.step_module,
              batches=parts.start.batches, cached_validation=parts.start.validation)
    state = Progress()
    if saved is not None:
        with resume_errors(run_dir):
            load_resume_state(state, run.stateful(), saved)
    return run, state


def with_min_steps(cfg: TrainConfig, steps_per_epoch: int, log: Callable[[str], None] = print) -> TrainConfig:
    """``cfg`` with its epochs raised so that the run makes at least ``cfg.min_steps`` optimiser steps of
    ``steps_per_epoch`` each (unchanged without ``min_steps`` or where the epochs already reach it). The same
    settings and images give the same epochs, so a resumed run ends where an uninterrupted one would."""
    if not cfg.min_steps or steps_per_epoch * cfg.epochs >= cfg.min_steps:
        return cfg
    epochs = -(-cfg.min_steps // steps_per_epoch)
    log(f"{cfg.epochs} epochs of {steps_per_epoch} steps are fewer than min_steps {cfg.min_steps}: training "
        f"{epochs} epochs")
    return dataclasses.replace(cfg, epochs=epochs)


@contextmanager
def resume_errors(run_dir: Path | None):
    """A last.pt of other settings, or damaged, as one line naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{Path(run_dir or '.') / ckpt_io.LAST}: cannot resume from it "
                             f"({e.__class__.__name__}: {one_line(e, 160)})") from None

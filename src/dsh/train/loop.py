"""The training loop: data, model and loss brought together, readable top to bottom in :func:`train`.

:func:`train` is a few lines over its parts: :func:`setup` (settings, data, model, optimiser, a resume's state),
:func:`train_step`, :func:`train_epoch`, :func:`validate`, :func:`save` and :func:`finish`. Run under torchrun it
trains in several processes (:mod:`dsh.train.distributed`): the few lines that make it so are in :func:`train`,
:func:`setup` and :func:`train_step`, each with its comment.

A run folder ``RUN/`` receives ``config.json`` (the resolved config), ``last.pt`` every epoch, ``best.pt`` at the
epoch with the best validation mAP, ``history.json``, ``summary.json`` (the best epoch's figures and any warning:
a collapsed model, one training class) and TensorBoard logs under ``tb/``; ``RUN/.lock`` while a training holds
it. The validation split is carved from the training split; the test split is never looked at here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..codes.bits import codes_from_u, to_hex
from ..config import TrainConfig, save_config
from ..data import BatchLoader, default_augment
from ..data.splits import load_parts
from ..errors import ConfigError, DataError, ModelFileError, TrainingError, one_line
from ..eval.metrics import mean_average_precision
from ..eval.report import class_code_table, format_markdown
from ..models import checkpoint as ckpt_io
from ..models.forward import encode_images
from ..models.normalize import Normalizer
from ..models.pretrained import PretrainedHashNet
from ..models.registry import create_model, list_models, model_settings
from ..utils.cpu import has_fast_bf16
from ..utils.fileio import write_json
from ..utils.runlock import RunLock
from ..utils.threads import set_threads
from . import distributed
from .backbone import BackboneStart, backbone_options, input_normalizer
from .backbone import prepare as prepare_backbone
from .loss import DSHLoss
from .rundir import resolve_run


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_map: float
    seconds: float  # wall time of this call (training, validation, checkpoints)
    train_seconds: float  # wall time of the optimisation steps alone, over the whole run (resumes included)
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0  # this process's rank in a distributed run (0 in one process)
    world_size: int = 1
    # what makes the run useless though it ended: a model that collapsed (every class the same code), a training
    # set of one class; also in RUN/summary.json and the command line's last line
    warnings: list[str] = field(default_factory=list)


def resolve_device(prefer: str = "auto") -> torch.device:
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if hasattr(model, "optimizer_groups"):
        # a model with a recipe of its own (airbench: batch-norm biases at a higher rate, the whitening frozen);
        # the higher bias rate is the SGD recipe's, so AdamW keeps one rate
        groups = model.optimizer_groups(cfg.lr, cfg.weight_decay,
                                        bias_lr_scale=8.0 if cfg.optimizer == "sgd" else 1.0)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=cfg.lr)
    # No weight decay on biases and norm parameters: decaying them only fights the normalisation.
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    # AdamW: decoupled decay, so weight_decay means the same thing whatever the learning rate
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    if cfg.schedule == "onecycle":
        # each group's own peak (they differ only for models with groups of their own)
        peaks = [g.get("lr", cfg.lr) for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks if len(set(peaks)) > 1 else cfg.lr, total_steps=max(1, total_steps),
            pct_start=cfg.warmup_fraction,
            anneal_strategy="cos", cycle_momentum=False,
        )
    if cfg.schedule == "cosine":
        warm = max(1, int(cfg.warmup_fraction * total_steps))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.amp == "auto":
        # bf16 only where it was measured to beat float32 (dsh.utils.cpu.has_fast_bf16; see README)
        return device.type == "cuda" or has_fast_bf16()
    return cfg.amp == "bf16"


def autocast_for(cfg: TrainConfig, device: torch.device):
    """bf16 autocast for the network's forward pass; the loss is always computed in float32."""
    if not use_bf16(cfg, device):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def validation_map(model, val_images, val_labels, normalizer, device, channels_last: bool, tta_flip: bool = False):
    """mAP@all of the validation split against itself, split in two random halves (queries / database).

    Two disjoint halves keep a query from finding itself at distance 0, which would inflate the figure. The halves
    are drawn at random (fixed seed) because a split can be stored class by class (image folders are), and
    first-half / second-half would then share no class at all. Returns ``(map, u)``, ``u`` float32[n_val, nbits].
    """
    u, codes = encode_images(model, val_images, normalizer, device=device, channels_last=channels_last,
                             tta_flip=tta_flip)
    labels = val_labels.numpy()
    order = np.random.default_rng(0).permutation(codes.shape[0])
    q, db = order[: len(order) // 2], order[len(order) // 2 :]
    score = mean_average_precision(codes[q], codes[db], labels[q], labels[db], nbits=u.shape[1])
    return float(score), u


@dataclass
class Run:
    """A training run once set up (:func:`setup`): what the loop needs, and where it stands.

    In a distributed run every process holds one, alike but for ``batches`` (its share of each global batch) and
    for what only rank 0 keeps up to date (``history``, ``best_*``, the ``writer``).
    """

    cfg: TrainConfig
    run_dir: Path
    ctx: distributed.Context
    fit: Any  # ImageSet
    val: Any  # ImageSet
    normalizer: Normalizer
    generator: torch.Generator  # the loader's: every batch and augmentation comes from it
    batches: Any  # BatchLoader, or this rank's ShardedBatches of it
    steps_per_epoch: int
    raw_model: torch.nn.Module  # the network itself: validation and checkpoints use it
    model: torch.nn.Module  # the one trained: raw_model, or DistributedDataParallel(raw_model)
    loss_fn: DSHLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    writer: Any = None  # TensorBoard, rank 0 only
    start_epoch: int = 0
    best_map: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    # totals over the whole run, carried through --resume so an interrupted run reports its full cost
    train_seconds: float = 0.0
    images_seen: int = 0
    step: int = 0
    t_start: float = 0.0
    log: Callable[[str], None] | None = None  # rank 0's log (warnings at the end)
    cached_validation: Any = None  # a head-only run's validation features (dsh.train.backbone.CachedValidation)

    @property
    def device(self) -> torch.device:
        return self.ctx.device


def setup(cfg: TrainConfig, run_dir: Path, resume: bool, log: Callable[[str], None],
          ctx: distributed.Context) -> Run:
    """Settings, data, model, loss, optimiser and schedule; a resume's state restored; TensorBoard opened."""
    # rank 0 reads the run folder; every rank gets the same settings and state (or the same error)
    cfg, state = ctx.on_master(lambda: resolve_run(cfg, run_dir, resume))
    if cfg.threads:  # after a resume has restored the run's own settings; torch's and numba's pools alike, or
        set_threads(cfg.threads)  # numba's start at the first validation would reset torch's count to all cores
    distributed.check_batch_size(cfg.batch_size, ctx.world_size)
    options = model_options(cfg)  # before any data is read
    if ctx.ddp:
        distributed.share_cores()  # rank 0's validation (numba) keeps to this process's threads
    if ctx.master:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")
    seed_everything(cfg.seed)
    device = ctx.device

    # --- data: decoded once to uint8 tensors; val carved from train, test untouched ---
    with ctx.local_master_first():  # one download and one cache entry per machine
        fit, val = load_parts(cfg.dataset, ("fit", "val"), **cfg.data_options())
    if fit.labels.ndim != 1 and cfg.sampler == "balanced":
        raise ConfigError(f"sampler (--sampler) balanced draws P classes x K images and needs class ids; "
                          f"{cfg.dataset} has multi-hot labels: use --sampler random")
    channels, height, width = (int(v) for v in fit.images.shape[1:])
    normalizer = Normalizer.from_dict(state["normalizer"]) if state else input_normalizer(cfg, fit.images)
    augment = default_augment(cfg.dataset)
    if cfg.crop_padding is not None:
        augment = dataclasses.replace(augment, crop_padding=cfg.crop_padding)
    if cfg.flip is not None:
        augment = dataclasses.replace(augment, flip=cfg.flip)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = BatchLoader(
        fit, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator, augment=augment,
        normalizer=normalizer, sampler=cfg.sampler, channels_last=cfg.channels_last, device=device,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise DataError(f"{cfg.dataset}: {len(fit.labels)} training images make no full batch of "
                        f"{cfg.batch_size}; lower --batch-size")
    if len(val.labels) < 2:
        raise DataError(f"{cfg.dataset}: the validation split has {len(val.labels)} image(s), it needs 2 or more "
                        f"to choose the best epoch; raise --val-size")
    batches = distributed.shard(loader, ctx)  # this rank's rows of every global batch

    # --- model, loss, optimiser ---
    model = create_model(cfg.model, cfg.nbits, in_channels=channels, image_size=(height, width),
                         **options, **backbone_options(cfg, new_run=state is None)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if state is None and hasattr(model, "init_whitening"):  # airbench: its first layer from the training patches
        model.init_whitening(fit.images, normalizer, seed=cfg.seed)
    start = BackboneStart()
    if isinstance(model, PretrainedHashNet):  # features cached; the head warm-started, or trained alone on them
        if state is not None:  # the features of a resumed run come from its own backbone, not a random one
            with _resume_errors(run_dir):
                model.load_state_dict(state["state_dict"])
        start = prepare_backbone(cfg, model, fit, val, normalizer, generator, device, ctx.world_size, log,
                                 new_run=state is None)
        if start.batches is not None:
            batches, steps_per_epoch = start.batches, len(start.batches)
    loss_fn = DSHLoss(cfg.nbits, margin=cfg.margin, alpha=cfg.alpha)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch * cfg.epochs)
    run = Run(cfg=cfg, run_dir=run_dir, ctx=ctx, fit=fit, val=val, normalizer=normalizer, generator=generator,
              batches=batches, steps_per_epoch=steps_per_epoch, raw_model=model, model=start.step_module or model,
              loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, cached_validation=start.validation)
    if state is not None:
        with _resume_errors(run_dir):
            restore(run, state)
        log(f"resuming {run_dir} at epoch {run.start_epoch + 1}/{cfg.epochs}")
    if ctx.ddp:  # gradients averaged over the processes; the network itself stays run.raw_model
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if cfg.tensorboard and ctx.master:
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=run.start_epoch * steps_per_epoch)
    world = f", {ctx.world_size} processes ({ctx.backend})" if ctx.ddp else ""
    log(
        f"training {cfg.model} ({sum(p.numel() for p in model.parameters()):,} parameters), {cfg.nbits} bits, on "
        f"{cfg.dataset}: {len(fit.labels):,} fit / {len(val.labels):,} val images of {channels}x{height}x{width}, "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps, device {device}, {torch.get_num_threads()} threads"
        f"{', bf16 autocast' if use_bf16(cfg, device) else ''}{world}"
    )
    run.t_start = time.perf_counter()
    return run


@contextmanager
def _resume_errors(run_dir: Path):
    """A last.pt of other settings, or damaged, as one line naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{run_dir / ckpt_io.LAST}: cannot resume from it ({e.__class__.__name__}: "
                             f"{one_line(e, 160)})") from None


def restore(run: Run, state: dict[str, Any]) -> None:
    """Continue from a checkpoint's state: weights, optimiser, schedule, random streams and the run's totals."""
    run.raw_model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    run.generator.set_state(state["rng"]["loader"])
    run.start_epoch = int(state["epoch"]) + 1
    run.best_map, run.best_epoch = float(state["best_val_map"]), int(state["best_epoch"])
    run.history = list(state["history"])
    run.train_seconds = float(state.get("train_seconds", 0.0))
    run.images_seen = int(state.get("images_seen", 0))
    run.step = run.start_epoch * run.steps_per_epoch


LOSS_TERMS = ("total", "similar", "dissimilar", "quantization")


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """One optimisation step on this process's rows ``x, y``; the loss is over the pairs of the global batch
    (in one process, the batch itself). Returns the loss terms as numbers."""
    with autocast_for(run.cfg, run.device):
        u = run.model(x)  # (B / world size, nbits)
    u, y = distributed.global_batch(u.float(), y)  # (B, nbits): every process's rows
    terms = run.loss_fn(u, y)
    run.optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    run.optimizer.step()
    run.scheduler.step()
    return {k: float(getattr(terms, k).detach()) for k in LOSS_TERMS}


def train_epoch(run: Run, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training images; returns the epoch's record (its mean loss terms)."""
    run.model.train()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    batches = iter(run.batches)
    if progress:
        from tqdm.auto import tqdm

        # disable=None: a bar only on a terminal; a log file gets the one line per epoch instead of a line per step
        batches = tqdm(batches, total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.cfg.epochs}", unit="step",
                       leave=False, dynamic_ncols=True, disable=None)
    t_epoch = time.perf_counter()
    for x, y in batches:
        values = train_step(run, x, y)
        run.step += 1
        run.images_seen += x.shape[0] * run.ctx.world_size
        for k, v in values.items():
            sums[k] += v
        if run.writer is not None and run.step % run.cfg.log_every == 0:
            for k, v in values.items():
                run.writer.add_scalar(f"loss/{k}", v, run.step)
            run.writer.add_scalar("lr", run.scheduler.get_last_lr()[0], run.step)
        if progress:
            batches.set_postfix(loss=f"{values['total']:.3f}")
        if not math.isfinite(values["total"]):  # the global loss: every rank stops at the same step
            raise TrainingError(f"loss became {values['total']} at step {run.step}; try a lower --lr")
    run.train_seconds += time.perf_counter() - t_epoch
    return {"epoch": epoch + 1, **{f"loss_{k}": v / run.steps_per_epoch for k, v in sums.items()}}


def validate(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Validation mAP into ``record`` and TensorBoard; ``best.pt`` when it is the best so far. Rank 0 only."""
    if run.cached_validation is not None:
        val_map, val_u = run.cached_validation.score(run.raw_model, run.val.labels.numpy(), run.cfg.nbits)
    else:
        val_map, val_u = validation_map(run.raw_model, run.val.images, run.val.labels, run.normalizer, run.device,
                                        run.cfg.channels_last, tta_flip=run.cfg.tta_flip)
    record["val_map"] = val_map
    record.update(code_spread(val_u, run.val.labels.numpy(), run.cfg.nbits))
    if run.writer is not None:
        run.writer.add_scalar("val/map", val_map, run.step)
        run.writer.add_histogram("u", val_u, run.step)
        # share of outputs already near +-1: how far the quantisation term has pulled u
        run.writer.add_scalar("val/near_binary", float(np.mean(np.abs(np.abs(val_u) - 1) < 0.1)), run.step)
    if val_map > run.best_map:
        run.best_map, run.best_epoch = val_map, epoch + 1
        save(run, epoch, ckpt_io.BEST)


def code_spread(u: np.ndarray, labels: np.ndarray, nbits: int) -> dict[str, Any]:
    """How many different codes the validation images got (``val_codes``), and how many different typical codes
    their classes have (``val_class_codes``, out of ``val_classes``): 1 of several means the model collapsed.
    Multi-hot ``labels`` (``[N, C]``) have no typical code per class: ``val_codes`` alone."""
    codes = codes_from_u(u)
    distinct = np.unique(codes, axis=0)
    if labels.ndim != 1:
        return {"val_codes": int(distinct.shape[0]), "val_class_code": to_hex(distinct[:1], nbits)[0]}
    table = class_code_table(codes, labels, nbits)
    return {"val_codes": int(distinct.shape[0]), "val_classes": len(table.rows),
            "val_class_codes": len({r.code_hex for r in table.rows}),
            "val_class_code": table.rows[0].code_hex if table.rows else None}


def labels_present(labels: np.ndarray) -> np.ndarray:
    """The classes that occur: the distinct ids of ``int64[N]`` labels, or the columns of multi-hot ``[N, C]``
    labels with at least one positive row."""
    if labels.ndim == 1:
        return np.unique(labels)
    return np.flatnonzero(labels.any(axis=0))


def run_warnings(run: Run) -> list[str]:
    """Plain words for a run that ended but is of no use: one training class, or a collapsed best model."""
    out = []
    classes = labels_present(run.fit.labels.numpy())
    if classes.size < 2:
        names = list(run.fit.class_names)
        name = names[int(classes[0])] if classes.size and 0 <= int(classes[0]) < len(names) else "?"
        out.append(f"the training set has a single class ({name}): the codes cannot learn to tell classes apart and "
                   f"the validation mAP ({run.best_map:.4f}) means nothing")
    best = next((r for r in run.history if r.get("epoch") == run.best_epoch and "val_codes" in r), None)
    if best is not None and classes.size >= 2:
        if best["val_codes"] == 1:
            out.append(f"the model collapsed: every validation image has the same code 0x{best['val_class_code']} "
                       f"(best.pt, epoch {run.best_epoch}); try a lower --lr, more --epochs or another --seed")
        elif best.get("val_classes", 0) >= 2 and best["val_class_codes"] == 1:
            out.append(f"the model collapsed: all {best['val_classes']} classes have the same typical code "
                       f"0x{best['val_class_code']} on the validation images (best.pt, epoch {run.best_epoch}); try "
                       f"a lower --lr, more --epochs or another --seed")
    return out


def checkpoint_payload(run: Run, epoch: int) -> dict[str, Any]:
    """What a checkpoint holds: the model (the network's own state_dict, never DDP's ``module.`` names), how to
    feed it, the settings, and all a resume needs."""
    return {
        "model_config": dict(run.raw_model.config),
        "nbits": run.cfg.nbits,
        "input_shape": [int(v) for v in run.fit.images.shape[1:]],
        "normalizer": run.normalizer.to_dict(),
        "class_names": list(run.fit.class_names),
        "config": run.cfg.to_dict(),
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in run.raw_model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "loader": run.generator.get_state()},
        "best_val_map": run.best_map,
        "best_epoch": run.best_epoch,
        "history": run.history,
        "train_seconds": run.train_seconds,
        "images_seen": run.images_seen,
    }


def save(run: Run, epoch: int, name: str) -> None:
    """Write ``RUN/name`` (``best.pt`` or ``last.pt``) atomically. Rank 0 only."""
    ckpt_io.save_checkpoint(run.run_dir / name, checkpoint_payload(run, epoch))


def end_epoch(run: Run, epoch: int, record: dict[str, Any], log: Callable[[str], None]) -> None:
    """After an epoch, on rank 0: validation when due, the history, ``last.pt`` and the epoch's log line."""
    if (epoch + 1) % run.cfg.eval_every == 0 or epoch + 1 == run.cfg.epochs:
        validate(run, epoch, record)
    record["seconds"] = time.perf_counter() - run.t_start
    run.history.append(record)
    save(run, epoch, ckpt_io.LAST)
    vm = f", val mAP {record['val_map']:.4f}" if "val_map" in record else ""
    log(f"epoch {epoch + 1}/{run.cfg.epochs}: loss {record['loss_total']:.4f}{vm} ({record['seconds']:.1f}s)")


def finish(run: Run) -> TrainResult:
    """``history.json``, ``summary.json`` and the final TensorBoard extras (rank 0); every rank returns rank 0's
    figures. A collapsed model or a one-class training set is a warning: logged, in the summary and the result."""
    warnings: list[str] = []
    if run.ctx.master:
        warnings = run_warnings(run)
        write_json(run.run_dir / "history.json", run.history)
        best = next((r for r in run.history if r.get("epoch") == run.best_epoch), {})
        summary = {"best_epoch": run.best_epoch, "best_val_map": run.best_map, "epochs": run.cfg.epochs,
                   "epochs_run": len(run.history), "train_seconds": run.train_seconds,
                   "images_seen": run.images_seen, "classes": int(labels_present(run.fit.labels.numpy()).size),
                   **{k: best[k] for k in ("val_codes", "val_classes", "val_class_codes") if k in best},
                   "warnings": warnings}
        write_json(run.run_dir / "summary.json", summary)
        for w in warnings:
            (run.log or print)(f"warning: {w}")
    seconds = time.perf_counter() - run.t_start
    if run.writer is not None:
        _write_final_logs(run.writer, run.run_dir, run.val, run.normalizer, run.device, run.cfg, run.step)
        run.writer.close()
    best_epoch, best_map, history, warnings = run.ctx.broadcast((run.best_epoch, run.best_map, run.history,
                                                                 warnings))
    return TrainResult(
        run_dir=run.run_dir,
        best_epoch=best_epoch,
        best_val_map=best_map,
        seconds=seconds,
        train_seconds=run.train_seconds,
        images_per_second=run.images_seen / run.train_seconds if run.train_seconds > 0 else float("nan"),
        history=history,
        rank=run.ctx.rank,
        world_size=run.ctx.world_size,
        warnings=warnings,
    )


def train(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> TrainResult:
    """Train DSH as configured, writing checkpoints and logs into ``run_dir``; returns the best epoch's figures.

    ``stop_after``: run at most this many epochs in this call (the run can be continued with ``resume=True``
    and ends exactly as an uninterrupted one would).

    Under torchrun (``RANK`` set; :mod:`dsh.train.distributed`) each process trains on its share of every global batch
    of ``cfg.batch_size`` and the loss is over the pairs of the whole global batch; rank 0 alone validates, logs and
    writes the run folder. In one plain process this is ordinary single-process training.

    The run folder is claimed for the whole call (:class:`dsh.utils.runlock.RunLock`, by rank 0): a second training into
    it meanwhile is refused with a one-line :class:`DataError`. A call that fails before the first ``last.pt``
    removes what it wrote (``config.json``, ``tb/``, and the folder itself if it made it), since nothing of it can
    be resumed; once there is a ``last.pt`` the folder is kept for ``resume=True``.
    """
    ctx = distributed.setup(resolve_device())  # torchrun's process group, or a world of one
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    before: set[str] = set()  # what the folder held before this call (a failed call removes only what it added)

    def claim() -> None:
        lock.acquire()
        before.update(p.name for p in run_dir.iterdir())

    run = None
    remove_dir = False
    try:
        log = log if ctx.master else _silent
        ctx.on_master(claim)  # rank 0 claims the folder; a busy one stops every rank with the same one line
        run = setup(cfg, run_dir, resume, log, ctx)
        run.log = log
        last = run.cfg.epochs if stop_after is None else min(run.cfg.epochs, run.start_epoch + stop_after)
        for epoch in range(run.start_epoch, last):
            record = train_epoch(run, epoch, progress=progress and ctx.master)
            if ctx.master:
                end_epoch(run, epoch, record, log)
            ctx.barrier()  # the others wait while rank 0 validates and writes last.pt
        return finish(run)
    except BaseException:
        if lock.held:
            remove_dir = _remove_failed_run(run, lock, before)
        raise
    finally:
        lock.release()
        if remove_dir:
            with suppress(OSError):
                run_dir.rmdir()  # only if empty
        distributed.teardown(ctx)


def _remove_failed_run(run: Run | None, lock: RunLock, before: set[str]) -> bool:
    """After a failed call: with no ``last.pt`` there is nothing to resume, so remove what this call added (and
    ``config.json``, of no use without a checkpoint); returns whether the folder itself should go (this call
    made it). With a ``last.pt`` nothing is touched."""
    run_dir = lock.run_dir
    if (run_dir / ckpt_io.LAST).exists():
        return False
    if run is not None and run.writer is not None:
        with suppress(Exception):
            run.writer.close()
    for p in list(run_dir.iterdir()):
        if p.name == lock.path.name or (p.name in before and p.name != "config.json"):
            continue
        with suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    return lock.created_dir


def _silent(message: str) -> None:
    pass


def _write_final_logs(writer, run_dir: Path, val, normalizer, device, cfg: TrainConfig, step: int) -> None:
    """TensorBoard extras from the best checkpoint: histogram of u, class hash table, embedding projector."""
    best = ckpt_io.load_model(run_dir)
    model = best.model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    u, codes = encode_images(model, val.images, normalizer, device=device, channels_last=cfg.channels_last,
                             tta_flip=cfg.tta_flip)
    labels = val.labels.numpy()
    names = list(val.class_names)
    if labels.ndim == 1:  # a typical code per class exists only for class ids
        table = class_code_table(codes, labels, cfg.nbits, names)
        writer.add_text("class_hash_table", format_markdown(table), step)
    n = min(cfg.projector_samples, u.shape[0])
    if n > 0:
        hexes = to_hex(codes[:n], cfg.nbits)

        def name_of(label) -> str:
            if np.ndim(label) == 1:  # multi-hot: the names of its labels
                return "+".join(names[i] if i < len(names) else str(i) for i in np.flatnonzero(label)) or "-"
            return names[int(label)] if 0 <= int(label) < len(names) else str(int(label))

        metadata = [[name_of(c), f"0x{h}"] for c, h in zip(labels[:n], hexes)]
        writer.add_embedding(
            torch.from_numpy(u[:n]),
            metadata=metadata,
            metadata_header=["class", "code"],
            label_img=val.images[:n].float() / 255.0,
            global_step=step,
            tag="u",
        )

"""The training loop, read top to bottom in :func:`train`: a run set up (:mod:`dsh.train.setup`), then epochs of
:func:`train_step`, each ended on rank 0 by validation and checkpoints (:func:`end_epoch`), then :func:`finish`.

One process and many run the same loop. Under torchrun the few lines that make it several processes are in
:func:`train`, marked ``ddp``: the process group, each process's rows of every batch, the loss over the global
batch, DistributedDataParallel's averaged gradients, and rank 0 alone validating, logging and writing the folder.

A run folder ``RUN/`` receives ``config.json`` (the resolved config), ``last.pt`` every epoch, ``best.pt`` at the
epoch with the best validation mAP, ``history.json``, ``summary.json`` (the best epoch's figures and any warning:
a collapsed model, one training class) and TensorBoard logs under ``tb/``; ``RUN/.lock`` while a training holds
it. The validation split is carved from the training split; the test split is never looked at here.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import TrainConfig, save_config
from ..errors import TrainingError
from ..models import checkpoint as ckpt_io
from ..models.forward import encode_images
from ..utils.cpu import has_fast_bf16
from ..utils.fileio import write_json
from ..utils.threads import set_threads
from . import diagnostics, distributed
from .head import halves_map
from .progress import Progress, resume_state
from .rundir import RunFolder, resolve_run
from .setup import Run, model_options, resolve_device, setup


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
    """mAP@all of the validation split against itself, split in two random halves (queries / database;
    :func:`dsh.train.head.halves_map`). Returns ``(map, u)``, ``u`` float32[n_val, nbits]."""
    u, codes = encode_images(model, val_images, normalizer, device=device, channels_last=channels_last,
                             tta_flip=tta_flip)
    return halves_map(codes, val_labels.numpy(), u.shape[1]), u


LOSS_TERMS = ("total", "similar", "dissimilar", "quantization")


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """One optimisation step on the rows ``x`` (``float32[B, C, H, W]``, normalised), ``y`` (their labels); the
    loss is over all pairs of the batch (the global one where ``run.loss_fn`` gathers it). Returns the loss terms
    as numbers."""
    with autocast_for(run.cfg, run.device):
        u = run.model(x)  # (B, nbits)
    terms = run.loss_fn(u.float(), y)
    run.optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    run.optimizer.step()
    run.scheduler.step()
    return {k: float(getattr(terms, k).detach()) for k in LOSS_TERMS}


def steps_done(run: Run, state: Progress) -> int:
    """Optimisation steps up to the end of the last epoch trained (TensorBoard's x axis)."""
    return (state.epoch + 1) * run.steps_per_epoch


def train_epoch(run: Run, state: Progress, epoch: int, bar: bool) -> dict[str, Any]:
    """One pass over the training images, counted in ``state``; returns the epoch's record (its mean loss
    terms). ``bar``: a progress bar (on a terminal)."""
    run.model.train()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    batches = iter(run.batches)
    if bar:
        from tqdm.auto import tqdm

        # disable=None: a bar only on a terminal; a log file gets the one line per epoch instead of a line per step
        batches = tqdm(batches, total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.cfg.epochs}", unit="step",
                       leave=False, dynamic_ncols=True, disable=None)
    step = steps_done(run, state)
    t_epoch = time.perf_counter()
    for x, y in batches:
        values = train_step(run, x, y)
        step += 1
        state.images_seen += x.shape[0] * run.world_size
        for k, v in values.items():
            sums[k] += v
        if run.writer is not None and step % run.cfg.log_every == 0:
            diagnostics.log_losses(run.writer, values, run.scheduler.get_last_lr()[0], step)
        if bar:
            batches.set_postfix(loss=f"{values['total']:.3f}")
        if not math.isfinite(values["total"]):  # the global loss: every rank stops at the same step
            raise TrainingError(f"loss became {values['total']} at step {step}; try a lower --lr")
    state.train_seconds += time.perf_counter() - t_epoch
    state.epoch = epoch
    return {"epoch": epoch + 1, **{f"loss_{k}": v / run.steps_per_epoch for k, v in sums.items()}}


def validate(run: Run, state: Progress, record: dict[str, Any]) -> None:
    """Validation mAP (and the code spread) into ``record`` and TensorBoard; ``best.pt`` when it is the best so
    far."""
    val = run.data.val
    if run.cached_validation is not None:  # a head-only run: the head on the validation images' cached features
        val_map, val_u = run.cached_validation.score(run.raw_model, val.labels.numpy(), run.cfg.nbits)
    else:
        val_map, val_u = validation_map(run.raw_model, val.images, val.labels, run.data.normalizer, run.device,
                                        run.cfg.channels_last, tta_flip=run.cfg.tta_flip)
    record["val_map"] = val_map
    record.update(diagnostics.code_spread(val_u, val.labels.numpy(), run.cfg.nbits))
    if run.writer is not None:
        diagnostics.log_validation(run.writer, val_map, val_u, steps_done(run, state))
    if val_map > state.best_val_map:
        state.best_val_map, state.best_epoch = val_map, state.epoch + 1
        save(run, state, ckpt_io.BEST)


def checkpoint_payload(run: Run, state: Progress) -> dict[str, Any]:
    """What a checkpoint holds: the network, how to feed it and the settings (:meth:`Run.description`), and all a
    resume needs (:func:`dsh.train.progress.resume_state`)."""
    return {**run.description(), **resume_state(state, run.stateful())}


def save(run: Run, state: Progress, name: str) -> None:
    """Write ``RUN/name`` (``best.pt`` or ``last.pt``) atomically."""
    ckpt_io.save_checkpoint(run.run_dir / name, checkpoint_payload(run, state))


def end_epoch(run: Run, state: Progress, record: dict[str, Any], log: Callable[[str], None], started: float) -> None:
    """After an epoch: validation when due, the history, ``last.pt`` and the epoch's log line (``started``: when
    this call's epochs began, ``time.perf_counter()``)."""
    epoch = state.epoch
    if (epoch + 1) % run.cfg.eval_every == 0 or epoch + 1 == run.cfg.epochs:
        validate(run, state, record)
    record["seconds"] = time.perf_counter() - started
    state.history.append(record)
    save(run, state, ckpt_io.LAST)
    vm = f", val mAP {record['val_map']:.4f}" if "val_map" in record else ""
    log(f"epoch {epoch + 1}/{run.cfg.epochs}: loss {record['loss_total']:.4f}{vm} ({record['seconds']:.1f}s)")


def finish(run: Run, state: Progress, log: Callable[[str], None]) -> list[str]:
    """``history.json``, ``summary.json`` and the final TensorBoard views; returns the warnings (a collapsed
    model, a one-class training set), logged too."""
    warnings = diagnostics.run_warnings(run.data.fit, state.best_val_map, state.best_epoch, state.history)
    write_json(run.run_dir / "history.json", state.history)
    best = next((r for r in state.history if r.get("epoch") == state.best_epoch), {})
    summary = {"best_epoch": state.best_epoch, "best_val_map": state.best_val_map, "epochs": run.cfg.epochs,
               "epochs_run": len(state.history), "train_seconds": state.train_seconds,
               "images_seen": state.images_seen,
               "classes": int(diagnostics.labels_present(run.data.fit.labels.numpy()).size),
               **{k: best[k] for k in ("val_codes", "val_classes", "val_class_codes") if k in best},
               "warnings": warnings}
    write_json(run.run_dir / "summary.json", summary)
    for w in warnings:
        log(f"warning: {w}")
    if run.writer is not None:
        diagnostics.write_final_logs(run.writer, run.run_dir, run.data.val, run.data.normalizer, run.device, run.cfg,
                                     steps_done(run, state))
        run.writer.close()
    return warnings


def describe(run: Run, world: str) -> str:
    """The line that opens a run's log."""
    cfg, data = run.cfg, run.data
    channels, height, width = data.input_shape
    return (
        f"training {cfg.model} ({sum(p.numel() for p in run.raw_model.parameters()):,} parameters), {cfg.nbits} bits, "
        f"on {cfg.dataset}: {len(data.fit.labels):,} fit / {len(data.val.labels):,} val images of "
        f"{channels}x{height}x{width}, {cfg.epochs} epochs x {run.steps_per_epoch} steps, device {run.device}, "
        f"{torch.get_num_threads()} threads{', bf16 autocast' if use_bf16(cfg, run.device) else ''}{world}"
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
    and ends exactly as an uninterrupted one would). ``progress``: a progress bar per epoch (on a terminal).

    Under torchrun (``RANK`` set; :mod:`dsh.train.distributed`) each process trains on its share of every global
    batch of ``cfg.batch_size`` and the loss is over the pairs of the whole global batch; rank 0 alone validates,
    logs and writes the run folder. In one plain process this is ordinary single-process training.

    The run folder is held for the whole call (:class:`dsh.train.rundir.RunFolder`, by rank 0): a second training
    into it meanwhile is refused with a one-line :class:`DataError`; a call that fails before the first ``last.pt``
    removes what it wrote, since nothing of it can be resumed.
    """
    ctx = distributed.setup(resolve_device())  # ddp: torchrun's process group; else a world of one
    log = log if ctx.master else _silent  # ddp: rank 0 alone logs
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    run = None
    try:
        ctx.on_master(folder.claim)  # ddp: rank 0 claims the folder; a busy one stops every rank with one line
        # ddp: rank 0 reads the folder, every rank gets the same settings and state to resume (or the same error)
        cfg, saved = ctx.on_master(lambda: resolve_run(cfg, run_dir, resume))
        if cfg.threads:  # the run's own setting (a resume's from last.pt): torch's and numba's pools alike, or
            set_threads(cfg.threads)  # numba's start at the first validation would reset torch's count to all cores
        distributed.check_batch_size(cfg.batch_size, ctx.world_size)
        model_options(cfg)  # a setting the model lacks: one line before any data is read
        if ctx.ddp:
            distributed.share_cores()  # rank 0's validation (numba) keeps to this process's threads
        if ctx.master:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.json")

        with ctx.local_master_first():  # ddp: one download and one dataset cache entry per machine
            run, state = setup(cfg, run_dir, ctx.device, saved, world_size=ctx.world_size, log=log)
        cfg = run.cfg  # min_steps may have raised the epochs
        if saved is not None:
            log(f"resuming {run_dir} at epoch {state.epoch + 2}/{cfg.epochs}")
        if ctx.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            run.batches = distributed.ShardedBatches(run.data.loader, ctx.rank, ctx.world_size)  # this rank's rows
            run.loss_fn = distributed.GlobalBatchLoss(run.loss_fn)  # the loss over every rank's rows
            run.model = DDP(run.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            run.world_size = ctx.world_size
        if ctx.master and cfg.tensorboard:
            run.writer = diagnostics.open_tensorboard(run_dir, purge_step=steps_done(run, state))
        log(describe(run, f", {ctx.world_size} processes ({ctx.backend})" if ctx.ddp else ""))

        started = time.perf_counter()
        last = cfg.epochs if stop_after is None else min(cfg.epochs, state.epoch + 1 + stop_after)
        for epoch in range(state.epoch + 1, last):
            record = train_epoch(run, state, epoch, bar=progress and ctx.master)
            if ctx.master:
                end_epoch(run, state, record, log, started)  # validation, best.pt, last.pt, the log line
            ctx.barrier()  # ddp: the others wait while rank 0 validates and writes

        seconds = time.perf_counter() - started
        warnings = finish(run, state, log) if ctx.master else []
        best, warnings = ctx.broadcast((state, warnings))  # ddp: every rank reports rank 0's figures
        return TrainResult(
            run_dir=run_dir, best_epoch=best.best_epoch, best_val_map=best.best_val_map, seconds=seconds,
            train_seconds=state.train_seconds,
            images_per_second=state.images_seen / state.train_seconds if state.train_seconds > 0 else float("nan"),
            history=best.history, rank=ctx.rank, world_size=ctx.world_size, warnings=warnings,
        )
    except BaseException:
        folder.discard_failed(writer=run.writer if run is not None else None)
        raise
    finally:
        folder.release()
        distributed.teardown(ctx)  # ddp: the process group, where this call made it


def _silent(message: str) -> None:
    pass

"""The training loop: data, model and loss brought together, readable top to bottom in :func:`train`.

A run folder ``RUN/`` receives ``config.json`` (the resolved config), ``last.pt`` every epoch, ``best.pt`` at the
epoch with the best validation mAP, ``history.json`` and TensorBoard logs under ``tb/``. The validation split is
carved from the training split; the test split is never looked at here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import checkpoint as ckpt_io
from .codes import to_hex
from .config import TrainConfig, save_config
from .data import BatchLoader, Normalizer, default_augment
from .encode import encode_images
from .errors import DataError, TrainingError
from .fileio import atomic_write
from .loss import DSHLoss
from .metrics import mean_average_precision
from .models import create_model
from .report import class_code_table, format_markdown
from .splits import load_parts


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_map: float
    seconds: float  # wall time of this call (training, validation, checkpoints)
    train_seconds: float  # wall time of the optimisation steps alone, over the whole run (resumes included)
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(prefer: str = "auto") -> torch.device:
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
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
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=max(1, total_steps), pct_start=cfg.warmup_fraction,
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


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere autocast only adds casts."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.amp == "auto":
        # measured on a 2-core AVX512-BF16 CPU: 1.6x the images/s of float32 for the paper net (see README)
        return device.type == "cuda" or cpu_has_native_bf16()
    return cfg.amp == "bf16"


def autocast_for(cfg: TrainConfig, device: torch.device):
    """bf16 autocast for the network's forward pass; the loss is always computed in float32."""
    if not use_bf16(cfg, device):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def validation_map(model, val_images, val_labels, normalizer, device, channels_last: bool):
    """mAP@all of the validation split against itself, split in two random halves (queries / database).

    Two disjoint halves keep a query from finding itself at distance 0, which would inflate the figure. The halves
    are drawn at random (fixed seed) because a split can be stored class by class (image folders are), and
    first-half / second-half would then share no class at all. Returns ``(map, u)``, ``u`` float32[n_val, nbits].
    """
    u, codes = encode_images(model, val_images, normalizer, device=device, channels_last=channels_last)
    labels = val_labels.numpy()
    order = np.random.default_rng(0).permutation(codes.shape[0])
    q, db = order[: len(order) // 2], order[len(order) // 2 :]
    score = mean_average_precision(codes[q], codes[db], labels[q], labels[db], nbits=u.shape[1])
    return float(score), u


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
    """
    run_dir = Path(run_dir)
    device = resolve_device()

    state = None
    if resume:
        last = run_dir / ckpt_io.LAST
        if not last.is_file():
            raise DataError(f"{run_dir}: nothing to resume (no {ckpt_io.LAST})")
        _, state = ckpt_io.read_checkpoint(last)
        cfg = TrainConfig.from_dict(state["config"], source=str(last)).validate()
    elif (run_dir / ckpt_io.LAST).exists():
        raise DataError(f"{run_dir}: already holds a run; use --resume to continue it or choose another --out")
    if cfg.threads:  # after a resume has restored the run's own settings
        torch.set_num_threads(int(cfg.threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    seed_everything(cfg.seed)

    # --- data: decoded once to uint8 tensors; val carved from train, test untouched ---
    common = dict(data_root=cfg.data_root, val_size=cfg.val_size, seed=cfg.seed, download=cfg.download,
                  image_size=cfg.image_size, protocol=cfg.protocol, protocol_seed=cfg.protocol_seed)
    fit, val = load_parts(cfg.dataset, ("fit", "val"), **common)
    if fit.labels.ndim != 1:
        raise DataError(f"{cfg.dataset}: training needs class labels (multi-label sets are not wired in yet)")
    channels, height, width = (int(v) for v in fit.images.shape[1:])
    normalizer = Normalizer.from_dict(state["normalizer"]) if state else Normalizer.fit(fit.images)
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
    total_steps = steps_per_epoch * cfg.epochs

    # --- model, loss, optimiser ---
    model = create_model(cfg.model, cfg.nbits, in_channels=channels, image_size=(height, width)).to(device)
    model_config = dict(model.config)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = DSHLoss(cfg.nbits, margin=cfg.margin, alpha=cfg.alpha)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, total_steps)
    start_epoch, best_map, best_epoch, history = 0, -1.0, -1, []
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["loader"])
        start_epoch = int(state["epoch"]) + 1
        best_map, best_epoch = float(state["best_val_map"]), int(state["best_epoch"])
        history = list(state["history"])
        log(f"resuming {run_dir} at epoch {start_epoch + 1}/{cfg.epochs}")

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start_epoch * steps_per_epoch)

    def payload(epoch: int) -> dict[str, Any]:
        return {
            "model_config": model_config,
            "nbits": cfg.nbits,
            "input_shape": [channels, height, width],
            "normalizer": normalizer.to_dict(),
            "class_names": list(fit.class_names),
            "config": cfg.to_dict(),
            "epoch": epoch,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "loader": generator.get_state()},
            "best_val_map": best_map,
            "best_epoch": best_epoch,
            "history": history,
            "train_seconds": train_seconds,
            "images_seen": images_seen,
        }

    log(
        f"training {cfg.model} ({sum(p.numel() for p in model.parameters()):,} parameters), {cfg.nbits} bits, on "
        f"{cfg.dataset}: {len(fit.labels):,} fit / {len(val.labels):,} val images of {channels}x{height}x{width}, "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps, device {device}, {torch.get_num_threads()} threads"
        f"{', bf16 autocast' if use_bf16(cfg, device) else ''}"
    )
    t_start = time.perf_counter()
    # totals over the whole run, carried through --resume so an interrupted run reports its full cost
    train_seconds = float(state.get("train_seconds", 0.0)) if state else 0.0
    images_seen = int(state.get("images_seen", 0)) if state else 0
    step = start_epoch * steps_per_epoch
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        model.train()
        sums = {"total": 0.0, "similar": 0.0, "dissimilar": 0.0, "quantization": 0.0}
        batches = iter(loader)
        if progress:
            from tqdm.auto import tqdm

            # disable=None: a bar only on a terminal; a log file gets the one line per epoch below instead of
            # a line per step
            batches = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                           leave=False, dynamic_ncols=True, disable=None)
        t_epoch = time.perf_counter()
        for x, y in batches:
            with autocast_for(cfg, device):
                u = model(x)  # (B, nbits)
            terms = loss_fn(u.float(), y)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            images_seen += x.shape[0]
            values = {k: float(getattr(terms, k).detach()) for k in sums}
            for k, v in values.items():
                sums[k] += v
            if writer is not None and step % cfg.log_every == 0:
                for k, v in values.items():
                    writer.add_scalar(f"loss/{k}", v, step)
                writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
            if progress:
                batches.set_postfix(loss=f"{values['total']:.3f}")
            if not math.isfinite(values["total"]):
                raise TrainingError(f"loss became {values['total']} at step {step}; try a lower --lr")
        train_seconds += time.perf_counter() - t_epoch

        record: dict[str, Any] = {"epoch": epoch + 1, **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()}}
        is_last = epoch + 1 == cfg.epochs
        if (epoch + 1) % cfg.eval_every == 0 or is_last:
            val_map, val_u = validation_map(model, val.images, val.labels, normalizer, device, cfg.channels_last)
            record["val_map"] = val_map
            if writer is not None:
                writer.add_scalar("val/map", val_map, step)
                writer.add_histogram("u", val_u, step)
                # share of outputs already near +-1: how far the quantisation term has pulled u
                writer.add_scalar("val/near_binary", float(np.mean(np.abs(np.abs(val_u) - 1) < 0.1)), step)
            if val_map > best_map:
                best_map, best_epoch = val_map, epoch + 1
                ckpt_io.save_checkpoint(run_dir / ckpt_io.BEST, payload(epoch))
        record["seconds"] = time.perf_counter() - t_start
        history.append(record)
        ckpt_io.save_checkpoint(run_dir / ckpt_io.LAST, payload(epoch))
        vm = f", val mAP {record['val_map']:.4f}" if "val_map" in record else ""
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss_total']:.4f}{vm} ({record['seconds']:.1f}s)")

    with atomic_write(run_dir / "history.json", "w") as f:
        json.dump(history, f, indent=2)
    seconds = time.perf_counter() - t_start
    if writer is not None:
        _write_final_logs(writer, run_dir, val, normalizer, device, cfg, step)
        writer.close()
    return TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        best_val_map=best_map,
        seconds=seconds,
        train_seconds=train_seconds,
        images_per_second=images_seen / train_seconds if train_seconds > 0 else float("nan"),
        history=history,
    )


def _write_final_logs(writer, run_dir: Path, val, normalizer, device, cfg: TrainConfig, step: int) -> None:
    """TensorBoard extras from the best checkpoint: histogram of u, class hash table, embedding projector."""
    best = ckpt_io.load_model(run_dir)
    model = best.model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    u, codes = encode_images(model, val.images, normalizer, device=device, channels_last=cfg.channels_last)
    labels = val.labels.numpy()
    table = class_code_table(codes, labels, cfg.nbits, list(val.class_names))
    writer.add_text("class_hash_table", format_markdown(table), step)
    n = min(cfg.projector_samples, u.shape[0])
    if n > 0:
        hexes = to_hex(codes[:n], cfg.nbits)
        names = list(val.class_names)
        metadata = [[names[int(c)] if int(c) < len(names) else str(int(c)), f"0x{h}"] for c, h in
                    zip(labels[:n], hexes)]
        writer.add_embedding(
            torch.from_numpy(u[:n]),
            metadata=metadata,
            metadata_header=["class", "code"],
            label_img=val.images[:n].float() / 255.0,
            global_step=step,
            tag="u",
        )

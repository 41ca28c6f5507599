"""What a run's figures do not show by themselves: how many different codes the validation images get, the plain
warnings for a run that ended but is of no use (a collapsed model, a training set of one class), and the
TensorBoard views of the codes (histograms, the class hash table, the embedding projector)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..codes.bits import codes_from_u, to_hex
from ..config import TrainConfig
from ..data import ImageSet
from ..eval.report import class_code_table, format_markdown
from ..models import checkpoint as ckpt_io
from ..models.forward import encode_images


def code_spread(u: np.ndarray, labels: np.ndarray, nbits: int) -> dict[str, Any]:
    """How many different codes the validation images got (``val_codes``), and how many different typical codes
    their classes have (``val_class_codes``, out of ``val_classes``): 1 of several means the model collapsed.
    ``u`` is ``float32[N, nbits]``; multi-hot ``labels`` (``[N, C]``) have no typical code per class: ``val_codes``
    alone."""
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


def run_warnings(fit: ImageSet, best_val_map: float, best_epoch: int, history: list[dict[str, Any]]) -> list[str]:
    """Plain words for a run that ended but is of no use: one training class (in ``fit``), or a best model
    (epoch ``best_epoch`` of ``history``, with its :func:`code_spread`) that collapsed."""
    out = []
    classes = labels_present(fit.labels.numpy())
    if classes.size < 2:
        names = list(fit.class_names)
        name = names[int(classes[0])] if classes.size and 0 <= int(classes[0]) < len(names) else "?"
        out.append(f"the training set has a single class ({name}): the codes cannot learn to tell classes apart and "
                   f"the validation mAP ({best_val_map:.4f}) means nothing")
    best = next((r for r in history if r.get("epoch") == best_epoch and "val_codes" in r), None)
    if best is not None and classes.size >= 2:
        if best["val_codes"] == 1:
            out.append(f"the model collapsed: every validation image has the same code 0x{best['val_class_code']} "
                       f"(best.pt, epoch {best_epoch}); try a lower --lr, more --epochs or another --seed")
        elif best.get("val_classes", 0) >= 2 and best["val_class_codes"] == 1:
            out.append(f"the model collapsed: all {best['val_classes']} classes have the same typical code "
                       f"0x{best['val_class_code']} on the validation images (best.pt, epoch {best_epoch}); try "
                       f"a lower --lr, more --epochs or another --seed")
    return out


def open_tensorboard(run_dir: Path, purge_step: int):
    """TensorBoard's writer into ``RUN/tb``; events of a previous call from ``purge_step`` on are dropped (a
    resumed run rewrites the steps after its checkpoint)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)


def log_losses(writer, values: dict[str, float], lr: float, step: int) -> None:
    for k, v in values.items():
        writer.add_scalar(f"loss/{k}", v, step)
    writer.add_scalar("lr", lr, step)


def log_validation(writer, val_map: float, u: np.ndarray, step: int) -> None:
    """The validation mAP and the validation images' ``u`` (``float32[N, nbits]``)."""
    writer.add_scalar("val/map", val_map, step)
    writer.add_histogram("u", u, step)
    # share of outputs already near +-1: how far the quantisation term has pulled u
    writer.add_scalar("val/near_binary", float(np.mean(np.abs(np.abs(u) - 1) < 0.1)), step)


def write_final_logs(writer, run_dir: Path, val: ImageSet, normalizer, device, cfg: TrainConfig, step: int) -> None:
    """TensorBoard extras from the best checkpoint: the class hash table and the embedding projector of the
    validation images' ``u``."""
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

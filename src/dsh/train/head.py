"""The hash head trained alone, on cached backbone features: a whole run for ``tune=head`` (seconds for thousands of
images), and the warm start of fine-tuning (``tune=top`` / ``all``), which then begins from codes that already
separate the classes instead of from a random head whose gradients would first scramble the backbone."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..codes.bits import codes_from_u
from ..eval.metrics import mean_average_precision
from ..models.heads import split_for_weight_decay
from .loss import DSHLoss


def halves_map(codes: np.ndarray, labels: np.ndarray, nbits: int) -> float:
    """mAP@all of ``uint8[n, nbits/8]`` codes split at random (fixed seed) into query and database halves: the
    validation figure every run chooses its best epoch by. Disjoint halves keep a query from finding itself at
    distance 0; a random split, because a split can be stored class by class."""
    order = np.random.default_rng(0).permutation(codes.shape[0])
    q, db = order[: len(order) // 2], order[len(order) // 2 :]
    return float(mean_average_precision(codes[q], codes[db], labels[q], labels[db], nbits=nbits))


@dataclass
class HeadFit:
    """What :func:`fit_head` did: the epoch with the best validation mAP (1-based), that mAP, and one record per
    epoch (mean loss, validation mAP)."""

    best_epoch: int = 0
    best_val_map: float = -1.0
    history: list[dict] = field(default_factory=list)


def fit_head(head: nn.Module, fit_features: torch.Tensor, fit_labels: torch.Tensor, val_features: torch.Tensor,
             val_labels: torch.Tensor, *, nbits: int, epochs: int, lr: float = 1e-3, weight_decay: float = 5e-4,
             batch_size: int = 128, margin: float | None = None, alpha: float = 0.01, seed: int = 0,
             log: Callable[[str], None] = lambda m: None) -> HeadFit:
    """Train ``head`` (``float32[B, F]`` features -> ``u`` ``float32[B, nbits]``) with the DSH loss on
    ``fit_features`` ``float32[N, F]`` and their labels (class ids ``int64[N]`` or multi-hot ``[N, C]``): AdamW,
    one-cycle schedule, shuffled batches from a generator seeded with ``seed``. The head ends with the weights of
    the epoch with the best validation mAP on ``val_features``."""
    generator = torch.Generator().manual_seed(seed)
    loss_fn = DSHLoss(nbits, margin=margin, alpha=alpha)
    decay, no_decay = split_for_weight_decay(head.parameters())
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n = fit_features.shape[0]
    batch_size = min(batch_size, n)
    steps = max(1, n // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps * epochs, pct_start=0.15,
                                                    anneal_strategy="cos", cycle_momentum=False)
    result, best_state = HeadFit(), None
    val_np = val_labels.numpy()
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for s in range(steps):
            idx = order[s * batch_size:(s + 1) * batch_size]
            terms = loss_fn(head(fit_features[idx]), fit_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            scheduler.step()
            total += float(terms.total.detach())
        head.eval()
        with torch.no_grad():
            val_map = halves_map(codes_from_u(head(val_features).numpy()), val_np, nbits)
        result.history.append({"epoch": epoch + 1, "loss_total": total / steps, "val_map": val_map})
        if val_map > result.best_val_map:
            result.best_val_map, result.best_epoch = val_map, epoch + 1
            best_state = copy.deepcopy(head.state_dict())
    if best_state is not None:
        head.load_state_dict(best_state)
    log(f"hash head on cached features: best validation mAP {result.best_val_map:.4f} at epoch "
        f"{result.best_epoch}/{epochs}")
    return result

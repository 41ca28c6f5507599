"""The optimiser and the learning-rate schedule of a run: which parameters get which settings, and how the rate
moves over the steps."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import TrainConfig
from ..models.heads import split_for_weight_decay


def parameter_groups(cfg: TrainConfig, model: torch.nn.Module) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the model's own recipe where it has one (``model.optimizer_groups``),
    else weight decay on weight matrices and kernels only."""
    if hasattr(model, "optimizer_groups"):
        # a model with a recipe of its own (airbench: batch-norm biases at a higher rate, the whitening frozen);
        # the higher bias rate is the SGD recipe's, so AdamW keeps one rate
        return model.optimizer_groups(cfg.lr, cfg.weight_decay, bias_lr_scale=8.0 if cfg.optimizer == "sgd" else 1.0)
    decay, no_decay = split_for_weight_decay(model.parameters())
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW, over ``groups`` (:func:`parameter_groups`)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    # AdamW: decoupled decay, so weight_decay means the same thing whatever the learning rate
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The learning-rate schedule over ``total_steps`` steps, stepped once after every optimiser step."""
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

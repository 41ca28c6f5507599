"""What every hash network shares: its last layer's initialisation, and which parameters weight decay applies to."""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn


def init_hash_layer(layer: nn.Linear, gain: float = 0.1) -> None:
    """Small normal weights (std ``gain / sqrt(fan_in)``) and zero biases for the layer that outputs ``u``.

    The loss pulls similar outputs together, pushes dissimilar ones to squared distance 2 * nbits, and pulls each
    output towards +-1. Starting small lets the pair terms shape the codes before the quantization term saturates
    them; starting at exactly 0 would give every image the same output and the layers below no gradient. This std
    makes each output's std about ``gain`` times the RMS of the features (~1 for these backbones), so ~0.1 at init,
    whatever the feature width (128 to 2048).
    """
    nn.init.normal_(layer.weight, std=gain / layer.in_features**0.5)
    nn.init.zeros_(layer.bias)


def split_for_weight_decay(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decayed, not decayed)``: weight matrices and kernels, then biases and norm parameters (1-D), whose decay
    would only fight the normalisation."""
    params = list(params)
    return [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]

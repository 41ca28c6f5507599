"""The names of the models dsh registers, readable without torch: ``dsh --help`` lists them without loading the
registry (which imports torch and torchvision, seconds and most of a gigabyte). ``tests/test_models.py`` checks that
they are the registry's names, so a model added there and not here fails a test."""

from __future__ import annotations

MODEL_NAMES = ("airbench", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "paper", "paper-bn",
               "resnet-small", "resnet18", "resnet50", "timm")

__all__ = ["MODEL_NAMES"]

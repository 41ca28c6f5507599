"""The datasets dsh reads, by name, without torch (the dataset readers import it; ``dsh --help`` lists the names)."""

from __future__ import annotations

DATASETS = ("digits", "mnist", "cifar10", "folder", "list")

__all__ = ["DATASETS"]

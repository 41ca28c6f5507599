"""Judging codes, with no torch: retrieval metrics as pure functions over packed codes and labels (class ids or
multi-hot rows), the class hash table, and the plots and 2-D maps (imported on first use: matplotlib, umap)."""

from __future__ import annotations

from ..utils.lazy import lazy_exports
from .codefiles import class_table_of, evaluate_files
from .metrics import Evaluation, evaluate, mean_average_precision, precision_at_k, precision_at_radius
from .report import ClassTable, class_code_table, format_markdown

__getattr__ = lazy_exports(__name__, {
    "plot_pr_curve": "plots",
    "plot_precision_at_k": "plots",
    "save_curves_json": "plots",
    "plot_u_maps": "viz",
})
__all__ = [
    "ClassTable",
    "Evaluation",
    "class_code_table",
    "class_table_of",
    "evaluate",
    "evaluate_files",
    "format_markdown",
    "mean_average_precision",
    "plot_pr_curve",
    "plot_precision_at_k",
    "plot_u_maps",
    "precision_at_k",
    "precision_at_radius",
    "save_curves_json",
]

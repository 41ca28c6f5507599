"""Curve plots (PNG) and curve files (JSON) for retrieval results; several runs overlay on one figure.

``curves`` is a mapping from a legend label to either a whole :func:`dsh.eval.metrics.evaluate` result (or its
``to_dict()``) or just the curve inside it, so runs of different methods or bit lengths compare directly::

    plot_pr_curve({"DSH 12 bits": r12, "DSH 48 bits": r48}, "pr.png")

matplotlib is imported when a plot is drawn (``import dsh.eval.plots`` stays light) and only through its Agg canvas,
never pyplot, so nothing depends on a display or on global figure state. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

import numpy as np

from ..utils.fileio import atomic_write

__all__ = ["plot_pr_curve", "plot_precision_at_k", "save_curves_json"]


def _curve(value, key: str, fields: tuple[str, ...], label: str) -> dict:
    """The ``key`` curve of an evaluate result (an Evaluation or its ``to_dict()``), or ``value`` itself when it
    already is that curve (a dataclass or a mapping)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    c = value[key] if key in value else value
    missing = [f for f in fields if f not in c]
    if missing:
        raise ValueError(f"curve {label!r} has no {', '.join(missing)} (expected an evaluate() result or its {key!r})")
    return {f: np.asarray(c[f], dtype=float) for f in fields}


def _new_figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, ax, path: str | os.PathLike) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def plot_pr_curve(
    curves: Mapping[str, Mapping], path: str | os.PathLike, title: str = "Precision-recall (Hamming radius)"
) -> None:
    """Precision against recall of the sets within Hamming radius ``r = 0..nbits``, one line per label."""
    _plot_lines(curves, path, title, "pr_curve", ("recall", "precision"), ("recall", "precision"),
                xlim=(-0.02, 1.02))


def plot_precision_at_k(
    curves: Mapping[str, Mapping], path: str | os.PathLike, title: str = "Precision@k", log_k: bool = True
) -> None:
    """Precision of the top ``k`` results against ``k`` (log axis by default), one line per label."""
    _plot_lines(curves, path, title, "precision_at_k", ("k", "precision"), ("k (number of results)", "precision@k"),
                log_x=log_k)


def _plot_lines(curves, path, title: str, key: str, xy: tuple[str, str], axis_labels: tuple[str, str], *,
                xlim: tuple[float, float] | None = None, log_x: bool = False) -> None:
    """One line per label of curve ``key``'s fields ``xy``; precision axes run over [0, 1]."""
    if not curves:
        raise ValueError("no curves to plot")
    fig, ax = _new_figure(title, *axis_labels)
    for label, value in curves.items():
        c = _curve(value, key, xy, label)
        ax.plot(c[xy[0]], c[xy[1]], marker=".", label=str(label))
    if log_x:
        ax.set_xscale("log")
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_ylim(-0.02, 1.02)
    _save(fig, ax, path)


def _jsonable(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):  # an Evaluation, a curve
        return x.to_dict() if hasattr(x, "to_dict") else dataclasses.asdict(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def save_curves_json(result: Mapping, path: str | os.PathLike) -> None:
    """Write an evaluate result (or any mapping of numbers, lists, numpy values and results) as indented JSON,
    atomically."""
    text = json.dumps(result, indent=2, default=_jsonable) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)

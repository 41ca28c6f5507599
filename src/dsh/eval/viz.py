"""2-D maps of the real outputs ``u`` (UMAP and t-SNE), coloured by class, written as PNG files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..utils.fileio import atomic_write

METHODS = ("umap", "tsne")


def embed_2d(u: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """``float32[n, nbits]`` -> ``float32[n, 2]`` with scikit-learn's t-SNE or umap-learn's UMAP."""
    u = np.asarray(u, dtype=np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (u.shape[0] - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(u)
    if method == "umap":
        with warnings.catch_warnings():
            # umap warns that a fixed random_state disables its parallelism: we want the reproducibility
            warnings.simplefilter("ignore")
            import umap

            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, max(2, u.shape[0] - 1)), random_state=seed)
            return reducer.fit_transform(u)
    raise ValueError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")


def plot_embedding(
    xy: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    title: str,
    class_names: list[str] | None = None,
) -> Path:
    """Scatter ``xy`` float[n, 2] coloured by ``labels`` int[n], with a legend; PNG written atomically.

    Drawn on a bare Agg figure (no pyplot), so it neither needs a display nor changes the caller's backend.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    labels = np.asarray(labels)
    classes = np.unique(labels)
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig = Figure(figsize=(7, 6), dpi=110)
    ax = fig.add_subplot()
    for i, c in enumerate(classes):
        m = labels == c
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.7, color=cmap(i % cmap.N), label=name, rasterized=True)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=8, loc="best", frameon=True, title="class")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return path


def plot_u_maps(
    u: np.ndarray,
    labels: np.ndarray,
    out_dir: str | os.PathLike,
    methods: tuple[str, ...] = METHODS,
    class_names: list[str] | None = None,
    max_points: int = 5000,
    seed: int = 0,
    title_prefix: str = "",
) -> list[Path]:
    """UMAP and/or t-SNE maps of ``u`` (subsampled to ``max_points``, seeded) -> ``out_dir/{method}.png``."""
    u = np.asarray(u)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("maps are coloured by single-label class ids (1-D labels)")
    if u.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(u.shape[0], max_points, replace=False))
        u, labels = u[keep], labels[keep]
    written = []
    for method in methods:
        xy = embed_2d(u, method, seed=seed)
        name = {"umap": "UMAP", "tsne": "t-SNE"}[method]
        title = f"{title_prefix}{name} of u ({u.shape[1]} outputs, {u.shape[0]} images)"
        written.append(plot_embedding(xy, labels, Path(out_dir) / f"{method}.png", title, class_names))
    return written

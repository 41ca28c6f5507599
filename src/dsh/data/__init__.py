"""Image datasets as uint8 tensors: decoded once, cached on disk, batched and augmented with whole-batch tensor ops.

- :func:`load_split` ``(name, split, data_root, ...) -> ImageSet``: ``images`` ``uint8[N, C, H, W]``, ``labels``
  ``int64[N]``, ``class_names``, ``paths``. Datasets (:data:`DATASETS`): ``digits`` (scikit-learn's 8x8 digits,
  no files needed), ``mnist``, ``cifar10`` (torchvision's files, downloaded if absent), ``folder`` (a
  ``train/<class>/`` + ``test/<class>/`` image tree) and ``list`` (multi-label: ``train.txt``, ``test.txt``,
  ``database.txt`` of ``path l1 ... lC`` lines, DeepHash-pytorch's format; :mod:`dsh.data.listfile`).
  Splits: ``train``, ``test``, and ``val`` / ``fit`` carved from ``train`` (``list`` also has ``database``).
- arbitrary images, to encode or search them, go through :mod:`dsh.utils.imageio` (the one input policy).
- :class:`Augment` (:func:`default_augment`), :class:`BatchLoader`: the training batches (normalised by a
  :class:`dsh.models.Normalizer` the loop passes in).

Errors with the data raise :class:`dsh.utils.fileio.DataError` (one line, naming the path). This package does not
import the models, the loss or the training loop.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

# Imported on first use, so that ``dsh.data.protocols`` (named splits, no torch) is read without torch.
__getattr__ = lazy_exports(__name__, {
    "Augment": "augment",
    "default_augment": "augment",
    "cache_dir": "cache",
    "DATASETS": "names",
    "SPLITS": "datasets",
    "load_split": "datasets",
    "resize_images": "datasets",
    "ImageSet": "imageset",
    "stratified_subset": "imageset",
    "BatchLoader": "loader",
    "balanced_batches": "loader",
})
__all__ = [
    "DATASETS",
    "SPLITS",
    "Augment",
    "BatchLoader",
    "ImageSet",
    "balanced_batches",
    "cache_dir",
    "default_augment",
    "load_split",
    "resize_images",
    "stratified_subset",
]

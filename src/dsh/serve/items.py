"""A writable service's changes: new items (their images kept in the data folder, then added to the index) and
removals, one at a time under the service's write lock. The routes in :mod:`dsh.serve.app` check the request and
encode the images; this module checks each item's fields and changes the index.

The index does the durable part: a :class:`dsh.index.live.LiveIndex` logs and fsyncs each change before ``add`` /
``remove`` return, so an answer is only sent for a change that survives a crash. An image file is written
(atomically) before its item is added: a crash in between leaves a file no item names, never an item without its
image. New ids come from ``ServeSettings.new_ids`` where given (several services over one distributed index must
not give the same id twice), else from the index (``next_id``, or one more than its largest id).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
from starlette.exceptions import HTTPException

from ..utils.fileio import atomic_write
from .image_files import image_suffix

__all__ = ["ItemWriter"]


class ItemWriter:
    """Adds and removes items of ``index`` (any :class:`dsh.index.base.Index` that takes changes), keeping
    uploaded images in ``settings.data_dir`` (created)."""

    def __init__(self, index, settings):
        if not settings.data_dir:
            raise ValueError("a writable service needs a data folder (ServeSettings.data_dir)")
        self.index = index
        self.data_dir = Path(settings.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._new_ids = settings.new_ids
        self._lock = threading.Lock()
        catalog = index.catalog
        self.label_kind = catalog.label_kind if catalog is not None else None
        self.class_names = list(catalog.class_names) if catalog is not None else []

    # -- the fields of new items --------------------------------------------------------------------------------

    def check_fields(self, n: int, fields: dict[str, list]) -> tuple[list[int] | None, list[str] | None]:
        """The multipart fields ``label``, ``class``, ``key`` (each absent, or one per image; ``""`` = none) ->
        (labels or ``None``, keys or ``None``); 422 naming the field where one does not fit the index."""
        for name, values in fields.items():
            if values and len(values) != n:
                raise HTTPException(422, f"{name}: give one per image ({n}) or none, got {len(values)}")
            if any(not isinstance(v, str) for v in values):
                raise HTTPException(422, f"{name}: expected text, got a file")
        labels = [self._label(i, fields["label"], fields["class"]) for i in range(n)]
        keys = [v.strip() for v in fields["key"]] if any(v.strip() for v in fields["key"]) else None
        if all(x is None for x in labels):
            return None, keys
        return [-1 if x is None else x for x in labels], keys

    def _label(self, i: int, labels: list[str], classes: list[str]) -> int | None:
        text = labels[i].strip() if labels else ""
        name = classes[i].strip() if classes else ""
        if not (text or name):
            return None
        if self.label_kind == "multi-hot":
            raise HTTPException(422, f"label[{i}]: this index's labels are multi-hot rows; a single class cannot "
                                     f"be given here")
        top = len(self.class_names) - 1 if self.class_names else None
        label = None
        if text:
            try:
                label = int(text)
            except ValueError:
                raise HTTPException(422, f"label[{i}] must be an integer class id, got {text[:40]!r}") from None
            if label < -1 or (top is not None and label > top):
                bound = f"between -1 and {top}" if top is not None else ">= -1"
                raise HTTPException(422, f"label[{i}] must be a class id {bound}, got {label}")
        if name:
            if name not in self.class_names:
                shown = ", ".join(self.class_names[:10]) or "none"
                raise HTTPException(422, f"class[{i}] {name[:40]!r} is not one of the index's classes ({shown})")
            by_name = self.class_names.index(name)
            if label is not None and label != by_name:
                raise HTTPException(422, f"label[{i}] {label} and class[{i}] {name!r} ({by_name}) disagree")
            label = by_name
        return label

    # -- changes ------------------------------------------------------------------------------------------------

    def _allocate(self, n: int) -> np.ndarray:
        if self._new_ids is not None:
            return np.asarray(self._new_ids(n), np.int64)
        start = getattr(self.index, "next_id", None)
        if start is None:
            start = int(np.max(self.index.ids)) + 1 if self.index.ntotal else 0
        return np.arange(start, start + n, dtype=np.int64)

    def add(self, codes: np.ndarray, images: list[bytes], labels: list[int] | None,
            keys: list[str] | None) -> list[int]:
        """Keep ``images`` in the data folder and add their items (``codes`` ``uint8[n, nbytes]``); their ids.
        Nothing is left behind if anything fails (a full disk: a one-line ``DataError``)."""
        with self._lock:
            ids = self._allocate(len(images))
            paths = [self.data_dir / f"{i}{image_suffix(d)}" for i, d in zip(ids, images)]
            written = []
            try:
                for path, data in zip(paths, images):
                    with atomic_write(path) as f:
                        f.write(data)
                    written.append(path)
                self.index.add(codes, ids, labels=labels, paths=[str(p) for p in paths], keys=keys)
            except BaseException:
                for path in written:
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            return [int(i) for i in ids]

    def remove(self, item_id: int) -> bool:
        """Remove one item, and its image where the data folder holds it; whether it was there."""
        with self._lock:
            try:
                path = self.index.lookup([item_id])[0].get("path")
            except KeyError:
                return False
            if not self.index.remove([item_id]):
                return False
            if path and Path(path).parent == self.data_dir:
                with contextlib.suppress(OSError):
                    Path(path).unlink()
            return True

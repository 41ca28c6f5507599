"""What every part of dsh stands on, with no torch: atomic file writes and checked file headers, image decoding under
one input policy, the run folder's lock, thread and CPU settings.

The modules are imported on first use of a name, so ``import dsh.utils.fileio`` does not decode images or touch
numba."""

from __future__ import annotations

from .lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "atomic_write": "fileio",
    "write_json": "fileio",
    "write_text": "fileio",
    "ImageList": "imageio",
    "to_model_input": "imageio",
    "RunLock": "runlock",
    "set_threads": "threads",
})
__all__ = ["ImageList", "RunLock", "atomic_write", "set_threads", "to_model_input", "write_json", "write_text"]

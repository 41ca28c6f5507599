"""dsh: Deep Supervised Hashing (Liu et al., CVPR 2016) as a library and a command-line tool.

``from dsh import HammingIndex`` and ``dsh.metrics`` work without importing torch: codes can come from anywhere.
The training side (``dsh.train``, ``dsh.models``, ``dsh.data``, ``dsh.loss``) imports torch when first used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["HammingIndex", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import dsh` stays light and torch-free.
    if name == "HammingIndex":
        from .index import HammingIndex

        return HammingIndex
    raise AttributeError(f"module 'dsh' has no attribute {name!r}")

"""dsh: Deep Supervised Hashing (Liu et al., CVPR 2016) as a library and a command-line tool.

The objects every front end shares (the command line, the HTTP service, a user's program)::

    from dsh import Encoder, HammingIndex, Searcher
    encoder = Encoder.from_run("runs/mnist8")     # or Encoder.from_file("model.onnx"): no torch needed
    u, codes = encoder.encode(["a.png", "b.png"])

``import dsh`` stays light and torch-free; ``Encoder``, ``HammingIndex``, ``Searcher``, ``dsh.metrics`` and an ONNX
model never import torch. The training side (``dsh.train``, ``dsh.models``, ``dsh.data``, ``dsh.loss``) and loading
a checkpoint do.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Encoder", "HammingIndex", "Searcher", "UserError", "__version__"]

_LAZY = {"Encoder": "encoder", "HammingIndex": "index", "Searcher": "searcher", "UserError": "errors"}


def __getattr__(name: str):
    # Lazy, so that `import dsh` stays light and torch-free.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'dsh' has no attribute {name!r}")

"""dsh: Deep Supervised Hashing (Liu et al., CVPR 2016) as a library and a command-line tool.

The objects every front end shares (the command line, the HTTP service, a user's program)::

    from dsh import Encoder, HammingIndex, Searcher
    encoder = Encoder.from_run("runs/mnist8")     # or Encoder.from_file("model.onnx"): no torch needed
    u, codes = encoder.encode(["a.png", "b.png"])

``import dsh`` stays light and torch-free; ``Encoder``, ``HammingIndex``, ``Searcher``, ``dsh.eval`` and an ONNX
model never import torch. The training side (``dsh.train``, ``dsh.models``, ``dsh.data``) and loading a checkpoint
do. The parts, lowest first: ``errors``, ``utils``, ``codes``, ``index`` and ``eval``, ``data`` and ``models``,
``config``, ``runtime``, ``train``, ``serve``, ``cli``; each imports only parts before it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .utils.lazy import lazy_exports

__all__ = ["Encoder", "HammingIndex", "Searcher", "UserError", "__version__"]

# Lazy, so that `import dsh` stays light and torch-free.
__getattr__ = lazy_exports(__name__, {
    "Encoder": "runtime.encoder",
    "HammingIndex": "index.flat",
    "Searcher": "runtime.searcher",
    "UserError": "errors",
})

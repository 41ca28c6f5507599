"""Images in, codes out: the :class:`Encoder` over a checkpoint, a safetensors file or an ONNX model (onnxruntime,
no torch), the :class:`Searcher` (encoder + index + catalog), streaming encoding of a folder, and export to ONNX or
safetensors (torch).

Names are imported on first use: an ONNX encoder never imports torch."""

from __future__ import annotations

from ..utils.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "Encoder": "encoder",
    "Encoded": "encoder",
    "Searcher": "searcher",
    "QueryResult": "searcher",
    "index_codes": "searcher",
    "index_folder": "searcher",
    "encode_folder": "folder_encode",
    "export_model": "export",
})
__all__ = ["Encoded", "Encoder", "QueryResult", "Searcher", "encode_folder", "export_model", "index_codes",
           "index_folder"]

"""The hashing networks (torch): a plain registry of models created by name, the normaliser fitted on the training
images, checkpoints that load without running code, and :class:`ModelInfo`, what a model file carries besides its
weights (torch-free).

Names are imported on first use, so ``import dsh.models.modelinfo`` does not import torch."""

from __future__ import annotations

from ..utils.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "create_model": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "model_settings": "registry",
    "Normalizer": "normalize",
    "ModelInfo": "modelinfo",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "encode_images": "forward",
})
__all__ = ["ModelInfo", "Normalizer", "create_model", "encode_images", "list_models", "load_model", "model_settings",
           "register_model", "save_checkpoint"]

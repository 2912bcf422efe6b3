"""Inference engine: ONNX sessions behind a small Protocol (no napari or Qt imports)."""

from __future__ import annotations

from napari_medsam.models.registry import get_spec

from .model_files import ModelFileError
from .preprocess import PromptError
from .protocol import Embedding, Prediction, PromptModel

__all__ = ["Embedding", "ModelFileError", "Prediction", "PromptError", "PromptModel",
           "load_model"]


def load_model(name: str = "litemedsam", device: str = "auto", *, threads: int | None = None,
               auto_export: bool = True) -> PromptModel:
    """Open model ``name`` from the registry on ``device`` ("auto", "cuda" or "cpu")."""
    from .onnx_model import OnnxPromptModel

    return OnnxPromptModel(get_spec(name), device, threads=threads, auto_export=auto_export)

"""Inference engine: ONNX sessions behind a small Protocol (no napari or Qt imports)."""

from __future__ import annotations

from napari_medsam.models.registry import get_spec

from .model_files import ModelFileError
from .preprocess import PromptError
from .protocol import (
    AsyncEncoder,
    BatchEncoder,
    Box,
    Click,
    Embedding,
    Prediction,
    Predictor,
    PromptModel,
)

__all__ = ["AsyncEncoder", "BatchEncoder", "Box", "Click", "Embedding", "ModelFileError",
           "Prediction", "Predictor", "PromptError", "PromptModel", "load_model"]


def load_model(name: str = "litemedsam", device: str = "auto", *, threads: int | None = None,
               auto_export: bool = True, backend: str = "auto",
               precision: str = "auto") -> PromptModel:
    """Open model ``name`` from the registry.

    Parameters
    ----------
    name
        Registry name of the model.
    device
        ``"auto"``, ``"cuda"`` or ``"cpu"``.
    threads
        CPU threads for inference (default: the backend's choice, all cores).
    auto_export
        Export a missing built-in model on first use when the export extra is installed.
    backend
        ``"auto"`` (ONNX Runtime when a CUDA GPU really runs, else OpenVINO when installed,
        else ONNX Runtime on the CPU), ``"onnxruntime"`` or ``"openvino"``; see
        :func:`.backends.choose_backend`.
    precision
        OpenVINO's CPU precision: ``"auto"`` (f32), ``"f32"`` or ``"bf16"``. ONNX Runtime
        always runs the exported float32 graph and ignores it.

    Returns
    -------
    PromptModel
        Its ``batch_encoder`` / ``async_encoder`` say, once and for all, which faster
        volume encoders it offers (see :mod:`.protocol`).
    """
    from .backends import OPENVINO, choose_backend

    spec = get_spec(name)
    if choose_backend(backend, device) == OPENVINO:
        from .openvino_model import OpenVINOPromptModel

        return OpenVINOPromptModel(spec, device, precision=precision, threads=threads,
                                   auto_export=auto_export)
    from .onnx_model import OnnxPromptModel

    return OnnxPromptModel(spec, device, threads=threads, auto_export=auto_export)

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
               precision: str = "auto", server: str | None = None,
               api_key: str | None = None) -> PromptModel:
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
        else ONNX Runtime on the CPU), ``"onnxruntime"``, ``"openvino"``, or ``"remote"``
        (the encoder on ``server``, the decoder here; what ``"auto"`` means when a
        ``server`` is given); see :func:`.backends.choose_backend`.
    precision
        OpenVINO's CPU precision: ``"auto"`` (f32), ``"f32"`` or ``"bf16"``. ONNX Runtime
        always runs the exported float32 graph and ignores it. A remote model has the
        server's.
    server, api_key
        For ``backend="remote"``: the server's address (``http://HOST:PORT``) and its API
        key (default ``$NAPARI_MEDSAM_API_KEY``).

    Returns
    -------
    PromptModel
        Its ``batch_encoder`` / ``async_encoder`` say, once and for all, which faster
        volume encoders it offers (see :mod:`.protocol`).
    """
    from .backends import OPENVINO, REMOTE, choose_backend

    spec = get_spec(name)
    chosen = choose_backend(REMOTE if server and backend == "auto" else backend, device)
    if (chosen == REMOTE) != bool(server):
        raise ValueError("the remote backend needs a server address (--server URL); a "
                         f"server address does not go with --backend {backend}")
    if chosen == REMOTE:
        from .remote_model import RemotePromptModel

        return RemotePromptModel(spec, server, api_key=api_key, threads=threads,
                                 auto_export=auto_export)
    if chosen == OPENVINO:
        from .openvino_model import OpenVINOPromptModel

        return OpenVINOPromptModel(spec, device, precision=precision, threads=threads,
                                   auto_export=auto_export)
    from .onnx_model import OnnxPromptModel

    return OnnxPromptModel(spec, device, threads=threads, auto_export=auto_export)

"""The batch-dynamic encoder, ``encoder_batched.onnx``: :func:`export_batched_encoder`.

The same weights as ``encoder.onnx`` with a symbolic batch axis, for encoding several slices
per call on a GPU. Exported on demand (``export_model(..., batched=True)``, or by the engine
the first time a volume is embedded on CUDA/TensorRT) and vouched for by ``export.json``
(its sha256 and the batch-N vs N x batch-1 and PyTorch checks).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export_common import (
    EXPORT_INFO,
    PARITY_TOLERANCE,
    ExportError,
    model_checkpoint,
    torch_export,
    write_json_atomic,
)
from .fingerprint import smoke_inputs
from .registry import ModelSpec, get_spec

logger = logging.getLogger(__name__)

__all__ = ["BATCH_AXIS", "BATCH_CHECK", "BATCH_TOLERANCE", "BatchedExportResult",
           "export_batched_encoder"]

#: Largest allowed difference between one batch-N call of the batched encoder and N
#: batch-1 calls of the same file (ONNX Runtime, CPU), in embedding units.
BATCH_TOLERANCE = 1e-4
#: Images in the batch the batched encoder is checked with (different on purpose).
BATCH_CHECK = 3
BATCH_AXIS = "batch"


@dataclass
class BatchedExportResult:
    """The batched encoder and its checks (max absolute differences of embeddings)."""

    spec: ModelSpec
    path: Path
    batch_diff: float
    torch_diff: float
    seconds: float


def _check_images(input_size: int, count: int = BATCH_CHECK) -> np.ndarray:
    """``count`` different deterministic image-like inputs [count, 3, S, S]."""
    base = smoke_inputs(input_size, input_size // 4)["image"][0]
    variants = [base, base[:, ::-1, :], base[:, :, ::-1].transpose(0, 2, 1),
                0.9 - 0.8 * base]
    while len(variants) < count:
        variants.append(np.roll(variants[-1], input_size // 7, axis=(1, 2)))
    return np.ascontiguousarray(np.stack(variants[:count])).astype(np.float32)


def _export_batched_file(model, path: Path) -> tuple[float, float]:
    """Write the batch-dynamic encoder to ``path``; return (batch diff, PyTorch diff).

    The batch diff compares one batch-N call with N batch-1 calls of the same file, the
    PyTorch diff the batch-N call with PyTorch's output for the same batch (ONNX Runtime on
    the CPU, :data:`BATCH_CHECK` different images).
    """
    import onnx
    import onnxruntime as ort
    import torch

    from .onnx_wrappers import EncoderForExport, dynamic_batch

    images = _check_images(model.input_size)
    encoder = EncoderForExport(model.image_encoder).eval()
    axes = {"image": {0: BATCH_AXIS}, "image_embeddings": {0: BATCH_AXIS}}
    with torch.no_grad():
        with dynamic_batch(model.image_encoder):
            torch_export(encoder, (torch.from_numpy(images[:1]),), path, ["image"],
                          ["image_embeddings"], axes)
        reference = encoder(torch.from_numpy(images)).numpy()
    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (batch,) = session.run(None, {"image": images})
    singles = np.concatenate([session.run(None, {"image": images[i:i + 1]})[0]
                              for i in range(len(images))])
    batch_diff = float(np.abs(batch - singles).max())
    torch_diff = float(np.abs(batch - reference).max())
    return batch_diff, torch_diff


# Long on purpose: checks before the export (extra installed, model exported, already
# verified), then export, the two parity checks and one atomic write of file and record.
def export_batched_encoder(name: str = "litemedsam", *,
                           force: bool = False) -> BatchedExportResult:
    """Export ``name``'s encoder with a symbolic batch axis as ``encoder_batched.onnx``.

    The exported model must exist (a built-in one is exported first when missing). The
    weights are the same as ``encoder.onnx``'s; only TinyViT's one batch-fixing reshape is
    traced symbolically (:func:`.onnx_wrappers.dynamic_batch`). The file is kept only when
    a batch of :data:`BATCH_CHECK` images gives the outputs of batch-1 calls within
    :data:`BATCH_TOLERANCE` and PyTorch's within :data:`PARITY_TOLERANCE`; its sha256 and
    both differences go to ``export.json`` under ``"batched"``.

    Parameters
    ----------
    name
        A registry name (built-in or a user export).
    force
        Export again even when a verified file exists.
    """
    from . import export  # its names, so that tests and callers patch one place

    missing = export.missing_export_packages()
    if missing:
        raise ExportError(
            "exporting the batched encoder needs the export extra; missing: "
            + ", ".join(missing) + ". Install it with: pip install 'napari-medsam[export]'")
    from napari_medsam.engine.model_files import file_sha256
    from napari_medsam.engine.onnx_model import (
        BATCHED_FILENAME,
        BATCHED_INFO_KEY,
        verified_batched_encoder,
    )

    from .builders import CheckpointError, build_model

    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise ExportError(str(exc.args[0])) from exc
    target = spec.directory
    info_path = target / EXPORT_INFO
    if not info_path.is_file():
        if not spec.builtin:
            raise ExportError(f"{name!r} has not been exported; export it first")
        export.export_model(name)
    if not force:
        found = verified_batched_encoder(spec)
        if found is not None:
            info = json.loads(info_path.read_text()).get(BATCHED_INFO_KEY, {})
            logger.info("batched encoder of %s already exported: %s", name, found)
            return BatchedExportResult(spec, found, float(info.get("max_abs_diff_batch", 0.0)),
                                       float(info.get("max_abs_diff_torch", 0.0)), 0.0)
    start = time.perf_counter()
    info = json.loads(info_path.read_text())
    checkpoint = model_checkpoint(spec, info)
    try:
        model = build_model(spec.architecture, checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    final = target / BATCHED_FILENAME
    tmp = target / f".{BATCHED_FILENAME}.{os.getpid()}.tmp"
    try:
        batch_diff, torch_diff = _export_batched_file(model, tmp)
        if not batch_diff <= BATCH_TOLERANCE:
            raise ExportError(f"batched encoder: a batch of {BATCH_CHECK} differs from "
                              f"batch-1 calls by {batch_diff:.2e} (> {BATCH_TOLERANCE}); the "
                              "file was not kept")
        if not torch_diff <= PARITY_TOLERANCE:
            raise ExportError(f"batched encoder differs from PyTorch by {torch_diff:.2e} "
                              f"(> {PARITY_TOLERANCE}); the file was not kept")
        digest = file_sha256(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    import torch

    info = json.loads(info_path.read_text())  # re-read: keep what others wrote meanwhile
    info[BATCHED_INFO_KEY] = {
        "filename": BATCHED_FILENAME, "sha256": digest, "batch_axis": BATCH_AXIS,
        "checked_batch": BATCH_CHECK, "max_abs_diff_batch": batch_diff,
        "max_abs_diff_torch": torch_diff, "torch": torch.__version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(info_path, info)
    seconds = time.perf_counter() - start
    logger.info("exported the batched encoder of %s to %s in %.1f s (batch-%d vs batch-1 "
                "%.1e, vs PyTorch %.1e)", name, final, seconds, BATCH_CHECK, batch_diff,
                torch_diff)
    return BatchedExportResult(spec, final, batch_diff, torch_diff, seconds)

"""The ONNX Runtime implementation of :class:`~napari_medsam.engine.protocol.PromptModel`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from napari_medsam.models.registry import ModelSpec
from napari_medsam.paths import cache_dir

from . import providers as prov
from .model_files import ModelFileError, ensure_model_files
from .preprocess import postprocess_logits, preprocess_slice, prompt_arrays
from .protocol import Box, Embedding, Point, Prediction

logger = logging.getLogger(__name__)


def _session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxPromptModel:
    """A SAM-style model run by ONNX Runtime (encoder and decoder sessions).

    Parameters
    ----------
    spec
        The registry entry (input size, preprocessing, files).
    device
        ``"auto"``, ``"cuda"`` or ``"cpu"``; see :func:`providers.requested_providers`.
    threads
        Intra-op threads for the CPU provider (default: ONNX Runtime's choice, all cores).
    auto_export
        Export a missing built-in model on first use when the export extra is installed.
    """

    def __init__(self, spec: ModelSpec, device: str = "auto", *, threads: int | None = None,
                 auto_export: bool = True) -> None:
        import onnxruntime as ort

        self.spec = spec
        self.name = spec.name
        self.device = device
        paths = ensure_model_files(spec, auto_export=auto_export)
        requested = prov.requested_providers(device, ort.get_available_providers())
        trt_cache = str(cache_dir() / "tensorrt")
        if prov.TENSORRT in requested:
            os.makedirs(trt_cache, exist_ok=True)
        options = prov.provider_options(requested, trt_cache)
        try:
            self._encoder = ort.InferenceSession(str(paths["encoder"]), _session_options(threads),
                                                 providers=requested, provider_options=options)
            self._decoder = ort.InferenceSession(str(paths["decoder"]), _session_options(threads),
                                                 providers=requested, provider_options=options)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelFileError(
                f"{spec.display_name}: ONNX Runtime cannot load {paths['encoder'].parent}: "
                f"{exc}. Fix: run `napari-medsam export-model --force`."
            ) from exc
        self._providers = list(self._encoder.get_providers())
        wanted = requested[0]
        if self._providers[0] != wanted:
            logger.warning("%s requested but %s runs", prov.describe([wanted]),
                           prov.describe(self._providers))
        logger.info("%s runs on %s", spec.name, ", ".join(self._providers))
        self._normalize = spec.preprocessing.get("normalize", "minmax")
        low = spec.low_res_size
        self._no_mask = np.zeros((1, 1, low, low), dtype=np.float32)

    @property
    def providers(self) -> list[str]:
        """Execution providers that really run (``session.get_providers()``)."""
        return list(self._providers)

    @property
    def device_name(self) -> str:
        return prov.describe(self._providers)

    def preprocess(self, image2d: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The encoder input for a slice (see :mod:`.preprocess`)."""
        return preprocess_slice(image2d, self.spec.input_size, self._normalize)

    def embed_preprocessed(self, tensor: np.ndarray, original_size: tuple[int, int],
                           resized_size: tuple[int, int]) -> Embedding:
        (features,) = self._encoder.run(None, {"image": tensor})
        return Embedding(features=features, original_size=tuple(original_size),
                         resized_size=tuple(resized_size), input_size=self.spec.input_size,
                         model=self.name)

    def embed(self, image2d: np.ndarray) -> Embedding:
        """Encode one 2D slice already mapped to 0..255 (uint8 or float)."""
        tensor, resized = self.preprocess(image2d)
        return self.embed_preprocessed(tensor, np.shape(image2d), resized)

    def decode(self, embedding: Embedding, point_coords: np.ndarray, point_labels: np.ndarray,
               mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw decoder call: low-res logits [1, 4, L, L] and IoU [1, 4]."""
        if embedding.model != self.name:
            raise ValueError(f"embedding was made by {embedding.model!r}, not {self.name!r}")
        has_mask = mask_input is not None
        mask = self._no_mask if not has_mask else \
            np.asarray(mask_input, dtype=np.float32).reshape(self._no_mask.shape)
        feeds = {
            "image_embeddings": embedding.features.astype(np.float32, copy=False),
            "point_coords": point_coords,
            "point_labels": point_labels,
            "mask_input": mask,
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        }
        low_res, iou = self._decoder.run(None, feeds)
        return low_res, iou

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Point] | None = None,
                mask_input: np.ndarray | None = None, output: int = 0) -> Prediction:
        """Mask for a box and/or clicks on an embedded slice.

        ``output`` picks the decoder's mask token: 0 is the single-mask output that SAM and
        LiteMedSAM use for boxes, 1-3 the multimask outputs.
        """
        coords, labels = prompt_arrays(box, points, embedding.original_size,
                                       embedding.input_size)
        low_res, iou = self.decode(embedding, coords, labels, mask_input)
        low = low_res[0, output]
        logits = postprocess_logits(low, embedding.resized_size, embedding.original_size,
                                    embedding.input_size)
        return Prediction(logits=logits, mask=logits > 0, iou=float(iou[0, output]),
                          low_res_logits=low)

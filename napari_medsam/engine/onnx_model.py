"""The ONNX Runtime implementation of :class:`~napari_medsam.engine.protocol.PromptModel`.

Besides the batch-1 encoder and the decoder, a model can have ``encoder_batched.onnx``: the
same encoder exported with a symbolic batch axis (:func:`napari_medsam.models.export.
export_batched_encoder`). :meth:`OnnxPromptModel.encode_batch` runs it, several slices per
call; the volume embedder uses it on CUDA/TensorRT. It is optional: without it (or when it
fails) the batch-1 encoder runs once per slice, with the same results.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_medsam.models.registry import ModelSpec
from napari_medsam.paths import cache_dir

from . import providers as prov
from .model_files import ModelFileError, ensure_model_files, file_digest
from .preprocess import postprocess_logits, preprocess_slice, prompt_arrays
from .protocol import BatchEncoder, Box, Click, Embedding, Prediction

logger = logging.getLogger(__name__)

#: The batch-dynamic encoder beside ``encoder.onnx``, and its record in ``export.json``.
BATCHED_FILENAME = "encoder_batched.onnx"
BATCHED_INFO_KEY = "batched"


def batched_encoder_path(spec: ModelSpec) -> Path:
    """Where the batch-dynamic encoder of ``spec`` lives (it may not exist)."""
    return spec.directory / BATCHED_FILENAME


def verified_batched_encoder(spec: ModelSpec) -> Path | None:
    """The batch-dynamic encoder when it exists and matches the exporter's record.

    The file is written on this machine only (on demand), so the sha256 that
    ``export.json`` records for it is the reference; a file that does not match it (or has
    no record) is ignored with a warning.
    """
    path = batched_encoder_path(spec)
    if not path.is_file():
        return None
    try:
        info = json.loads((spec.directory / "export.json").read_text())
        expected = (info.get(BATCHED_INFO_KEY) or {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        expected = None
    if expected and file_digest(path) == expected:
        return path
    logger.warning("%s: %s does not match the exporter's record in export.json; ignoring it "
                   "(export it again: export_batched_encoder(%r, force=True))", spec.name,
                   path, spec.name)
    return None


def _export_extra_missing() -> list[str]:
    from napari_medsam.models.export import missing_export_packages

    return missing_export_packages()


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
        Export a missing built-in model on first use when the export extra is installed;
        on CUDA/TensorRT also the batched encoder, the first time :meth:`encode_batch`
        needs it.
    batch_size
        Slices per call of the batched encoder (default :func:`providers.gpu_batch_size`:
        ``$NAPARI_MEDSAM_GPU_BATCH`` or 8).
    """

    #: ONNX Runtime runs the exported float32 graph.
    precision = "f32"

    def __init__(self, spec: ModelSpec, device: str = "auto", *, threads: int | None = None,
                 auto_export: bool = True, batch_size: int | None = None) -> None:
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
        self._requested, self._trt_cache, self._threads = requested, trt_cache, threads
        self._auto_export = auto_export
        self.batch_size = prov.gpu_batch_size(batch_size)
        self._batched = None
        self._batched_error: str | None = None
        self._batched_lock = threading.Lock()
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

    def with_decoder(self, path: str | Path) -> OnnxPromptModel:
        """This model with another ``decoder.onnx`` (e.g. adapted to one scan's object).

        The encoder session is shared, and so are the embeddings: a session on the returned
        model reuses every slice this one embedded.
        """
        import copy

        import onnxruntime as ort

        other = copy.copy(self)
        options = prov.provider_options(self._requested, self._trt_cache)
        other._decoder = ort.InferenceSession(str(path), _session_options(self._threads),
                                              providers=self._requested,
                                              provider_options=options)
        return other

    @property
    def providers(self) -> list[str]:
        """Execution providers that really run (``session.get_providers()``)."""
        return list(self._providers)

    @property
    def device_name(self) -> str:
        return prov.describe(self._providers)

    @property
    def batch_encoder(self) -> BatchEncoder:
        """The batched encoder capability: this model (:meth:`encode_batch`)."""
        return self

    @property
    def async_encoder(self) -> None:
        """ONNX Runtime keeps no requests in flight."""
        return None

    @property
    def on_gpu(self) -> bool:
        """Whether the encoder really runs on CUDA or TensorRT."""
        return prov.runs_on_gpu(self._providers)

    # -- the batched encoder ---------------------------------------------------------------

    @property
    def batching(self) -> bool:
        """Whether :meth:`encode_batch` can run the batched encoder: it is loaded, on disk,
        or exportable here (``auto_export`` on a GPU with the export extra), and has not
        failed."""
        if self._batched_error is not None or self.batch_size < 2:
            return False
        if self._batched is not None or batched_encoder_path(self.spec).is_file():
            return True
        return self._auto_export and self.on_gpu and not _export_extra_missing()

    def _disable_batching(self, reason: str) -> None:
        if self._batched_error is None:
            logger.warning("%s: batched encoder off, encoding one slice per call (same "
                           "results): %s", self.name, reason)
        self._batched_error = reason
        self._batched = None

    def _export_batched(self) -> Path | None:
        missing = _export_extra_missing()
        if missing:
            logger.info("%s: no batched encoder and no export extra (%s) to make it; one "
                        "slice per call", self.name, ", ".join(missing))
            return None
        from napari_medsam.models.export import ExportError, export_batched_encoder

        logger.info("Exporting the batched encoder of %s (first GPU volume)...", self.name)
        try:
            return export_batched_encoder(self.name).path
        except Exception as exc:  # ExportError, or whatever torch raises: loop instead
            if not isinstance(exc, ExportError):
                logger.debug("batched export of %s failed", self.name, exc_info=True)
            self._disable_batching(f"export failed: {exc}")
            return None

    def batched_session(self, *, export: bool | None = None):
        """The ONNX Runtime session of ``encoder_batched.onnx``, or None (batch-1 loop).

        Parameters
        ----------
        export
            Export the file when it is missing; default: when ``auto_export`` is on and the
            model runs on a GPU (on the CPU one call per slice is as fast).
        """
        with self._batched_lock:
            if self._batched is not None or self._batched_error is not None:
                return self._batched
            path = verified_batched_encoder(self.spec)
            if path is None and (self._auto_export and self.on_gpu if export is None
                                 else export):
                path = self._export_batched()
            if path is None:
                return None
            import onnxruntime as ort

            size = self.spec.input_size
            options = prov.provider_options(
                self._requested, self._trt_cache,
                trt_profile=prov.trt_batch_profile("image", self.batch_size, size))
            try:
                session = ort.InferenceSession(str(path), _session_options(self._threads),
                                               providers=self._requested,
                                               provider_options=options)
            except Exception as exc:  # onnxruntime raises its own exception types
                self._disable_batching(f"ONNX Runtime cannot load {path}: {exc}")
                return None
            if session.get_providers()[0] != self._providers[0]:
                logger.warning("%s: the batched encoder runs on %s, the encoder on %s",
                               self.name, prov.describe(session.get_providers()),
                               self.device_name)
            logger.info("%s: batched encoder (up to %d slices per call) on %s", self.name,
                        self.batch_size, ", ".join(session.get_providers()))
            self._batched = session
            return session

    def encode_batch(self, tensor: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, C, E, E]`` of N preprocessed slices ``[N, 3, S, S]``.

        Runs the batched encoder in chunks of :attr:`batch_size` when it is available, else
        (and for N = 1, and after a failure, which turns batching off with one warning) the
        batch-1 encoder once per slice. Both give the same embeddings within float
        rounding (checked at export: <= 1e-4).
        """
        tensor = np.ascontiguousarray(tensor, dtype=np.float32)
        size = self.spec.input_size
        if tensor.ndim != 4 or tensor.shape[1:] != (3, size, size):
            raise ValueError(f"expected preprocessed slices [N, 3, {size}, {size}], got "
                             f"{tensor.shape}")
        count = len(tensor)
        session = self.batched_session() if count > 1 and self.batch_size > 1 else None
        if session is not None:
            try:
                parts = [session.run(None, {"image": tensor[i:i + self.batch_size]})[0]
                         for i in range(0, count, self.batch_size)]
                return parts[0] if len(parts) == 1 else np.concatenate(parts)
            except Exception as exc:  # e.g. out of GPU memory: the batch-1 loop still runs
                self._disable_batching(f"{type(exc).__name__}: {exc}")
        return np.concatenate([self._encoder.run(None, {"image": tensor[i:i + 1]})[0]
                               for i in range(count)])

    def embed_batch(self, images: Sequence[np.ndarray]) -> list[Embedding]:
        """Encode several 2D slices (0..255) in one batched call; see :meth:`encode_batch`.

        The slices may differ in size. Each embedding equals :meth:`embed`'s for the same
        slice within float rounding.
        """
        prepared = [self.preprocess(image) for image in images]
        if not prepared:
            return []
        features = self.encode_batch(np.concatenate([tensor for tensor, _ in prepared]))
        return [Embedding(features=features[i:i + 1].copy(),
                          original_size=tuple(np.shape(image)), resized_size=tuple(resized),
                          input_size=self.spec.input_size, model=self.spec.encoder_model)
                for i, (image, (_, resized)) in enumerate(zip(images, prepared, strict=True))]

    def preprocess(self, image2d: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The encoder input for a slice (see :mod:`.preprocess`)."""
        return preprocess_slice(image2d, self.spec.input_size, self._normalize)

    def embed_preprocessed(self, tensor: np.ndarray, original_size: tuple[int, int],
                           resized_size: tuple[int, int]) -> Embedding:
        (features,) = self._encoder.run(None, {"image": tensor})
        return Embedding(features=features, original_size=tuple(original_size),
                         resized_size=tuple(resized_size), input_size=self.spec.input_size,
                         model=self.spec.encoder_model)

    def embed(self, image2d: np.ndarray) -> Embedding:
        """Encode one 2D slice already mapped to 0..255 (uint8 or float)."""
        tensor, resized = self.preprocess(image2d)
        return self.embed_preprocessed(tensor, np.shape(image2d), resized)

    def decode(self, embedding: Embedding, point_coords: np.ndarray, point_labels: np.ndarray,
               mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw decoder call: low-res logits [1, 4, L, L] and IoU [1, 4]."""
        if embedding.model != self.spec.encoder_model:
            raise ValueError(f"embedding was made by the encoder of {embedding.model!r}, but "
                             f"{self.name!r} decodes {self.spec.encoder_model!r}'s embeddings")
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
                points: Sequence[Click] | None = None,
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

"""The OpenVINO implementation of :class:`~napari_medsam.engine.protocol.PromptModel`.

It compiles the same ONNX files as :class:`~.onnx_model.OnnxPromptModel` for the CPU and
shares its slice/prompt preprocessing and logit postprocessing (the very same methods), so
only the two network calls differ.

Interactive calls use an encoder compiled with the ``LATENCY`` hint (one stream, all
threads). Whole-volume embedding (:meth:`OpenVINOPromptModel.iter_encode`) compiles a second
encoder lazily with the ``THROUGHPUT`` hint and keeps several infer requests in flight.
Compiled models are cached as blobs under ``<cache>/openvino/<version>-<precision>-<hint>``
(OpenVINO's ``CACHE_DIR``, one folder per compile configuration), which makes the next start
faster. OpenVINO's own cache key ignores the precision hint: a blob compiled at f32 would be
imported for bf16 (OpenVINO 2026.4 then crashes at the first inference on CPUs with AMX), so
each precision, performance hint and OpenVINO version gets a folder of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path

import numpy as np

from napari_medsam.models.registry import ModelSpec
from napari_medsam.paths import cache_dir

from . import backends
from .model_files import ModelFileError, ensure_model_files
from .onnx_model import OnnxPromptModel
from .protocol import AsyncEncoder, Embedding

logger = logging.getLogger(__name__)

LATENCY = "LATENCY"
THROUGHPUT = "THROUGHPUT"


#: Who may run the decoder (see :class:`OpenVINOPromptModel`).
DECODERS = ("auto", "onnxruntime", "openvino")
#: ``decoder="auto"``: ONNX Runtime's CPU decoder is about twice as fast as OpenVINO's on
#: the same file (about 20 ms against 42 ms per prompt on two CPU cores), with the same
#: logits within 1e-4.
DEFAULT_DECODER = "onnxruntime"


def _onnxruntime_decoder(path, threads: int | None):
    """An ONNX Runtime CPU session for ``decoder.onnx``, or None (logged) when it fails."""
    try:
        import onnxruntime as ort

        from .onnx_model import _session_options

        return ort.InferenceSession(str(path), _session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # missing package, broken file: OpenVINO decodes instead
        logger.warning("ONNX Runtime cannot run the decoder (%s); OpenVINO runs it", exc)
        return None


def compile_cache_folder(root: Path, precision: str, hint: str,
                         version: str | None = None) -> Path:
    """The compile-cache folder of one (OpenVINO version, precision, performance hint).

    Parameters
    ----------
    root
        ``<cache>/openvino``.
    precision
        The ``INFERENCE_PRECISION_HINT`` compiled with (``"f32"`` or ``"bf16"``).
    hint
        The ``PERFORMANCE_HINT`` (``"LATENCY"`` or ``"THROUGHPUT"``).
    version
        OpenVINO's version (default: the installed one); only its release part is used.
    """
    if version is None:
        import openvino as ov

        version = ov.get_version()
    release = re.sub(r"[^0-9A-Za-z.]+", "_", version.split("-")[0]) or "unknown"
    return Path(root) / f"ov{release}-{precision.lower()}-{hint.lower()}"


def _compiled_precision(compiled) -> str:
    """What a compiled model really computes in (``"f32"`` or ``"bf16"``)."""
    import openvino as ov

    value = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type, or its name
    return str(value.get_type_name() if isinstance(value, ov.Type) else value)


class OpenVINOPromptModel:
    """A SAM-style model compiled by OpenVINO for the CPU (encoder and decoder).

    Parameters
    ----------
    spec
        The registry entry (input size, preprocessing, files).
    device
        ``"auto"`` or ``"cpu"`` (OpenVINO's ``CPU`` device); ``"cuda"`` is refused.
    precision
        ``"auto"`` (:data:`.backends.DEFAULT_PRECISION`), ``"f32"`` or ``"bf16"`` for the
        encoder; the decoder always runs in f32 (it is cheap and shapes the mask edge).
    threads
        ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice, all cores).
    auto_export
        Export a missing built-in model on first use when the export extra is installed.
    compile_cache
        Keep compiled blobs under ``<cache>/openvino`` (faster second start), one folder per
        OpenVINO version, precision and performance hint (:func:`compile_cache_folder`).
    decoder
        What runs the (small, f32) prompt decoder: ``"openvino"``, ``"onnxruntime"`` (ONNX
        Runtime's CPU provider on the same ``decoder.onnx``), or ``"auto"``
        (:data:`DEFAULT_DECODER`). The encoder always runs on OpenVINO.
    """

    backend = backends.OPENVINO

    # Identical slice/prompt handling: the ONNX Runtime model's own methods.
    preprocess = OnnxPromptModel.preprocess
    embed = OnnxPromptModel.embed
    predict = OnnxPromptModel.predict

    def __init__(self, spec: ModelSpec, device: str = "auto", *, precision: str = "auto",
                 threads: int | None = None, auto_export: bool = True,
                 compile_cache: bool = True, decoder: str = "auto") -> None:
        import openvino as ov

        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")

        if device not in ("auto", "cpu"):
            raise ValueError(f"OpenVINO runs on the CPU here; device {device!r} is not "
                             "supported (use the onnxruntime backend for CUDA)")
        self.spec = spec
        self.name = spec.name
        self.device = device
        self.threads = threads
        paths = ensure_model_files(spec, auto_export=auto_export)
        self._paths = paths
        choice = backends.choose_precision(precision)
        self.native_bf16 = choice.native_bf16
        self._core = ov.Core()
        self.compile_dir = cache_dir() / "openvino" if compile_cache else None
        start = time.perf_counter()
        try:
            self._encoder = self._compile("encoder", LATENCY, choice.hint)
            self._ort_decoder = None
            if (DEFAULT_DECODER if decoder == "auto" else decoder) == "onnxruntime":
                self._ort_decoder = _onnxruntime_decoder(paths["decoder"], threads)
            self._decoder = None if self._ort_decoder is not None else \
                self._compile("decoder", LATENCY, backends.F32)
        except Exception as exc:  # openvino raises RuntimeError subclasses of its own
            raise ModelFileError(
                f"{spec.display_name}: OpenVINO cannot compile {paths['encoder'].parent}: "
                f"{exc}. Fix: run `napari-medsam export-model --force`, or use "
                f"--backend onnxruntime."
            ) from exc
        self.compile_seconds = time.perf_counter() - start
        self.precision = _compiled_precision(self._encoder)
        self._enc_request = self._encoder.create_infer_request()
        self._dec_request = None if self._decoder is None else self._decoder.create_infer_request()
        self._enc_lock = threading.Lock()
        self._dec_lock = threading.Lock()
        self._throughput = None
        self._queue_jobs: int | None = None
        self._throughput_lock = threading.Lock()
        self._normalize = spec.preprocessing.get("normalize", "minmax")
        low = spec.low_res_size
        self._no_mask = np.zeros((1, 1, low, low), dtype=np.float32)
        logger.info("%s runs on %s, decoder on %s (compiled in %.1f s)", spec.name,
                    self.device_name, self.decoder_runtime, self.compile_seconds)

    def _cache_folder(self, precision: str, hint: str) -> Path | None:
        """The compile-cache folder for one configuration, or None (no cache, or unwritable)."""
        if self.compile_dir is None:
            return None
        folder = compile_cache_folder(self.compile_dir, precision, hint)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("OpenVINO compile cache disabled (%s): %s", folder, exc)
            return None
        return folder

    def _compile(self, role: str, hint: str, precision: str, requests: int | None = None):
        config: dict[str, object] = {"PERFORMANCE_HINT": hint,
                                     "INFERENCE_PRECISION_HINT": precision}
        folder = self._cache_folder(precision, hint)
        if folder is not None:
            config["CACHE_DIR"] = str(folder)
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if requests:
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = int(requests)
        return self._core.compile_model(str(self._paths[role]), "CPU", config)

    def with_decoder(self, path: str | Path) -> OpenVINOPromptModel:
        """This model with another ``decoder.onnx`` (run by ONNX Runtime's CPU provider);
        the compiled encoder, and so the embeddings, are shared."""
        import copy

        session = _onnxruntime_decoder(path, self.threads)
        if session is None:
            raise ModelFileError(f"ONNX Runtime cannot load the decoder {path}")
        other = copy.copy(self)
        other._ort_decoder, other._decoder, other._dec_request = session, None, None
        other._dec_lock = threading.Lock()
        return other

    # -- what runs -------------------------------------------------------------------------

    @property
    def providers(self) -> list[str]:
        """What really runs, in the style of ONNX Runtime's provider names."""
        return [f"OpenVINO-CPU-{self.precision}"]

    @property
    def batch_encoder(self) -> None:
        """OpenVINO has no batched encoder here (:attr:`async_encoder` instead)."""
        return None

    @property
    def async_encoder(self) -> AsyncEncoder:
        """The in-flight encoder capability: this model (:meth:`iter_encode`)."""
        return self

    @property
    def decoder_runtime(self) -> str:
        """What runs the prompt decoder: ``"onnxruntime"`` or ``"openvino"``."""
        return "openvino" if self._ort_decoder is None else "onnxruntime"

    @property
    def device_name(self) -> str:
        return f"CPU (OpenVINO {self.precision})"

    @property
    def encoder_threads(self) -> int:
        """Threads of the interactive encoder (``INFERENCE_NUM_THREADS`` as compiled)."""
        return int(self._encoder.get_property("INFERENCE_NUM_THREADS"))

    # -- network calls ---------------------------------------------------------------------

    def embed_preprocessed(self, tensor: np.ndarray, original_size: tuple[int, int],
                           resized_size: tuple[int, int]) -> Embedding:
        """Run the encoder on a preprocessed [1, 3, S, S] tensor."""
        with self._enc_lock:  # outputs shared with the request: copied before the next call
            result = self._enc_request.infer({0: np.ascontiguousarray(tensor, np.float32)},
                                             share_outputs=True)
            features = np.array(result[0], dtype=np.float32, copy=True)
        return Embedding(features=features, original_size=tuple(original_size),
                         resized_size=tuple(resized_size), input_size=self.spec.input_size,
                         model=self.spec.encoder_model)

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
            "image_embeddings": np.ascontiguousarray(embedding.features, dtype=np.float32),
            "point_coords": np.ascontiguousarray(point_coords, dtype=np.float32),
            "point_labels": np.ascontiguousarray(point_labels, dtype=np.float32),
            "mask_input": mask,
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        }
        if self._ort_decoder is not None:  # thread-safe, returns fresh arrays
            low_res, iou = self._ort_decoder.run(None, feeds)
            return low_res, iou
        with self._dec_lock:
            result = self._dec_request.infer(feeds, share_outputs=True)
            low_res = np.array(result[0], dtype=np.float32, copy=True)
            iou = np.array(result[1], dtype=np.float32, copy=True)
        return low_res, iou

    # -- whole volumes ---------------------------------------------------------------------

    def throughput_encoder(self):
        """The encoder compiled with the THROUGHPUT hint (compiled on first use)."""
        with self._throughput_lock:
            if self._throughput is None:
                start = time.perf_counter()
                hint = backends.BF16 if self.precision == "bf16" else backends.F32
                self._throughput = self._compile("encoder", THROUGHPUT, hint)
                jobs = int(self._throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
                self._queue_jobs = max(1, jobs)
                logger.info("%s: throughput encoder compiled in %.1f s (%d streams, %d "
                            "requests)", self.name, time.perf_counter() - start,
                            int(self._throughput.get_property("NUM_STREAMS")), self._queue_jobs)
            return self._throughput

    def release_throughput(self) -> None:
        """Drop the THROUGHPUT encoder and its requests' buffers (~150 MiB per stream)."""
        with self._throughput_lock:
            self._throughput = None

    @property
    def parallel_requests(self) -> int:
        """Infer requests :meth:`iter_encode` keeps in flight (THROUGHPUT's optimum)."""
        if self._queue_jobs is None:
            self.throughput_encoder()
        return int(self._queue_jobs)

    def iter_encode(self, items: Iterable[tuple[Hashable, np.ndarray]]
                    ) -> Iterator[tuple[Hashable, np.ndarray]]:
        """Encode many preprocessed tensors with several infer requests in flight.

        Parameters
        ----------
        items
            ``(key, tensor)`` pairs; tensors are [1, 3, S, S] float32. Consumed lazily: the
            next tensor is prepared while the previous ones run.

        Yields
        ------
        (key, features)
            As each request finishes (not necessarily in input order); features are float32
            [1, 256, 64, 64]. Closing the generator waits for the requests in flight.
        """
        import openvino as ov

        compiled = self.throughput_encoder()
        queue = ov.AsyncInferQueue(compiled, self._queue_jobs)
        done: deque[tuple[Hashable, np.ndarray]] = deque()
        errors: list[BaseException] = []

        def on_done(request, key) -> None:
            try:
                done.append((key, np.array(request.get_output_tensor(0).data, copy=True)))
            except BaseException as exc:  # surfaced in the generator
                errors.append(exc)

        queue.set_callback(on_done)
        try:
            for key, tensor in items:
                # blocks while every request is busy
                queue.start_async({0: np.ascontiguousarray(tensor, np.float32)}, key)
                while done:
                    yield done.popleft()
                if errors:
                    raise errors[0]
            queue.wait_all()
            if errors:
                raise errors[0]
            while done:
                yield done.popleft()
        finally:
            queue.wait_all()

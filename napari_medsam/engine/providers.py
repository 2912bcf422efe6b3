"""ONNX Runtime execution providers: what to ask for, and what really runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Sequence
from functools import lru_cache

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
GPU_PROVIDERS = (TENSORRT, CUDA)

#: Slices per encoder call when a volume is embedded on CUDA/TensorRT (with the batched
#: encoder); ``$NAPARI_MEDSAM_GPU_BATCH`` overrides it (1 turns batching off).
DEFAULT_GPU_BATCH = 8
GPU_BATCH_ENV = "NAPARI_MEDSAM_GPU_BATCH"
MAX_GPU_BATCH = 64


@lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or a GPU)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


@lru_cache(maxsize=1)
def tensorrt_available() -> bool:
    """Whether TensorRT's runtime library can be loaded."""
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so",
                 ctypes.util.find_library("nvinfer")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def requested_providers(device: str, available: list[str], *, gpu_count: int | None = None,
                        has_tensorrt: bool | None = None) -> list[str]:
    """Providers to ask ONNX Runtime for, best first; CPU always last.

    Parameters
    ----------
    device
        ``"auto"`` (TensorRT, then CUDA, then CPU), ``"cuda"`` (CUDA, then CPU) or ``"cpu"``.
    available
        ``onnxruntime.get_available_providers()``: what the installed package was built with
        (``onnxruntime-gpu`` lists CUDA even on a machine with no GPU).
    gpu_count, has_tensorrt
        Overrides for tests; by default the CUDA driver and TensorRT library are probed.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU]
    gpus = cuda_device_count() if gpu_count is None else gpu_count
    trt = tensorrt_available() if has_tensorrt is None else has_tensorrt
    chosen: list[str] = []
    if CUDA not in available:
        logger.warning("No GPU support in this onnxruntime build (%s); running on the CPU. "
                       "Install onnxruntime-gpu for CUDA.", ", ".join(available))
    elif gpus == 0:
        logger.warning("No CUDA GPU found; running on the CPU.")
    else:
        if device == "auto" and trt and TENSORRT in available:
            chosen.append(TENSORRT)
        chosen.append(CUDA)
    chosen.append(CPU)
    return chosen


def provider_options(providers: list[str], cache_dir: str | None = None, *,
                     trt_profile: dict[str, str] | None = None) -> list[dict]:
    """Options for each provider (TensorRT keeps its engines in the user cache).

    Parameters
    ----------
    providers
        The providers asked for, best first.
    cache_dir
        Folder for TensorRT's engine cache.
    trt_profile
        TensorRT shape-range options for an input with a dynamic axis
        (:func:`trt_batch_profile`); ignored by the other providers.
    """
    options: list[dict] = []
    for name in providers:
        if name == TENSORRT:
            opts: dict[str, str] = {}
            if cache_dir:
                opts.update({"trt_engine_cache_enable": "True",
                             "trt_engine_cache_path": cache_dir})
            opts.update(trt_profile or {})
            options.append(opts)
        else:
            options.append({})
    return options


def trt_batch_profile(input_name: str, max_batch: int, input_size: int) -> dict[str, str]:
    """TensorRT's optimisation profile for batches of 1 to ``max_batch`` square images.

    Without it TensorRT builds an engine for the first batch size it sees and rebuilds when
    another one comes (the last batch of a volume is usually smaller).
    """
    def shape(batch: int) -> str:
        return f"{input_name}:{batch}x3x{input_size}x{input_size}"

    return {"trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(max_batch),
            "trt_profile_max_shapes": shape(max_batch)}


def runs_on_gpu(providers: Sequence[str]) -> bool:
    """Whether the first (really running) provider is CUDA or TensorRT."""
    return bool(providers) and providers[0] in GPU_PROVIDERS


def gpu_batch_size(value: str | int | None = None) -> int:
    """Slices per encoder call on a GPU: ``value``, else ``$NAPARI_MEDSAM_GPU_BATCH``, else
    :data:`DEFAULT_GPU_BATCH`; clipped to 1..:data:`MAX_GPU_BATCH` (a bad value is one
    warning and the default)."""
    if value is None:
        value = os.environ.get(GPU_BATCH_ENV) or DEFAULT_GPU_BATCH
    try:
        size = int(value)
    except (TypeError, ValueError):
        logger.warning("%s=%r is not a whole number; using %d", GPU_BATCH_ENV, value,
                       DEFAULT_GPU_BATCH)
        return DEFAULT_GPU_BATCH
    return min(max(size, 1), MAX_GPU_BATCH)


def describe(providers: list[str]) -> str:
    """A short user-facing name for what runs: "TensorRT", "CUDA" or "CPU"."""
    if not providers:
        return "none"
    return {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}.get(providers[0], providers[0])

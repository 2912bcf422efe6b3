"""ONNX Runtime execution providers: what to ask for, and what really runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


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


def provider_options(providers: list[str], cache_dir: str | None = None) -> list[dict]:
    """Options for each provider (TensorRT keeps its engines in the user cache)."""
    options: list[dict] = []
    for name in providers:
        if name == TENSORRT and cache_dir:
            options.append({"trt_engine_cache_enable": "True",
                            "trt_engine_cache_path": cache_dir})
        else:
            options.append({})
    return options


def describe(providers: list[str]) -> str:
    """A short user-facing name for what runs: "TensorRT", "CUDA" or "CPU"."""
    if not providers:
        return "none"
    return {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}.get(providers[0], providers[0])

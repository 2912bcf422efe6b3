"""Which inference backend runs a model, at which precision, and how much memory to use.

Backends:

- ``onnxruntime``: the ONNX Runtime sessions of :class:`~.onnx_model.OnnxPromptModel`
  (TensorRT, CUDA or CPU execution providers);
- ``openvino``: :class:`~.openvino_model.OpenVINOPromptModel`, the same ONNX files compiled
  by OpenVINO for the CPU (``pip install 'napari-medsam[openvino]'``);
- ``remote``: :class:`~.remote_model.RemotePromptModel`, the encoder on a
  ``napari-medsam serve`` server and the decoder here (needs a server address).

``auto`` runs ONNX Runtime when a CUDA GPU really runs it (an ``onnxruntime-gpu`` build *and*
a device reported by the CUDA driver), otherwise OpenVINO when it is installed, otherwise
ONNX Runtime on the CPU. Nothing here imports onnxruntime or openvino at module level.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import providers as prov

logger = logging.getLogger(__name__)

AUTO = "auto"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
REMOTE = "remote"
BACKENDS = (AUTO, ONNXRUNTIME, OPENVINO, REMOTE)

F32 = "f32"
BF16 = "bf16"
PRECISIONS = (AUTO, F32, BF16)

#: OpenVINO's CPU inference precision when the caller does not choose one. ``f32``: bf16
#: changed box masks beyond the Dice >= 0.99 bar against fp32 ONNX Runtime on real slices
#: (8 of 32 CT and MRI slices, all small objects); OpenVINO itself would pick bf16 on CPUs
#: that have it.
DEFAULT_PRECISION = F32

OPENVINO_HINT = "pip install 'napari-medsam[openvino]'"

# Memory budget of the in-memory embedding cache: a fraction of the available RAM.
CACHE_FRACTION = 0.25
CACHE_MIN_BYTES = 256 * 1024**2
CACHE_MAX_BYTES = 2 * 1024**3
CACHE_FALLBACK_BYTES = 512 * 1024**2


@lru_cache(maxsize=1)
def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported (it is an optional extra)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # a broken install must not break the plugin
        logger.warning("openvino is installed but cannot be imported: %s", exc)
        return False
    return True


def onnxruntime_providers() -> list[str]:
    """``onnxruntime.get_available_providers()`` (what the installed build supports)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cuda_runs(available: list[str] | None = None, gpu_count: int | None = None) -> bool:
    """Whether ONNX Runtime would really run on a CUDA GPU here (build and device)."""
    available = onnxruntime_providers() if available is None else available
    gpus = prov.cuda_device_count() if gpu_count is None else gpu_count
    return prov.CUDA in available and gpus > 0


def choose_backend(backend: str = AUTO, device: str = AUTO, *,
                   available: list[str] | None = None, gpu_count: int | None = None,
                   has_openvino: bool | None = None) -> str:
    """The backend that runs a model: ``"onnxruntime"``, ``"openvino"`` or ``"remote"``.

    Parameters
    ----------
    backend
        ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"remote"`` (returned as it is:
        the server decides what runs there).
    device
        ``"auto"``, ``"cuda"`` or ``"cpu"`` (see :func:`.providers.requested_providers`).
        ``"cuda"`` always means ONNX Runtime (OpenVINO does not run NVIDIA GPUs).
    available, gpu_count, has_openvino
        Overrides for tests: ONNX Runtime's available providers, the number of CUDA devices
        and whether OpenVINO imports. By default they are probed.

    Raises
    ------
    ValueError
        For an unknown backend or device, or ``backend="openvino"`` with ``device="cuda"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in prov.DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(prov.DEVICES)}")
    if backend == REMOTE:
        return REMOTE
    if backend == OPENVINO and device == "cuda":
        raise ValueError("OpenVINO runs on the CPU here, not on NVIDIA GPUs: use "
                         "--backend onnxruntime (or auto) with --device cuda")
    ov_ok = openvino_available() if has_openvino is None else has_openvino
    if backend == OPENVINO:
        if ov_ok:
            return OPENVINO
        logger.warning("OpenVINO is not installed (%s); running ONNX Runtime instead.",
                       OPENVINO_HINT)
        return ONNXRUNTIME
    if backend == ONNXRUNTIME or device == "cuda":
        return ONNXRUNTIME
    if device == AUTO and cuda_runs(available, gpu_count):
        return ONNXRUNTIME
    return OPENVINO if ov_ok else ONNXRUNTIME


@dataclass(frozen=True)
class PrecisionChoice:
    """The OpenVINO CPU precision asked for, what compiles, and why.

    Attributes
    ----------
    requested
        What the caller asked for (``"auto"``, ``"f32"`` or ``"bf16"``).
    hint
        The ``INFERENCE_PRECISION_HINT`` passed to OpenVINO (``"f32"`` or ``"bf16"``).
    native_bf16
        Whether the CPU computes bf16 natively (``"BF16"`` in OpenVINO's
        ``OPTIMIZATION_CAPABILITIES``, i.e. AVX512-BF16 or AMX).
    """

    requested: str
    hint: str
    native_bf16: bool


def cpu_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. ``["BF16", "FP32", ...]``)."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def choose_precision(requested: str = AUTO, capabilities: list[str] | None = None
                     ) -> PrecisionChoice:
    """The precision hint for OpenVINO's CPU plugin.

    ``auto`` means :data:`DEFAULT_PRECISION`. ``bf16`` on a CPU without native bf16 falls
    back to ``f32`` with a warning: OpenVINO itself ignores the hint there (it keeps f32), so
    asking for it would only make the log lie.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of "
                         f"{', '.join(PRECISIONS)}")
    caps = cpu_capabilities() if capabilities is None else capabilities
    native = "BF16" in caps
    hint = DEFAULT_PRECISION if requested == AUTO else requested
    if hint == BF16 and not native:
        logger.warning("This CPU has no native bf16 (OpenVINO capabilities: %s); "
                       "running f32.", ", ".join(caps))
        hint = F32
    return PrecisionChoice(requested=requested, hint=hint, native_bf16=native)


def default_threads() -> int:
    """CPU cores this process may use (``sched_getaffinity`` where available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Memory available to new allocations: psutil if installed, else ``MemAvailable``."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed or unsupported platform
        pass
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_cache_bytes(available: int | None = None) -> int:
    """Default budget of the in-memory embedding cache.

    A quarter of the available RAM, clamped to 256 MiB .. 2 GiB (one LiteMedSAM embedding is
    2 MiB in float16, so 128 .. 1024 slices); 512 MiB when the available memory is unknown.
    An 8 GiB laptop with ~3 GiB free gets 768 MiB: every axial slice of a 512x512x300 CT.

    Parameters
    ----------
    available
        Available bytes (default: :func:`available_memory_bytes`).
    """
    free = available_memory_bytes() if available is None else available
    if not free:
        return CACHE_FALLBACK_BYTES
    budget = int(free * CACHE_FRACTION)
    return int(min(max(budget, CACHE_MIN_BYTES), CACHE_MAX_BYTES))

"""How the slices of a volume reach the encoder, and in which order.

Order (:func:`slice_order`): the current slice first, then outward (``start, start+1,
start-1, start+2, ...``), so the slices the user is about to visit are ready first.

How slices reach the encoder (:func:`encode_plan`):

- OpenVINO: the current slice on the interactive LATENCY request (ready soonest), then
  several infer requests in flight on an encoder compiled with the THROUGHPUT hint
  (:meth:`~.openvino_model.OpenVINOPromptModel.iter_encode`; results arrive roughly in
  order), when that measures faster than one LATENCY request at a time (see
  :data:`OPENVINO_PARALLEL`);
- ONNX Runtime on CUDA/TensorRT: batches of ``model.batch_size`` slices (default 8,
  ``$NAPARI_MEDSAM_GPU_BATCH``) per call of the batch-dynamic encoder
  (``encoder_batched.onnx``, exported on first use; :meth:`~.onnx_model.OnnxPromptModel.
  encode_batch`), the next batch prepared on a helper thread while the GPU runs
  (``"batched"``). Without that file (no export extra), or once it fails, a loop over the
  batch-1 encoder with the next input prepared meanwhile (``"pipelined-loop"``);
- ONNX Runtime on the CPU: a plain loop (the session already uses every core; a batch gains
  nothing there).

:func:`plan_for_providers` is the ONNX Runtime part of that choice, a pure function of the
providers that really run (so it is tested with made-up provider lists on a CPU machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import providers as prov
from .protocol import PromptModel

#: Whether OpenVINO embeds volumes with several requests in flight (THROUGHPUT hint) rather
#: than one LATENCY request at a time; chosen from benchmarks/embed_volume.py (~15% less CPU
#: time per slice on 2 cores). It costs ~150 MiB of buffers per stream while a volume is
#: embedded, so it is only used with at least :data:`PARALLEL_MIN_FREE` bytes available.
OPENVINO_PARALLEL = True
PARALLEL_MIN_FREE = 3 * 1024**3


@dataclass(frozen=True)
class EncodePlan:
    """How a model's encoder is fed during whole-volume embedding.

    Attributes
    ----------
    kind
        ``"openvino-async"`` (several infer requests in flight), ``"batched"`` (GPU: up to
        ``in_flight`` slices per call of the batch-dynamic encoder, the next batch prepared
        meanwhile), ``"pipelined-loop"`` (GPU: one batch-1 call per slice, the next input
        prepared meanwhile) or ``"loop"``.
    in_flight
        Slices being encoded at the same time.
    input_shape
        Shape of a full encoder input (``[batch, 3, S, S]``; the last batch of a volume
        may be smaller).
    """

    kind: str
    in_flight: int
    input_shape: tuple[int, int, int, int]


def encode_plan(model: PromptModel, parallel: bool | None = None) -> EncodePlan:
    """The :class:`EncodePlan` for ``model`` (see the module docstring).

    Parameters
    ----------
    model
        A prompt model; its ``async_encoder`` (OpenVINO) and ``batch_encoder`` (ONNX
        Runtime) capabilities and the execution ``providers`` it reports decide the plan.
    parallel
        Force (True) or forbid (False) several OpenVINO requests in flight; None uses
        :data:`OPENVINO_PARALLEL` when :data:`PARALLEL_MIN_FREE` bytes are available.
    """
    size = int(model.spec.input_size)
    shape = (1, 3, size, size)
    async_encoder = model.async_encoder
    if async_encoder is not None:
        if parallel is None:
            from .backends import available_memory_bytes

            free = available_memory_bytes()
            parallel = OPENVINO_PARALLEL and (free is None or free >= PARALLEL_MIN_FREE)
        if parallel:
            return EncodePlan("openvino-async", int(async_encoder.parallel_requests), shape)
    batch_encoder = model.batch_encoder
    batched = batch_encoder is not None and bool(batch_encoder.batching)
    return plan_for_providers(list(model.providers), size,
                              batch_size=batch_encoder.batch_size if batched else 1,
                              batched=batched)


def plan_for_providers(providers: Sequence[str], input_size: int, *, batch_size: int = 1,
                       batched: bool = False) -> EncodePlan:
    """The ONNX Runtime :class:`EncodePlan` for the providers that really run.

    Parameters
    ----------
    providers
        ``session.get_providers()``, best first (empty: the CPU).
    input_size
        The model's square input size.
    batch_size
        Slices per call of the batched encoder.
    batched
        Whether the model can run a batched encoder (the file exists or can be exported,
        and it has not failed).

    Returns
    -------
    EncodePlan
        ``"batched"`` on CUDA/TensorRT with a batched encoder and ``batch_size`` > 1,
        ``"pipelined-loop"`` on CUDA/TensorRT otherwise, ``"loop"`` on the CPU.
    """
    single = (1, 3, int(input_size), int(input_size))
    if not prov.runs_on_gpu(list(providers)):
        return EncodePlan("loop", 1, single)
    if batched and batch_size > 1:
        return EncodePlan("batched", int(batch_size),
                          (int(batch_size), 3, int(input_size), int(input_size)))
    return EncodePlan("pipelined-loop", 1, single)


def slice_order(size: int, start: int) -> list[int]:
    """``start`` first, then outward: start, start+1, start-1, start+2, start-2, ..."""
    if size <= 0:
        return []
    start = min(max(int(start), 0), size - 1)
    order = [start]
    for step in range(1, size):
        for index in (start + step, start - step):
            if 0 <= index < size:
                order.append(index)
    return order

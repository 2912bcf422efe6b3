"""What a model computes on one fixed input: ONNX files are verified by output, not by bytes.

The exported ``encoder.onnx`` is byte-identical on one machine, but not across CPUs: torch
folds constants with the CPU's own arithmetic, so an Intel CPU with AMX writes other bytes
than an AMD EPYC for the same weights (the outputs agree within 1e-5). A file whose sha256
is not known is therefore run once on :func:`smoke_inputs` and its outputs compared with the
model's fingerprint, taken from PyTorch (the registry holds it for built-in models; the
exporter records it in ``export.json`` for every export).

A fingerprint is small: the embedding's mean per channel, the first mask's logits averaged
over 16x16 blocks and the IoU predictions of a box prompt. Another model, or a damaged file,
moves these by far more than :data:`TOLERANCES`; a different CPU or runtime by less than 1 %
of them.

No torch and no onnxruntime imports here: the caller runs the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Largest allowed absolute difference per fingerprint part. ONNX Runtime (CPU) against
#: PyTorch on the smoke input: 3e-7 on the channel means, 3e-5 on the pooled logits.
TOLERANCES = {"encoder_channel_mean": 2e-4, "decoder_logits_16x16": 2e-2, "iou": 2e-3}
#: The parts that the encoder alone decides.
ENCODER_PARTS = ("encoder_channel_mean",)
_POOL = 16


def smoke_inputs(input_size: int, embed: int) -> dict[str, np.ndarray]:
    """A deterministic image-like input and a box prompt (the exporter's smoke run)."""
    yy, xx = np.mgrid[0:input_size, 0:input_size].astype(np.float32) / input_size
    blob = np.exp(-(((yy - 0.45) ** 2 + (xx - 0.55) ** 2) / 0.02)).astype(np.float32)
    image = np.stack([0.2 + 0.6 * blob + 0.1 * xx] * 3)[None].astype(np.float32)
    lo, hi = 0.3 * input_size, 0.75 * input_size
    return {
        "image": image,
        "point_coords": np.array([[[lo, lo], [hi, hi]]], dtype=np.float32),
        "point_labels": np.array([[2, 3]], dtype=np.float32),
        "mask_input": np.zeros((1, 1, 4 * embed, 4 * embed), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
    }


def summarize(embedding: np.ndarray, logits: np.ndarray, iou: np.ndarray) -> dict[str, list]:
    """The fingerprint of one smoke run.

    Parameters
    ----------
    embedding
        Encoder output [1, C, H, W].
    logits
        Decoder low-resolution masks [1, M, L, L] (the first mask is used).
    iou
        Decoder IoU predictions [1, M].
    """
    emb = np.asarray(embedding, dtype=np.float64)
    first = np.asarray(logits, dtype=np.float64)[0, 0]
    side = first.shape[0] // _POOL
    pooled = first[: side * _POOL, : side * _POOL].reshape(_POOL, side, _POOL, side)
    return {
        "encoder_channel_mean": [round(float(v), 7) for v in emb.mean(axis=(0, 2, 3))],
        "decoder_logits_16x16": [round(float(v), 4) for v in pooled.mean(axis=(1, 3)).ravel()],
        "iou": [round(float(v), 5) for v in np.asarray(iou, dtype=np.float64).ravel()],
    }


def differences(found: dict[str, Any], expected: dict[str, Any]) -> dict[str, float]:
    """Largest absolute difference per part (``inf`` where the shapes differ)."""
    out = {}
    for part in TOLERANCES:
        a = np.asarray(found.get(part, []), dtype=np.float64)
        b = np.asarray(expected.get(part, []), dtype=np.float64)
        out[part] = float(np.abs(a - b).max()) if a.shape == b.shape and a.size else np.inf
    return out


def mismatches(found: dict[str, Any], expected: dict[str, Any],
               parts: tuple[str, ...] = tuple(TOLERANCES)) -> list[str]:
    """Plain-words list of the parts that differ beyond :data:`TOLERANCES` (empty: same)."""
    diffs = differences(found, expected)
    return [f"{part} differs by {diffs[part]:.3g} (at most {TOLERANCES[part]:g} allowed)"
            for part in parts if not diffs[part] <= TOLERANCES[part]]

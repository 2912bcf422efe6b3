"""Separable resize weights that reproduce OpenCV's INTER_AREA and PyTorch's bilinear.

The LiteMedSAM reference resizes slices with ``cv2.resize(..., INTER_AREA)`` and resizes
logits back with ``F.interpolate(mode="bilinear", align_corners=False)``. Neither library is
needed at run time: each resize applies a few weighted taps per output pixel along each axis.
The taps are applied by gathering, not by BLAS matrix products: BLAS worker threads keep
spinning after a call and slow down the ONNX Runtime run that follows on a 2-core laptop.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of OpenCV's INTER_AREA along one axis.

    Downscaling averages the source pixels each output pixel covers (exact overlaps);
    upscaling uses OpenCV's area-mode linear coefficients.
    """
    weights = np.zeros((dst, src), dtype=np.float64)
    scale = src / dst
    if scale >= 1.0:
        for d in range(dst):
            lo, hi = d * scale, (d + 1) * scale
            first, last = int(math.floor(lo)), min(int(math.ceil(hi)), src)
            for s in range(first, last):
                overlap = min(hi, s + 1) - max(lo, s)
                if overlap > 1e-12:
                    weights[d, s] = overlap / scale
        return weights
    inv = dst / src
    for d in range(dst):
        s = int(math.floor(d * scale))
        f = (d + 1) - (s + 1) * inv
        f = 0.0 if f <= 0 else f - math.floor(f)
        if s < 0:
            s, f = 0, 0.0
        if s >= src - 1:
            s, f = src - 1, 0.0
        weights[d, s] += 1.0 - f
        if f:
            weights[d, s + 1] += f
    return weights


@lru_cache(maxsize=64)
def bilinear_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of ``F.interpolate(bilinear, align_corners=False)`` on one axis."""
    weights = np.zeros((dst, src), dtype=np.float64)
    scale = src / dst
    for d in range(dst):
        pos = max((d + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(pos)), src - 1)
        i1 = min(i0 + 1, src - 1)
        frac = pos - i0
        weights[d, i0] += 1.0 - frac
        weights[d, i1] += frac
    return weights


@lru_cache(maxsize=128)
def _taps(kind: str, src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse form of a (dst, src) weight matrix: indices and float32 weights, (dst, K)."""
    dense = area_weights(src, dst) if kind == "area" else bilinear_weights(src, dst)
    width = max(int((dense > 0).sum(axis=1).max()), 1)
    index = np.zeros((dst, width), dtype=np.intp)
    weight = np.zeros((dst, width), dtype=np.float32)
    for d in range(dst):
        nz = np.nonzero(dense[d])[0]
        index[d, : nz.size] = nz
        weight[d, : nz.size] = dense[d, nz]
    return index, weight


def _apply_taps(array: np.ndarray, kind: str, rows: int, cols: int) -> np.ndarray:
    data = np.asarray(array, dtype=np.float32)
    index, weight = _taps(kind, data.shape[0], rows)
    out_rows = np.zeros((rows, data.shape[1]), dtype=np.float32)
    for k in range(index.shape[1]):
        out_rows += weight[:, k, None] * data[index[:, k], :]
    index, weight = _taps(kind, data.shape[1], cols)
    out = np.zeros((rows, cols), dtype=np.float32)
    for k in range(index.shape[1]):
        out += out_rows[:, index[:, k]] * weight[None, :, k]
    return out


def resize_area(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize a 2D array like ``cv2.resize(image, (cols, rows), INTER_AREA)`` (float32)."""
    return _apply_taps(image, "area", rows, cols)


@lru_cache(maxsize=64)
def _fixed_point_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index and 11-bit coefficients of OpenCV's area-mode linear taps."""
    weights = area_weights(src, dst)
    first = (weights > 0).argmax(axis=1)  # the tap with weight 1 - f (never zero)
    padded = np.concatenate([weights, np.zeros((dst, 1))], axis=1)
    frac = padded[np.arange(dst), first + 1].astype(np.float32)
    a1 = np.rint(frac * 2048).astype(np.int64)
    a0 = np.rint((1.0 - frac) * 2048).astype(np.int64)
    return first, a0, a1


def resize_area_uint8(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``cv2.resize(uint8_image, (cols, rows), interpolation=INTER_AREA)`` without OpenCV.

    Bit-exact for upscaling (OpenCV's fixed-point linear taps: 11-bit coefficients, SIMD
    rounding) and for integer downscaling factors (block means, rounded as OpenCV does). Other
    downscaling factors average exact pixel overlaps in float32 like OpenCV; the summation
    order differs, which moves about one pixel in 10^5 by one grey level.
    """
    src_rows, src_cols = image.shape
    if src_rows >= rows and src_cols >= cols:
        if src_rows % rows == 0 and src_cols % cols == 0:
            fy, fx = src_rows // rows, src_cols // cols
            blocks = image.reshape(rows, fy, cols, fx).astype(np.int64).sum(axis=(1, 3))
            if fy == fx == 2:  # OpenCV's 2x2 SIMD path rounds half up
                return ((blocks + 2) // 4).astype(np.uint8)
            # other factors: sum * (1/area) in float32, rounded half to even
            scaled = blocks.astype(np.float32) * np.float32(1.0 / (fy * fx))
            return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        out = np.rint(resize_area(image, rows, cols))
        return np.clip(out, 0, 255).astype(np.uint8)
    img = image.astype(np.int64)
    xi, xa0, xa1 = _fixed_point_taps(src_cols, cols)
    yi, ya0, ya1 = _fixed_point_taps(src_rows, rows)
    horizontal = img[:, xi] * xa0 + img[:, np.minimum(xi + 1, src_cols - 1)] * xa1
    top = horizontal[yi] >> 4
    bottom = horizontal[np.minimum(yi + 1, src_rows - 1)] >> 4
    out = (((top * ya0[:, None]) >> 16) + ((bottom * ya1[:, None]) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def resize_bilinear(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize a 2D array like PyTorch's bilinear interpolation without align_corners."""
    return _apply_taps(array, "bilinear", rows, cols)

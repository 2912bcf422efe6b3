"""Slice and prompt transforms of the LiteMedSAM reference recipe (and SAM's variant).

Recipe: a slice already mapped to 0..255 (uint8) -> resize the longest side to the model
input (OpenCV INTER_AREA, bit-exact) -> min-max to [0, 1] -> pad bottom/right with zeros ->
3 channels. Boxes and clicks are scaled by the same factor; logits are cropped to the
resized area and resized back to the slice (bilinear, as ``F.interpolate``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .resize import resize_area_uint8, resize_bilinear

SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


class PromptError(ValueError):
    """A prompt is unusable (outside the slice, empty box, unknown label)."""


def resized_shape(rows: int, cols: int, target: int) -> tuple[int, int]:
    """Shape after resizing the longest side to ``target`` (rounded as the reference)."""
    scale = target / max(rows, cols)
    return int(rows * scale + 0.5), int(cols * scale + 0.5)


def to_uint8(image2d: np.ndarray) -> np.ndarray:
    """The slice as uint8 0..255 (values outside are clipped, NaN becomes 0)."""
    image = np.asarray(image2d)
    if image.dtype == np.uint8:
        return image
    image = np.nan_to_num(image.astype(np.float32, copy=False), nan=0.0)
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)


def preprocess_slice(image2d: np.ndarray, input_size: int, normalize: str = "minmax"
                     ) -> tuple[np.ndarray, tuple[int, int]]:
    """Model input [1, 3, S, S] float32 and the resized (rows, cols) for a 2D slice."""
    image = np.asarray(image2d)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice, got an array of shape {image.shape}")
    if min(image.shape) < 2:
        raise ValueError(f"slice of shape {image.shape} is too small to segment")
    rows, cols = resized_shape(*image.shape, input_size)
    resized = resize_area_uint8(to_uint8(image), rows, cols).astype(np.float32)
    padded = np.zeros((3, input_size, input_size), dtype=np.float32)
    if normalize == "minmax":
        low, high = float(resized.min()), float(resized.max())
        padded[:, :rows, :cols] = (resized - low) / max(high - low, 1e-8)
    elif normalize == "sam_pixel":
        padded[:, :rows, :cols] = (resized[None] - SAM_PIXEL_MEAN[:, None, None]) \
            / SAM_PIXEL_STD[:, None, None]
    else:
        raise ValueError(f"unknown normalisation {normalize!r}")
    return padded[None], (rows, cols)


def scale_factor(original_size: tuple[int, int], input_size: int) -> float:
    return input_size / max(original_size)


def check_box(box: Sequence[float], original_size: tuple[int, int]) -> np.ndarray:
    """Validate an (x_min, y_min, x_max, y_max) box and clip it to the slice."""
    arr = np.asarray(box, dtype=np.float64).reshape(-1)
    if arr.size != 4 or not np.all(np.isfinite(arr)):
        raise PromptError(f"a box needs 4 finite numbers (x_min, y_min, x_max, y_max), got {box}")
    x0, y0, x1, y1 = arr
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    rows, cols = original_size
    if x1 < 0 or y1 < 0 or x0 > cols - 1 or y0 > rows - 1:
        raise PromptError(f"box {tuple(arr)} lies outside the slice of {cols}x{rows} pixels")
    x0, x1 = np.clip([x0, x1], 0, cols - 1)
    y0, y1 = np.clip([y0, y1], 0, rows - 1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise PromptError(f"box {tuple(arr)} has no area inside the slice")
    return np.array([x0, y0, x1, y1])


def prompt_arrays(box: Sequence[float] | None, points: Sequence[Sequence[float]] | None,
                  original_size: tuple[int, int], input_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``point_coords`` [1, N, 2] and ``point_labels`` [1, N] in model-input pixels.

    Clicks come first, then the box corners (labels 2 and 3); without a box a padding point
    (label -1) is appended, as segment-anything does.
    """
    coords: list[tuple[float, float]] = []
    labels: list[float] = []
    rows, cols = original_size
    for point in points or ():
        if len(point) != 3:
            raise PromptError(f"a click needs (x, y, label), got {point}")
        x, y, label = (float(v) for v in point)
        if label not in (0.0, 1.0):
            raise PromptError(f"click label must be 1 (positive) or 0 (negative), got {label}")
        if not (0 <= x <= cols - 1 and 0 <= y <= rows - 1):
            raise PromptError(f"click ({x}, {y}) lies outside the slice of {cols}x{rows} pixels")
        coords.append((x, y))
        labels.append(label)
    if box is not None:
        x0, y0, x1, y1 = check_box(box, original_size)
        coords += [(x0, y0), (x1, y1)]
        labels += [2.0, 3.0]
    elif coords:
        coords.append((0.0, 0.0))
        labels.append(-1.0)
    if not coords:
        raise PromptError("a prompt needs a box or at least one click")
    scale = scale_factor(original_size, input_size)
    point_coords = (np.asarray(coords, dtype=np.float64) * scale).astype(np.float32)[None]
    point_labels = np.asarray(labels, dtype=np.float32)[None]
    return point_coords, point_labels


def postprocess_logits(low_res: np.ndarray, resized_size: tuple[int, int],
                       original_size: tuple[int, int], input_size: int) -> np.ndarray:
    """Low-resolution logits -> logits at the slice's size (crop padding, then resize)."""
    logits = np.asarray(low_res, dtype=np.float32)
    if logits.shape[-1] != input_size:
        logits = resize_bilinear(logits, input_size, input_size)
    cropped = logits[: resized_size[0], : resized_size[1]]
    return resize_bilinear(cropped, *original_size)

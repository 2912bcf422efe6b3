"""The simulated users: boxes and clicks from a reference mask, and the per-slice prompt loops.

Split out of :mod:`napari_medsam.evaluation`, which re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medsam.segmentation import SegmentationSession, SliceRef

__all__ = ["box_from_mask", "box_slices", "click_slices", "interior_click", "propagate_slices"]


def box_from_mask(mask2d: np.ndarray, jitter: int = 0,
                  rng: np.random.Generator | None = None) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max, y_max) around a 2D mask, x = column.

    Each side is moved outwards by a random 0..``jitter`` pixels (``rng``) and clipped to the
    slice; a box one pixel wide or tall is widened by one pixel (inside the slice) so that it
    has an area.
    """
    rows, cols = mask2d.shape
    ys, xs = np.nonzero(mask2d)
    if xs.size == 0:
        raise ValueError("box_from_mask needs a non-empty mask")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    if jitter > 0:
        if rng is None:
            rng = np.random.default_rng()
        dx0, dy0, dx1, dy1 = (int(v) for v in rng.integers(0, jitter + 1, size=4))
        x0, y0, x1, y1 = x0 - dx0, y0 - dy0, x1 + dx1, y1 + dy1
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(cols - 1, x1), min(rows - 1, y1)
    if x1 == x0:
        x1, x0 = (x1 + 1, x0) if x1 + 1 < cols else (x1, x0 - 1)
    if y1 == y0:
        y1, y0 = (y1 + 1, y0) if y1 + 1 < rows else (y1, y0 - 1)
    return x0, y0, x1, y1


def interior_click(mask2d: np.ndarray) -> tuple[int, int]:
    """(x, y) of the point farthest from the border of the largest connected component."""
    lab, n = ndimage.label(mask2d)
    if n == 0:
        raise ValueError("interior_click needs a non-empty mask")
    sizes = ndimage.sum(mask2d, lab, range(1, n + 1))
    largest = lab == (1 + int(np.argmax(sizes)))
    dist = ndimage.distance_transform_edt(largest)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _present_slices(mask3d: np.ndarray, axis: int) -> list[int]:
    other = tuple(a for a in range(3) if a != axis)
    return [int(i) for i in np.nonzero(mask3d.any(axis=other))[0]]


def _label_rng(seed: int | None, label: int) -> np.random.Generator:
    """One generator per label, so a label's boxes do not depend on the other labels."""
    return np.random.default_rng(None if seed is None else [int(seed), int(label)])


# -- simulated users --------------------------------------------------------------------------
def box_slices(session: SegmentationSession, reference: np.ndarray, axis: int = 0,
               jitter: int = 0, rng: np.random.Generator | None = None
               ) -> Iterator[tuple[int, tuple[int, int, int, int], np.ndarray]]:
    """The box user: ``(index, box, mask)`` for every slice where ``reference`` is present.

    ``reference`` is the label's boolean 3D mask; ``mask`` comes from
    ``session.predict_prompts(SliceRef(axis, index), [box])``, the widget's call.
    """
    for index in _present_slices(reference, axis):
        box = box_from_mask(np.take(reference, index, axis=axis), jitter, rng)
        mask = session.predict_prompts(SliceRef(axis, index), [box])
        yield index, box, np.asarray(mask, dtype=bool)


def click_slices(session: SegmentationSession, reference: np.ndarray, axis: int = 0
                 ) -> Iterator[tuple[int, tuple[int, int], np.ndarray]]:
    """The click user: ``(index, (x, y), mask)`` for every slice where ``reference`` is present.

    One positive click per slice at :func:`interior_click`, segmented by
    ``session.predict_prompts(ref, positives=[click])`` (the widget's call).
    """
    for index in _present_slices(reference, axis):
        click = interior_click(np.take(reference, index, axis=axis))
        mask = session.predict_prompts(SliceRef(axis, index), positives=[click])
        yield index, click, np.asarray(mask, dtype=bool)


def propagate_slices(session: SegmentationSession, reference: np.ndarray, axis: int = 0,
                     cancel: Callable[[], bool] | None = None
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """The propagate user: a tight box on the largest slice, then propagation.

    Yields ``(index, mask)``, the box's own slice first.
    """
    from napari_medsam.segmentation import propagation

    other = tuple(a for a in range(3) if a != axis)
    index = int(np.argmax(reference.sum(axis=other)))
    box = box_from_mask(np.take(reference, index, axis=axis))
    anchor = np.asarray(session.predict_prompts(SliceRef(axis, index), [box]), dtype=bool)
    yield index, anchor
    if not anchor.any():
        return
    for result in propagation.propagate(session, axis, {index: anchor}, cancel=cancel):
        if int(result.index) != index:
            yield int(result.index), np.asarray(result.mask, dtype=bool)


def _set_slice(volume: np.ndarray, axis: int, index: int, mask: np.ndarray) -> None:
    where: list[Any] = [slice(None)] * 3
    where[axis] = index
    volume[tuple(where)] = mask


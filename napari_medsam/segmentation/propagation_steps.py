"""One propagation step: the next slice segmented from its neighbour's mask (no Qt, no napari).

The next slice is prompted with the bounding box of the previous slice's mask grown by a
margin (10 % of its extent + 1 px); the components that touch the previous mask are kept, then
the slice is predicted once more from the box of that mask (the same margin) so the box
follows the object as it grows or shrinks. Measured on real CT and MRI scans: see
``benchmarks/propagation_eval.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .propagation_stops import EMPTY_ONLY, StopRules
from .session import SegmentationSession, SliceRef

#: A box on a slice: (x0, y0, x1, y1), x = column, inclusive pixel indices.
IntBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class PropagationParams:
    """How each slice is prompted from the previous one, and when runs end.

    Attributes
    ----------
    margin
        Box margin around the previous mask, as a fraction of its extent (plus 1 pixel).
    refit
        Predict a second time from the box (same margin) of the first mask.
    stop
        Rules that end a run beyond the outermost anchors.
    gap_stop
        Rules that hand a gap between two anchors over to the other side.
    split_parts
        Beyond the outermost anchors, follow each piece of a multi-part anchor on its own
        (:func:`~napari_medsam.segmentation.propagation_runs.anchor_parts`).
    retries
        Beyond the outermost anchors, a slice rejected for its grey values or a sudden
        growth is segmented again from the last mask's own box (:data:`TIGHT_STEP`) and kept
        when that mask agrees with the last one, at most this many slices in a row
        (:class:`~napari_medsam.segmentation.propagation_runs.Retry`); 0: no retry.
    """

    margin: float = 0.1
    refit: bool = True
    stop: StopRules = field(default_factory=StopRules)
    gap_stop: StopRules = field(default_factory=lambda: EMPTY_ONLY)
    split_parts: bool = True
    retries: int = 2


DEFAULT_PARAMS = PropagationParams()
#: The step of a retry: the previous mask's own box, no margin, one prediction.
TIGHT_STEP = PropagationParams(margin=0.0, refit=False, retries=0)


def mask_box(mask: np.ndarray) -> IntBox | None:
    """(x0, y0, x1, y1) bounding box of a 2D mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def grow_box(box: IntBox, margin: float, shape: tuple[int, int],
             clip: IntBox | None = None) -> IntBox:
    """``box`` grown by ``margin`` x its extent (+1 px), inside the slice (and ``clip``).

    The result always has an area (at least 2 pixels wide and high) as the model needs.
    """
    x0, y0, x1, y1 = box
    rows, cols = shape
    mx = int(round(margin * (x1 - x0 + 1))) + 1 if margin > 0 else 0
    my = int(round(margin * (y1 - y0 + 1))) + 1 if margin > 0 else 0
    lo_x, lo_y, hi_x, hi_y = (0, 0, cols - 1, rows - 1) if clip is None else clip
    x0, x1 = max(lo_x, x0 - mx), min(hi_x, x1 + mx)
    y0, y1 = max(lo_y, y0 - my), min(hi_y, y1 + my)
    if x1 - x0 < 1:
        x0, x1 = (x0, x0 + 1) if x0 + 1 < cols else (x0 - 1, x0)
    if y1 - y0 < 1:
        y0, y1 = (y0, y0 + 1) if y0 + 1 < rows else (y0 - 1, y0)
    return x0, y0, x1, y1


def touching(mask: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that touch ``prev`` (all of it when none does)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    near = ndimage.binary_dilation(prev)
    keep = np.unique(labels[near & mask])
    keep = keep[keep > 0]
    return np.isin(labels, keep) if keep.size else mask


def segment_from(session: SegmentationSession, ref: SliceRef, prev: np.ndarray,
                 params: PropagationParams = DEFAULT_PARAMS, clip: IntBox | None = None
                 ) -> tuple[np.ndarray, IntBox, float]:
    """Segment slice ``ref`` from the neighbouring slice's mask ``prev``.

    Returns the mask, the last box used and the model's predicted IoU. ``clip`` bounds the
    boxes (and the mask) to a user's 3D box.
    """
    box = grow_box(mask_box(prev), params.margin, prev.shape, clip)
    pred = session.predict(ref, box=box)
    mask = touching(pred.mask, prev)
    iou = pred.iou
    if params.refit and mask.any():
        refit = grow_box(mask_box(mask), params.margin, prev.shape, clip)
        if refit != box:
            pred = session.predict(ref, box=refit)
            box, mask, iou = refit, touching(pred.mask, prev), pred.iou
    if clip is not None:
        mask = clip_mask(mask, clip)
    return mask, box, float(iou)


def clip_mask(mask: np.ndarray, box: IntBox) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = np.zeros_like(mask)
    out[y0:y1 + 1, x0:x1 + 1] = mask[y0:y1 + 1, x0:x1 + 1]
    return out

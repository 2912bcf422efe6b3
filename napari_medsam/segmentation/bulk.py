"""Bulk correction of an existing label map with the model (no Qt, no napari).

:func:`refine_label` re-segments every slice of one label from its own boxes and keeps the
existing label away from its boundary; :func:`fill_gaps` segments the unlabelled
slices inside an object by propagation from their labelled neighbours.
Measured on real scans with ``benchmarks/propagation_eval.py`` (``docs/speed_accuracy.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .propagation import DEFAULT_PARAMS, PropagationParams, grow_box, mask_box, propagate
from .session import SegmentationSession, SliceRef

logger = logging.getLogger(__name__)

#: Box margin around each component of the existing label (fraction of its extent + 1 px).
REFINE_MARGIN = 0.05
#: Half-width (pixels) of the band around the offset-corrected boundary where the model decides.
REFINE_BAND = 0.5
#: Uniform boundary offsets (pixels, + = shrink) tried when matching the label to the model.
OFFSETS = np.arange(-4.0, 4.01, 0.5)
#: Components smaller than this (pixels) get no box of their own.
MIN_COMPONENT = 4


@dataclass(frozen=True)
class RefineResult:
    """A corrected 3D mask for one label.

    Attributes
    ----------
    label
        The label value.
    mask
        The corrected 3D boolean mask.
    added
        Voxels in ``mask`` that the label did not have.
    removed
        Voxels of the label that ``mask`` no longer has.
    """

    label: int
    mask: np.ndarray
    added: np.ndarray
    removed: np.ndarray


def _check(session: SegmentationSession, labels: np.ndarray, label: int, axis: int
           ) -> np.ndarray:
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    labels = np.asarray(labels)
    if labels.shape != session.volume.shape:
        raise ValueError(f"label map of shape {labels.shape} does not match the image of shape "
                         f"{session.volume.shape}")
    obj = labels == label
    if label == 0 or not obj.any():
        raise ValueError(f"label {label} is not present in the label map")
    return obj


def _result(label: int, obj: np.ndarray, mask: np.ndarray, labels: np.ndarray,
            keep_others: bool) -> RefineResult:
    if keep_others:
        mask = mask & ((labels == 0) | obj)
    return RefineResult(int(label), mask, mask & ~obj, obj & ~mask)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """In-plane signed distance (pixels) to the mask's boundary: + inside, - outside.

    Pixels on either side of the boundary get +-0.5, so ``distance > 0`` is the mask itself
    and ``distance > d`` shrinks it by ``d`` pixels (grows it for negative ``d``).
    """
    mask = np.asarray(mask, dtype=bool)
    inside = ndimage.distance_transform_edt(mask) - 0.5
    outside = ndimage.distance_transform_edt(~mask) - 0.5
    return np.where(mask, inside, -outside).astype(np.float32)


def _model_mask(session: SegmentationSession, ref: SliceRef, existing: np.ndarray,
                margin: float) -> np.ndarray:
    """Union of the model's masks, one box per component of the existing slice."""
    out = np.zeros_like(existing)
    components, _ = ndimage.label(existing)
    for i, found in enumerate(ndimage.find_objects(components), start=1):
        if found is None or (components[found] == i).sum() < MIN_COMPONENT:
            continue
        box = grow_box(mask_box(components == i), margin, existing.shape)
        out |= session.predict(ref, box=box).mask
    return out


class _OffsetVotes:
    """Counts, per candidate offset, how well the label shrunk/grown by it matches the model."""

    def __init__(self, offsets: np.ndarray = OFFSETS) -> None:
        self.offsets = np.sort(np.asarray(offsets, dtype=np.float64))
        self.label_counts = np.zeros(self.offsets.size + 1, dtype=np.int64)
        self.model_counts = np.zeros(self.offsets.size + 1, dtype=np.int64)
        self.model_total = 0

    def add(self, distance: np.ndarray, model: np.ndarray) -> None:
        # bin k holds the pixels whose distance exceeds exactly k of the offsets
        bins = np.searchsorted(self.offsets, distance, side="left")
        size = self.offsets.size + 1
        self.label_counts += np.bincount(bins.ravel(), minlength=size)
        self.model_counts += np.bincount(bins[model], minlength=size)
        self.model_total += int(model.sum())

    def best(self) -> float:
        """The offset with the highest Dice between the label (distance > offset) and model."""
        # pixels with distance > offsets[j] are those in bins j+1 and above
        label_in = np.cumsum(self.label_counts[::-1])[::-1][1:]
        both = np.cumsum(self.model_counts[::-1])[::-1][1:]
        dice = 2 * both / np.maximum(label_in + self.model_total, 1)
        return float(self.offsets[int(np.argmax(dice))])


def refine_label(session: SegmentationSession, labels: np.ndarray, label: int, axis: int = 0,
                 *, cancel: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 band: float = REFINE_BAND, margin: float = REFINE_MARGIN,
                 keep_others: bool = True) -> RefineResult:
    """Re-segment every slice of ``label`` from its own boxes.

    Each component of the label on a slice is predicted from its bounding box (grown by
    ``margin``). The label is then matched to the model's masks: the uniform in-plane boundary
    offset (-4..4 px, a label drawn too thick or too thin) that agrees best with the model over
    the whole object is applied, and within ``band`` pixels of that corrected boundary the
    model decides each pixel. Far from the boundary the label is kept, so a model error on one
    slice cannot remove or add a whole region.

    Parameters
    ----------
    session
        The segmentation session of the image the labels belong to.
    labels
        The label map (same shape as the image); not modified.
    label
        The label value to refine.
    axis
        Slices are cut across this axis.
    cancel
        Polled before each slice; when it returns True, the slices done so far are refined
        and the others keep the label as it was.
    progress
        ``progress(done, total)`` after each slice.
    band
        Half-width of the band where the model decides, in pixels.
    margin
        Box margin (fraction of the component's extent, plus 1 pixel).
    keep_others
        Never take voxels of other labels.

    Raises
    ------
    ValueError
        For a bad axis, a label map of another shape, or a label that is not present.
    """
    obj = _check(session, labels, label, axis)
    view = np.moveaxis(obj, axis, 0)
    indices = [int(i) for i in np.flatnonzero(view.any(axis=(1, 2)))]
    models: dict[int, np.ndarray] = {}
    votes = _OffsetVotes()
    for count, index in enumerate(indices, start=1):
        if cancel is not None and cancel():
            logger.info("refine of label %d cancelled after %d slices", label, len(models))
            break
        models[index] = _model_mask(session, SliceRef(axis, index), view[index], margin)
        votes.add(signed_distance(view[index]), models[index])
        if progress is not None:
            progress(count, len(indices))
    out = obj.copy()
    if models:
        offset = votes.best()
        logger.info("label %d: boundary offset %+.1f px", label, offset)
        out_view = np.moveaxis(out, axis, 0)
        for index, model in models.items():
            corrected = signed_distance(view[index]) - offset
            out_view[index] = np.where(np.abs(corrected) <= band, model, corrected > 0)
    return _result(label, obj, out, labels, keep_others)


def interpolate_shape(below: np.ndarray, above: np.ndarray, weight: float) -> np.ndarray:
    """Signed distance between two slices' masks (``weight`` 0 = ``below``, 1 = ``above``)."""
    return (1.0 - weight) * signed_distance(below) + weight * signed_distance(above)


def fill_gaps(session: SegmentationSession, labels: np.ndarray, label: int, axis: int = 0, *,
              cancel: Callable[[], bool] | None = None,
              progress: Callable[[int, int], None] | None = None,
              band: float = REFINE_BAND, params: PropagationParams = DEFAULT_PARAMS,
              keep_others: bool = True) -> RefineResult:
    """Segment the unlabelled slices inside an object from their labelled neighbours.

    Every slice between the first and the last slice that hold ``label`` but hold none of it
    is segmented by :func:`~napari_medsam.segmentation.propagation.propagate` with the
    labelled slices as anchors (each gap is filled from both sides, meeting in the middle).
    The model's mask then decides the pixels within ``band`` pixels of the shape interpolated
    (signed distance, weighted by slice distance) between the gap's two labelled slices; the
    interpolated shape decides the others. Labelled slices are not changed.

    Parameters
    ----------
    cancel
        Polled before each slice; the slices filled so far are kept.
    progress
        ``progress(done, total)`` after each gap slice (``total`` = unlabelled slices).
    band
        Half-width in pixels of the band where the model decides.
    keep_others
        Never take voxels of other labels.

    Raises
    ------
    ValueError
        For a bad axis, a label map of another shape, or a label that is not present.
    """
    obj = _check(session, labels, label, axis)
    view = np.moveaxis(obj, axis, 0)
    present = np.flatnonzero(view.any(axis=(1, 2)))
    first, last = int(present[0]), int(present[-1])
    missing = [i for i in range(first, last + 1) if not view[i].any()]
    out = obj.copy()
    if not missing:
        return _result(label, obj, out, labels, keep_others)
    anchors = {int(i): view[i] for i in present}  # all of them: no run leaves first..last
    out_view = np.moveaxis(out, axis, 0)
    runs = propagate(session, axis, anchors, stop_at=(first, last), cancel=cancel,
                     params=params)
    for count, result in enumerate(runs, start=1):
        index = result.index
        below = int(present[present < index][-1])
        above = int(present[present > index][0])
        shape = interpolate_shape(view[below], view[above], (index - below) / (above - below))
        out_view[index] = np.where(np.abs(shape) <= band, result.mask, shape > 0)
        if progress is not None:
            progress(min(count, len(missing)), len(missing))
    return _result(label, obj, out, labels, keep_others)

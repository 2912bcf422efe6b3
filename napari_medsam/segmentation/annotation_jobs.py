"""The 3D operations of the annotation model as worker jobs (no Qt, no napari).

Each job is a generator a view runs on a worker thread: it yields :class:`SliceDone` (a slice
to show in the preview) and :class:`Progress`, and returns the pending result
(:class:`~napari_medsam.segmentation.annotation_edits.PendingSlices` or
:class:`~napari_medsam.segmentation.annotation_edits.PendingRefine`; None when a refine was
cancelled). ``cancel`` is polled between slices; nothing touches the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass

import numpy as np

from .annotation_edits import PendingRefine, PendingSlices, refine_pending, slices_pending
from .session import SegmentationSession, SliceRef

__all__ = ["Progress", "SliceDone", "box_job", "bulk_job", "propagate_job"]


@dataclass(frozen=True)
class SliceDone:
    """One slice of a propagation or 3D box: its mask (empty where the object stopped)."""

    axis: int
    index: int
    mask: np.ndarray


@dataclass(frozen=True)
class Progress:
    """Slices done out of ``total``."""

    done: int
    total: int


Job = Generator[SliceDone | Progress, None, PendingSlices | PendingRefine | None]


def propagate_job(session: SegmentationSession, ref: SliceRef, anchors: Mapping[int, np.ndarray],
                  label: int, cancel: Callable[[], bool]) -> Job:
    """Propagate object ``label`` from its ``anchors`` (slice index -> mask) along
    ``ref.axis``, starting next to the displayed slice."""
    from .propagation import propagate

    size = session.volume.shape[ref.axis]
    masks: dict[int, np.ndarray] = {}
    stops = []
    for done, result in enumerate(propagate(session, ref.axis, anchors, start=ref.index,
                                            cancel=cancel), start=1):
        if result.stopped:
            stops.append(f"{result.stopped} at {result.index}")
        else:
            masks[result.index] = result.mask
        yield SliceDone(ref.axis, result.index, result.mask)
        yield Progress(min(done + len(anchors), size), size)
    return slices_pending(label, ref.axis, masks, stops, cancel())


def box_job(session: SegmentationSession, ref: SliceRef, box, first: int, last: int,
            label: int, cancel: Callable[[], bool]) -> Job:
    """The box drawn on slice ``ref``, through slices ``first..last`` (inclusive)."""
    from .propagation import box_range

    masks: dict[int, np.ndarray] = {}
    total = last - first + 1
    for done, result in enumerate(box_range(session, ref.axis, ref.index, box, first, last,
                                            cancel=cancel), start=1):
        masks[result.index] = result.mask
        yield SliceDone(ref.axis, result.index, result.mask)
        yield Progress(done, total)
    return slices_pending(label, ref.axis, masks, (), cancel())


def bulk_job(session: SegmentationSession, labels: np.ndarray, label: int, axis: int, *,
             fill: bool, keep_others: bool, cancel: Callable[[], bool],
             progress: Callable[[int, int], None] | None = None) -> PendingRefine | None:
    """*Refine* (``fill=False``) or *Fill gaps* of object ``label`` in ``labels`` (a copy:
    the user may paint meanwhile); None when cancelled. Progress goes to ``progress``."""
    from . import bulk

    function = bulk.fill_gaps if fill else bulk.refine_label
    result = function(session, labels, label, axis, cancel=cancel, progress=progress,
                      keep_others=keep_others)
    if cancel():
        return None
    return refine_pending("Fill gaps" if fill else "Refine", label, result)

"""The 3D operations of the annotation model as worker jobs (no Qt, no napari).

Each job is a generator a view runs on a worker thread: it yields :class:`SliceDone` (a slice
to show in the preview) and :class:`Progress`, and returns the pending result
(:class:`~napari_medsam.segmentation.annotation_edits.PendingSlices` or
:class:`~napari_medsam.segmentation.annotation_edits.PendingRefine`; None when a refine was
cancelled). ``cancel`` is polled between slices; nothing touches the labels.

A propagation's pending result records where each direction stopped
(:attr:`~napari_medsam.segmentation.annotation_edits.PendingSlices.stops`);
:func:`continue_job` extends it past one of those stops.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass

import numpy as np

from .annotation_edits import (
    CONTINUABLE,
    PendingRefine,
    PendingSlices,
    refine_pending,
    slices_pending,
)
from .propagation_steps import DEFAULT_PARAMS, PropagationParams
from .propagation_stops import DirectionStop
from .session import SegmentationSession, SliceRef

__all__ = ["Progress", "SliceDone", "box_job", "bulk_job", "continue_job", "continue_mask",
           "propagate_job"]


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
                  label: int, cancel: Callable[[], bool],
                  stop_at: tuple[int, int] | None = None,
                  params: PropagationParams = DEFAULT_PARAMS) -> Job:
    """Propagate object ``label`` from its ``anchors`` (slice index -> mask; an empty mask
    marks a slice outside the object) along ``ref.axis``, starting next to the displayed
    slice; ``stop_at``: the inclusive slice range the run stays in (default: the volume);
    ``params``: how runs step and stop."""
    from .propagation import propagate

    lo, hi = _bounds(session, ref.axis, stop_at)
    total = hi - lo + 1
    masks: dict[int, np.ndarray] = {}
    run = propagate(session, ref.axis, anchors, start=ref.index, stop_at=stop_at, cancel=cancel,
                    params=params)
    inside = sum(1 for i in anchors if lo <= i <= hi)
    yield from _stream(run, ref.axis, masks, inside, total)
    return slices_pending(label, ref.axis, masks, run.stops, cancel())


def continue_mask(pending: PendingSlices, stop: DirectionStop,
                  anchors: Mapping[int, np.ndarray]) -> np.ndarray:
    """The mask held on ``stop.last``, where a run continued past ``stop`` starts: the
    pending result's mask of that slice, or the anchor's when ``last`` is an anchor.

    Raises
    ------
    ValueError
        ``stop`` is not one of the pending result's stops, was not made by a stop rule
        (:data:`~napari_medsam.segmentation.annotation_edits.CONTINUABLE`), or its slice holds
        no mask.
    """
    if stop not in pending.stops:
        raise ValueError("that stop is not one of this propagation's stops")
    if stop.reason not in CONTINUABLE:
        raise ValueError(f"a run that ended by '{stop.reason}' cannot be continued")
    for source in (pending.masks, anchors):
        mask = source.get(stop.last)
        if mask is not None and np.asarray(mask).any():
            return np.asarray(mask, dtype=bool)
    raise ValueError(f"slice {stop.last} holds no mask of object {pending.label} to continue "
                     "from")


def continue_job(session: SegmentationSession, pending: PendingSlices, stop: DirectionStop,
                 anchors: Mapping[int, np.ndarray], cancel: Callable[[], bool],
                 stop_at: tuple[int, int] | None = None,
                 params: PropagationParams = DEFAULT_PARAMS,
                 outside: Collection[int] = ()) -> Job:
    """Continue the propagation of ``pending`` past ``stop`` (one of ``pending.stops``) in
    its direction, from the mask held on ``stop.last`` (:func:`continue_mask`, which raises
    ``ValueError`` for a stop that cannot be continued: call it first to check).

    Returns the pending result with the new slices merged in and ``stop`` replaced by where
    the continued run ended (the other stops are kept). ``stop_at`` and ``params`` as in
    :func:`propagate_job`; ``outside``: slices marked outside the object, where the run ends.
    """
    from .propagation import continue_propagation

    mask = continue_mask(pending, stop, anchors)
    lo, hi = _bounds(session, pending.axis, stop_at)
    total = max((hi - stop.last) if stop.direction > 0 else (stop.last - lo), 1)
    masks = dict(pending.masks)
    run = continue_propagation(session, pending.axis, stop.last, mask, stop.direction,
                               stop_at=stop_at, cancel=cancel, params=params,
                               outside=outside)
    yield from _stream(run, pending.axis, masks, 0, total)
    stops = [s for s in pending.stops if s != stop] + list(run.stops)
    return slices_pending(pending.label, pending.axis, masks, stops, cancel())


def _stream(run, axis: int, masks: dict[int, np.ndarray], done_before: int,
            total: int) -> Generator[SliceDone | Progress, None, None]:
    """Each slice of a propagation ``run`` into the preview (and, unless it is where the run
    stopped, into ``masks``), with progress counted from ``done_before`` out of ``total``."""
    for done, result in enumerate(run, start=1):
        if not result.stopped:
            masks[result.index] = result.mask
        yield SliceDone(axis, result.index, result.mask)
        yield Progress(min(done + done_before, total), total)


def _bounds(session: SegmentationSession, axis: int,
            stop_at: tuple[int, int] | None) -> tuple[int, int]:
    """The inclusive slice range a run stays in (for the progress bar)."""
    size = session.volume.shape[axis]
    if stop_at is None:
        return 0, size - 1
    return max(min(stop_at), 0), min(max(stop_at), size - 1)


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

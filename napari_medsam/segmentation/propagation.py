"""3D propagation: segment slice after slice from the previous slice's mask (no Qt, no napari).

Each step prompts the next slice from the previous slice's mask
(:func:`~napari_medsam.segmentation.propagation_steps.segment_from`). Between two anchors the
slices are filled from both sides. Beyond the outermost anchors a run goes on until the object
ends: the mask vanishes, jumps away from the last accepted one, slides onto another tissue or
leaks (a sudden growth), for ``patience`` slices in a row
(:mod:`~napari_medsam.segmentation.propagation_stops`); a slice rejected for its grey values
or a sudden growth is first tried once more from the last mask's own box, as the margin box
may have taken in a neighbour (:class:`~napari_medsam.segmentation.propagation_runs.Retry`); an
anchor made of several pieces is followed piece by piece
(:mod:`~napari_medsam.segmentation.propagation_runs`). Where each direction ended is recorded
(:attr:`PropagationRun.stops`), and a run can be continued past a stop
(:func:`continue_propagation`) or bounded to a slice range (``stop_at``).

Every prediction goes through ``session.predict``: with ``session.zoom == "auto"`` a box small
enough for a region of interest is also segmented in one around it
(:mod:`napari_medsam.segmentation.roi`), so the ROI follows the object from slice to slice.
Measurements: ``benchmarks/propagation_eval.py`` and ``research/propagation_stop_rules``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping

import numpy as np

from .propagation_boxes import box_range, check_axis, slice_shape
from .propagation_runs import Retry, Run, SliceResult, anchor_parts
from .propagation_steps import (
    DEFAULT_PARAMS,
    TIGHT_STEP,
    IntBox,
    PropagationParams,
    grow_box,
    mask_box,
    segment_from,
)
from .propagation_stops import (
    EMPTY_ONLY,
    DirectionStop,
    IntensityModel,
    StopReason,
    StopRules,
)
from .session import SegmentationSession

__all__ = [
    "DEFAULT_PARAMS",
    "EMPTY_ONLY",
    "DirectionStop",
    "IntensityModel",
    "IntBox",
    "PropagationParams",
    "PropagationRun",
    "SliceResult",
    "StopReason",
    "StopRules",
    "box_range",
    "continue_propagation",
    "grow_box",
    "mask_box",
    "propagate",
    "propagate_volume",
    "segment_from",
]

logger = logging.getLogger(__name__)


def _check_anchors(session: SegmentationSession, axis: int,
                   anchors: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Bool copies of the anchors, checked against the volume."""
    size = session.volume.shape[axis]
    shape = slice_shape(session, axis)
    if not anchors:
        raise ValueError("propagation needs at least one anchor slice (index -> 2D mask)")
    out: dict[int, np.ndarray] = {}
    for index, mask in anchors.items():
        if not isinstance(index, (int, np.integer)) or not 0 <= index < size:
            raise ValueError(f"anchor index {index!r} is outside 0..{size - 1} along axis {axis}")
        arr = np.asarray(mask)
        if arr.shape != shape:
            raise ValueError(f"anchor mask at slice {index} has shape {arr.shape}; slices along "
                             f"axis {axis} have shape {shape}")
        out[int(index)] = arr.astype(bool, copy=True)
    if not any(m.any() for m in out.values()):
        raise ValueError("every anchor mask is empty: nothing to propagate")
    return out


def _check_range(session: SegmentationSession, axis: int,
                 stop_at: tuple[int, int] | None) -> tuple[int, int]:
    size = session.volume.shape[axis]
    if stop_at is None:
        return 0, size - 1
    lo, hi = (int(v) for v in stop_at)
    if lo > hi:
        raise ValueError(f"stop_at must be (first, last) with first <= last, got {stop_at}")
    return max(lo, 0), min(hi, size - 1)


def _runs(segment, image, axis: int, anchors: dict[int, np.ndarray], lo: int, hi: int,
          params: PropagationParams, directions: tuple[int, ...], force: int,
          retry: Retry | None = None) -> list[Run]:
    """Runs that fill the gaps between anchors and go beyond the outermost ones.

    Empty anchors mark slices where the object is absent: nothing crosses them.
    """
    keys = sorted(anchors)

    def outer(seed: int, direction: int, limit: int, barrier: bool = False) -> Run:
        mask = anchors[seed]
        parts = anchor_parts(mask) if params.split_parts else [mask]
        return Run(segment, image, axis, seed, parts, direction, limit, params.stop, force=force,
                   barrier=barrier, retry=retry)

    runs: list[Run] = []
    for a, b in zip(keys[:-1], keys[1:], strict=False):
        if b - a < 2:
            continue
        full_a, full_b = anchors[a].any(), anchors[b].any()
        if full_a and full_b:  # meet in the middle; one side takes over if the other stops
            mid = (a + b) // 2
            up = Run(segment, image, axis, a, [anchors[a]], +1, min(mid, hi), params.gap_stop,
                     outer=False)
            down = Run(segment, image, axis, b, [anchors[b]], -1, max(mid + 1, lo), params.gap_stop,
                       outer=False)
            up.partner, down.partner = down, up
            runs += [up, down]
        elif full_a and +1 in directions:  # the object ends somewhere before the empty b
            runs.append(outer(a, +1, min(b - 1, hi), barrier=True))
        elif full_b and -1 in directions:
            runs.append(outer(b, -1, max(a + 1, lo), barrier=True))
    if anchors[keys[-1]].any() and +1 in directions:
        runs.append(outer(keys[-1], +1, hi))
    if anchors[keys[0]].any() and -1 in directions:
        runs.append(outer(keys[0], -1, lo))
    for run in runs:  # seeds outside stop_at (or on the volume's edge) start no run
        if not lo <= run.index <= hi:
            run.end_at_once()
    return runs


class PropagationRun(Iterator[SliceResult]):
    """A propagation in progress: iterate it for the slices, read :attr:`stops` for where
    each direction ended (complete once the iteration is over).

    Made by :func:`propagate` and :func:`continue_propagation`.
    """

    def __init__(self, runs: list[Run], axis: int, centre: float,
                 cancel: Callable[[], bool] | None) -> None:
        self._runs, self.axis, self._centre, self._cancel = runs, axis, centre, cancel
        self._pending: list[SliceResult] = []
        self._done = False

    @property
    def stops(self) -> list[DirectionStop]:
        """Where each run beyond the outermost anchors ended (one per direction and outer
        anchor; a run still going has none yet)."""
        return [r.stop for r in self._runs if r.stop is not None]

    def __iter__(self) -> PropagationRun:
        return self

    def __next__(self) -> SliceResult:
        while not self._pending:
            if self._done:
                raise StopIteration
            self._advance()
        return self._pending.pop(0)

    def _advance(self) -> None:
        active = [r for r in self._runs if r.active]
        if not active:
            self._done = True
            return
        if self._cancel is not None and self._cancel():
            logger.info("propagation cancelled")
            for run in active:
                run.cancel()
            self._done = True
            return
        run = min(active, key=lambda r: (abs(r.index - self._centre), r.index))
        for result in run.step():
            if result.stopped is not None and run.partner is not None:
                partner = run.partner  # the other side of the gap takes over from here
                if not partner.stopped:
                    partner.limit = result.index
                    logger.debug("slice %d: %s; the other side takes over", result.index,
                                 result.stopped)
                    continue
            if result.stopped is not None:
                logger.info("propagation along axis %d stopped at slice %d: %s", self.axis,
                            result.index, result.stopped)
            self._pending.append(result)


def propagate(session: SegmentationSession, axis: int, anchors: Mapping[int, np.ndarray], *,
              start: int | None = None, stop_at: tuple[int, int] | None = None,
              cancel: Callable[[], bool] | None = None,
              params: PropagationParams = DEFAULT_PARAMS,
              directions: tuple[int, ...] = (-1, +1), force: int = 0) -> PropagationRun:
    """Propagate from anchor slices up and down the volume along ``axis``.

    Parameters
    ----------
    session
        The segmentation session (model, volume, embedding cache).
    axis
        The array axis the slices cut across (0, 1 or 2).
    anchors
        Slice index -> 2D boolean mask: the slices the user accepted or corrected. They are
        never yielded nor changed. An empty anchor marks a slice where the object is absent:
        propagation does not cross it.
    start
        Slice the user looks at: slices nearer to it are yielded first (default: the middle
        of the anchors). The masks do not depend on it.
    stop_at
        Inclusive (first, last) slice range propagation stays in (default: the volume).
    cancel
        Polled before each slice; when it returns True the iteration ends.
    params
        Margins and stop rules (the measured defaults).
    directions
        Which runs beyond the outermost anchors are made: -1 (towards lower indices), +1, or
        both (default). Gaps between anchors are always filled.
    force
        The first ``force`` slices of each run beyond the outermost anchors keep the
        model's mask whatever the stop rules say (unless it is empty): continuing past a
        stop.

    Returns
    -------
    PropagationRun
        Iterate it for each newly segmented slice (a :class:`SliceResult`) as soon as it is
        done. Between two anchors the slices are filled from both sides, meeting in the
        middle (a side that loses the object hands the rest over to the other). Beyond the
        outermost anchors a run goes on until the object ends (that slice is yielded with an
        empty mask and ``stopped`` set) or ``stop_at`` ends; ``run.stops`` then says where
        and why each direction ended.

    Raises
    ------
    ValueError
        For a bad axis, anchors outside the volume, of the wrong shape or all empty, a
        reversed ``stop_at`` or a direction other than -1 and +1.
    """
    check_axis(axis)
    if not directions or any(d not in (-1, 1) for d in directions):
        raise ValueError(f"directions must hold -1 and/or +1, got {directions!r}")
    checked = _check_anchors(session, axis, anchors)
    lo, hi = _check_range(session, axis, stop_at)

    def segment(ref, prev):
        return segment_from(session, ref, prev, params)

    def tight(ref, prev):
        return segment_from(session, ref, prev, TIGHT_STEP)

    retry = Retry(tight, limit=params.retries) if params.retries > 0 else None
    runs = _runs(segment, session.slice_image, axis, checked, lo, hi, params, tuple(directions),
                 int(force), retry)
    centre = (min(checked) + max(checked)) / 2 if start is None else start
    return PropagationRun(runs, axis, centre, cancel)


def continue_propagation(session: SegmentationSession, axis: int, index: int,
                         mask: np.ndarray, direction: int, *, past: int = 1,
                         stop_at: tuple[int, int] | None = None,
                         cancel: Callable[[], bool] | None = None,
                         params: PropagationParams = DEFAULT_PARAMS,
                         outside: Collection[int] = ()) -> PropagationRun:
    """Continue a run past where it stopped, in one direction.

    Parameters
    ----------
    index, mask
        The last slice the run reached and its mask (``DirectionStop.last`` and the mask
        the user kept there).
    direction
        +1 or -1 (``DirectionStop.direction``).
    past
        The next ``past`` slices keep the model's mask whatever the stop rules say (unless
        it is empty), so the run gets past the slice where it stopped; then the rules apply
        again.
    stop_at, cancel, params
        As in :func:`propagate`.
    outside
        Slices where the object is absent (empty anchors of :func:`propagate`): the run
        ends on the first of them it meets.

    Returns
    -------
    PropagationRun
        The new slices (``index`` itself is not yielded) and, in ``stops``, where the
        continued run ended.
    """
    if direction not in (-1, 1):
        raise ValueError(f"direction must be -1 or +1, got {direction!r}")
    anchors = {int(index): mask}
    empty = np.zeros(np.shape(mask), dtype=bool)
    anchors.update({int(i): empty for i in outside if (int(i) - index) * direction > 0})
    return propagate(session, axis, anchors, start=int(index), stop_at=stop_at,
                     cancel=cancel, params=params, directions=(direction,), force=past)


def propagate_volume(session: SegmentationSession, axis: int,
                     anchors: Mapping[int, np.ndarray], **kwargs) -> np.ndarray:
    """Run :func:`propagate` to completion; the 3D boolean mask, anchors included.

    Keyword arguments are passed to :func:`propagate`.
    """
    results = list(propagate(session, axis, anchors, **kwargs))
    out = np.zeros(session.volume.shape, dtype=bool)
    view = np.moveaxis(out, axis, 0)
    for index, mask in anchors.items():
        view[index] = np.asarray(mask, dtype=bool)
    for result in results:
        view[result.index] = result.mask
    return out

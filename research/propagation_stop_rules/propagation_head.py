"""Propagation as of git HEAD ce422b7, before issue 18 (verbatim, for the study: old rules).

Each step prompts the next slice with the bounding box of the previous slice's mask grown by
a margin (10 % of its extent + 1 px), keeps the components that touch the previous mask, then
predicts once more from the box of that mask (the same margin) so the box follows the object as
it grows or shrinks. Beyond the outermost anchors, stop rules end the run where the object
ends or the model loses it; between two anchors, the slices are filled from both sides.

The rules and margins were chosen by measurement on real CT and MRI scans; see
``docs/propagation.md`` and ``benchmarks/propagation_eval.py``.

Every prediction goes through ``session.predict``: with ``session.zoom == "auto"`` a box small
enough for a region of interest is also segmented in one around it
(:mod:`napari_medsam.segmentation.roi`), so the ROI follows the object from slice to slice
(one encoder run per new ROI; the refit on the same slice reuses it when it still fits).
The same step and stop rules serve these ROI steps: the variants measured for them
(thresholds, margins, refit, ``mask_input``, candidate boxes) did not generalise
(``docs/propagation.md``, "Zoom auto").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_medsam.segmentation.session import SegmentationSession, SliceRef

logger = logging.getLogger(__name__)

#: A box on a slice: (x0, y0, x1, y1), x = column, inclusive pixel indices.
IntBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class SliceResult:
    """One slice segmented by propagation.

    Attributes
    ----------
    index
        Slice index along the propagation axis.
    mask
        Boolean 2D mask of that slice; empty when propagation stopped there.
    box
        (x0, y0, x1, y1) of the last box prompt used, or None.
    iou
        The model's predicted IoU of the mask that was decided on.
    stopped
        None, or why propagation stopped at this slice ("empty", "tiny", "area jump",
        "intensity shift", "low overlap", "low iou"); the mask of a stopped slice is empty.
    """

    index: int
    mask: np.ndarray
    box: IntBox | None
    iou: float
    stopped: str | None = None


@dataclass(frozen=True)
class StopRules:
    """When a run beyond the outermost anchors ends (all relative quantities).

    Attributes
    ----------
    min_area_fraction
        "tiny": the mask is smaller than this fraction of the largest mask of the run
        (anchor included).
    max_area_ratio
        "area jump": the mask is more than this many times the previous slice's mask
        (the model leaked into a neighbour).
    max_intensity_shift
        "intensity shift": the mean grey value (as the model sees it) inside the mask moved
        more than this many standard deviations of the anchor's grey values away from the
        anchor's mean (the mask slid onto another tissue).
    min_overlap
        "low overlap": less than this fraction of the new mask lies on the previous mask
        (the mask jumped to something else).
    min_iou
        "low iou": the model's own predicted IoU is below this (off by default: measured
        to add nothing).
    """

    min_area_fraction: float = 0.05
    max_area_ratio: float = 1.5
    max_intensity_shift: float = 2.0
    min_overlap: float = 0.3
    min_iou: float = 0.0

    def reason(self, mask: np.ndarray, prev: np.ndarray, iou: float, largest: int,
               shift: float = 0.0) -> str | None:
        """Why propagation should stop at ``mask`` (None: go on).

        ``shift`` is the intensity shift in anchor standard deviations (see
        :func:`intensity_shift`).
        """
        area = int(mask.sum())
        if area == 0:
            return "empty"
        if area < self.min_area_fraction * largest:
            return "tiny"
        if area > self.max_area_ratio * max(int(prev.sum()), 1):
            return "area jump"
        if shift > self.max_intensity_shift:
            return "intensity shift"
        if (mask & prev).sum() < self.min_overlap * area:
            return "low overlap"
        if iou < self.min_iou:
            return "low iou"
        return None


#: Grey values (0..255) below which an anchor's spread counts as this much (flat regions).
MIN_INTENSITY_STD = 5.0


@dataclass(frozen=True)
class IntensityModel:
    """Mean and spread of the grey values inside an anchor (as the model sees them)."""

    mean: float
    std: float

    @classmethod
    def of(cls, image: np.ndarray, mask: np.ndarray) -> IntensityModel:
        values = np.asarray(image, dtype=np.float64)[mask]
        return cls(float(values.mean()), max(float(values.std()), MIN_INTENSITY_STD))

    def shift(self, image: np.ndarray, mask: np.ndarray) -> float:
        """How far the mean inside ``mask`` lies from the anchor's, in anchor std's."""
        if not mask.any():
            return 0.0
        return abs(float(np.asarray(image, dtype=np.float64)[mask].mean()) - self.mean) / self.std


#: Only an empty mask stops (used between two anchors, where the object is known to go on).
EMPTY_ONLY = StopRules(min_area_fraction=0.0, max_area_ratio=float("inf"),
                       max_intensity_shift=float("inf"), min_overlap=0.0, min_iou=-1.0)


@dataclass(frozen=True)
class PropagationParams:
    """How each slice is prompted from the previous one.

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
    """

    margin: float = 0.1
    refit: bool = True
    stop: StopRules = field(default_factory=StopRules)
    gap_stop: StopRules = field(default_factory=lambda: EMPTY_ONLY)


DEFAULT_PARAMS = PropagationParams()


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


def _touching(mask: np.ndarray, prev: np.ndarray) -> np.ndarray:
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
    mask = _touching(pred.mask, prev)
    iou = pred.iou
    if params.refit and mask.any():
        refit = grow_box(mask_box(mask), params.margin, prev.shape, clip)
        if refit != box:
            pred = session.predict(ref, box=refit)
            box, mask, iou = refit, _touching(pred.mask, prev), pred.iou
    if clip is not None:
        mask = _clip(mask, clip)
    return mask, box, float(iou)


def _clip(mask: np.ndarray, box: IntBox) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = np.zeros_like(mask)
    out[y0:y1 + 1, x0:x1 + 1] = mask[y0:y1 + 1, x0:x1 + 1]
    return out


class _Front:
    """Slices segmented one after the other from a seed mask, in one direction."""

    def __init__(self, session: SegmentationSession, axis: int, seed: int, mask: np.ndarray,
                 direction: int, limit: int, rules: StopRules, params: PropagationParams
                 ) -> None:
        self.session, self.axis, self.direction = session, axis, direction
        self.index = seed + direction
        self.limit = limit
        self.prev = mask
        self.largest = int(mask.sum())
        self.rules, self.params = rules, params
        self.intensity = None
        if np.isfinite(rules.max_intensity_shift):
            self.intensity = IntensityModel.of(session.slice_image(SliceRef(axis, seed)), mask)
        self.stopped = False
        self.partner: _Front | None = None

    @property
    def active(self) -> bool:
        return not self.stopped and (self.limit - self.index) * self.direction >= 0

    def step(self) -> SliceResult:
        ref = SliceRef(self.axis, self.index)
        mask, box, iou = segment_from(self.session, ref, self.prev, self.params)
        shift = 0.0
        if self.intensity is not None:
            shift = self.intensity.shift(self.session.slice_image(ref), mask)
        reason = self.rules.reason(mask, self.prev, iou, self.largest, shift)
        index = self.index
        self.index += self.direction
        if reason is not None:
            self.stopped = True
            return SliceResult(index, np.zeros_like(mask), box, iou, reason)
        self.prev = mask
        self.largest = max(self.largest, int(mask.sum()))
        return SliceResult(index, mask, box, iou, None)


def _check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")


def _slice_shape(session: SegmentationSession, axis: int) -> tuple[int, int]:
    return tuple(s for a, s in enumerate(session.volume.shape) if a != axis)


def _check_anchors(session: SegmentationSession, axis: int,
                   anchors: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Bool copies of the anchors, checked against the volume."""
    size = session.volume.shape[axis]
    shape = _slice_shape(session, axis)
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


def _fronts(session, axis, anchors, lo, hi, params) -> list[_Front]:
    """Fronts that fill the gaps between anchors and run beyond the outermost ones.

    Empty anchors mark slices where the object is absent: nothing crosses them.
    """
    keys = sorted(anchors)
    fronts: list[_Front] = []
    for a, b in zip(keys[:-1], keys[1:], strict=False):
        if b - a < 2:
            continue
        full_a, full_b = anchors[a].any(), anchors[b].any()
        if full_a and full_b:  # meet in the middle; one side takes over if the other stops
            mid = (a + b) // 2
            up = _Front(session, axis, a, anchors[a], +1, min(mid, hi), params.gap_stop, params)
            down = _Front(session, axis, b, anchors[b], -1, max(mid + 1, lo), params.gap_stop,
                          params)
            up.partner, down.partner = down, up
            fronts += [up, down]
        elif full_a:  # the object ends somewhere before the empty anchor b
            fronts.append(_Front(session, axis, a, anchors[a], +1, min(b - 1, hi), params.stop,
                                 params))
        elif full_b:
            fronts.append(_Front(session, axis, b, anchors[b], -1, max(a + 1, lo), params.stop,
                                 params))
    if anchors[keys[-1]].any():
        fronts.append(_Front(session, axis, keys[-1], anchors[keys[-1]], +1, hi, params.stop,
                             params))
    if anchors[keys[0]].any():
        fronts.append(_Front(session, axis, keys[0], anchors[keys[0]], -1, lo, params.stop,
                             params))
    for front in fronts:  # seeds outside stop_at start no run inside it
        if not lo <= front.index <= hi:
            front.stopped = True
    return fronts


def propagate(session: SegmentationSession, axis: int, anchors: Mapping[int, np.ndarray], *,
              start: int | None = None, stop_at: tuple[int, int] | None = None,
              cancel: Callable[[], bool] | None = None,
              params: PropagationParams = DEFAULT_PARAMS) -> Iterator[SliceResult]:
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
        Polled before each slice; when it returns True the generator ends.
    params
        Margins and stop rules (the measured defaults).

    Yields
    ------
    SliceResult
        Each newly segmented slice as soon as it is done. Between two anchors the slices are
        filled from both sides, meeting in the middle (a side that loses the object hands the
        rest over to the other). Beyond the outermost anchors a run goes on until a stop rule
        fires (that slice is yielded with an empty mask and ``stopped`` set) or ``stop_at``
        ends.

    Raises
    ------
    ValueError
        For a bad axis, anchors outside the volume, of the wrong shape or all empty, or a
        reversed ``stop_at``.
    """
    _check_axis(axis)
    checked = _check_anchors(session, axis, anchors)
    lo, hi = _check_range(session, axis, stop_at)
    fronts = _fronts(session, axis, checked, lo, hi, params)
    centre = (min(checked) + max(checked)) / 2 if start is None else start
    while True:
        active = [f for f in fronts if f.active]
        if not active:
            return
        if cancel is not None and cancel():
            logger.info("propagation cancelled")
            return
        front = min(active, key=lambda f: (abs(f.index - centre), f.index))
        result = front.step()
        if result.stopped is not None and front.partner is not None:
            partner = front.partner  # the other side of the gap takes over from here
            if not partner.stopped:
                partner.limit = result.index
                logger.debug("slice %d: %s; the other side takes over", result.index,
                             result.stopped)
                continue
        if result.stopped is not None:
            logger.info("propagation along axis %d stopped at slice %d: %s", axis,
                        result.index, result.stopped)
        yield result


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


def _check_box(box, shape: tuple[int, int]) -> IntBox:
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a box needs 4 numbers (x0, y0, x1, y1), got {box!r}") from exc
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    rows, cols = shape
    x0, x1 = max(x0, 0), min(x1, cols - 1)
    y0, y1 = max(y0, 0), min(y1, rows - 1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"box {tuple(box)} has no area inside the slice of {cols}x{rows} "
                         "pixels")
    return x0, y0, x1, y1


def box_range(session: SegmentationSession, axis: int, index: int, box, first: int, last: int,
              *, cancel: Callable[[], bool] | None = None,
              params: PropagationParams = DEFAULT_PARAMS,
              clip: bool = False) -> Iterator[SliceResult]:
    """A 3D box: ``box`` on slice ``index``, then every slice of ``first..last`` (inclusive).

    Each slice is prompted from the previous slice's mask (as :func:`propagate` does); a slice
    whose neighbour came out empty is prompted with ``box`` itself. No stop rule applies:
    every slice of the range is yielded exactly once, nearest to ``index`` first. The mask on
    slice ``index`` is kept inside ``box``.

    Parameters
    ----------
    clip
        ``box`` bounds the object on every slice (a true 3D bounding box): boxes and masks
        are kept inside it on all slices. Off by default: a box drawn on one slice need not
        contain the object on the others.

    Raises
    ------
    ValueError
        For a bad axis, ``index`` outside ``first..last``, a range outside the volume or a box
        without area.
    """
    _check_axis(axis)
    size = session.volume.shape[axis]
    if not 0 <= first <= last < size:
        raise ValueError(f"slice range {first}..{last} is not inside 0..{size - 1} along axis "
                         f"{axis}")
    if not first <= index <= last:
        raise ValueError(f"slice {index} is outside the range {first}..{last}")
    shape = _slice_shape(session, axis)
    user_box = _check_box(box, shape)
    if cancel is not None and cancel():
        return
    bounds = user_box if clip else None
    pred = session.predict(SliceRef(axis, index), box=user_box)
    mask = _clip(pred.mask, user_box)
    yield SliceResult(index, mask, user_box, float(pred.iou), None)
    prev = {+1: mask, -1: mask}
    nxt = {+1: index + 1, -1: index - 1}
    while nxt[+1] <= last or nxt[-1] >= first:
        if cancel is not None and cancel():
            return
        candidates = [d for d in (+1, -1) if first <= nxt[d] <= last]
        direction = min(candidates, key=lambda d: (abs(nxt[d] - index), -d))
        ref = SliceRef(axis, nxt[direction])
        if prev[direction].any():
            mask, used, iou = segment_from(session, ref, prev[direction], params, bounds)
        else:
            pred = session.predict(ref, box=user_box)
            mask, used, iou = _clip(pred.mask, user_box), user_box, float(pred.iou)
        yield SliceResult(ref.index, mask, used, iou, None)
        prev[direction] = mask
        nxt[direction] += direction

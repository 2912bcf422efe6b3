"""3D boxes: a box drawn on one slice, carried through a slice range (no Qt, no napari)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .propagation_runs import SliceResult
from .propagation_steps import DEFAULT_PARAMS, IntBox, PropagationParams, clip_mask, segment_from
from .session import SegmentationSession, SliceRef


def check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")


def slice_shape(session: SegmentationSession, axis: int) -> tuple[int, int]:
    return tuple(s for a, s in enumerate(session.volume.shape) if a != axis)


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
    check_axis(axis)
    size = session.volume.shape[axis]
    if not 0 <= first <= last < size:
        raise ValueError(f"slice range {first}..{last} is not inside 0..{size - 1} along axis "
                         f"{axis}")
    if not first <= index <= last:
        raise ValueError(f"slice {index} is outside the range {first}..{last}")
    shape = slice_shape(session, axis)
    user_box = _check_box(box, shape)
    if cancel is not None and cancel():
        return
    bounds = user_box if clip else None
    pred = session.predict(SliceRef(axis, index), box=user_box)
    mask = clip_mask(pred.mask, user_box)
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
            mask, used, iou = clip_mask(pred.mask, user_box), user_box, float(pred.iou)
        yield SliceResult(ref.index, mask, used, iou, None)
        prev[direction] = mask
        nxt[direction] += direction

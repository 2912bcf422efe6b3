"""One direction of a propagation run: its parts, misses and where it stopped.

A run starts from one anchor mask and goes slice by slice in one direction. Beyond the
outermost anchors an anchor made of several pieces (two cross-sections of the aorta, edema
around a tumour) is split into parts (:func:`anchor_parts`); each part is prompted with its
own box and has its own misses, the slice's mask is the union of the parts, and a part that
ends does not end the others. Parts whose masks come to overlap are merged.

Empty slices are held back until the run either finds the object again (they are yielded
empty) or ends (the first of them is yielded as the stop slice, the others never are), so
every slice is yielded at most once and a stopped run reports where the object ended.

A slice rejected because the margin box took in a neighbour (a change of grey values, a
sudden growth) gets a second try from the last mask's own box (:class:`Retry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .mask_metrics import dice
from .propagation_stops import DirectionStop, IntensityModel, StopReason, StopRules
from .session import SliceRef

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
        None, or why propagation stopped at this slice (a :class:`StopReason`, which
        compares equal to its text: "empty", "jump"); the mask of a stopped slice is empty.
    direction
        +1 or -1: the direction of the run that segmented this slice.
    """

    index: int
    mask: np.ndarray
    box: IntBox | None
    iou: float
    stopped: StopReason | None = None
    direction: int = 0


def anchor_parts(mask: np.ndarray, min_fraction: float = 0.1, min_pixels: int = 4
                 ) -> list[np.ndarray]:
    """The pieces of an anchor mask that are propagated separately.

    A connected piece counts when it holds at least ``min_fraction`` of the largest piece
    and ``min_pixels`` pixels. With fewer than two such pieces the whole mask is one part
    (specks included).
    """
    labels, count = ndimage.label(mask)
    if count < 2:
        return [mask]
    sizes = np.bincount(labels.ravel())[1:]
    keep = [i + 1 for i, s in enumerate(sizes)
            if s >= min_fraction * sizes.max() and s >= min_pixels]
    if len(keep) < 2:
        return [mask]
    return [labels == k for k in keep]


#: segment(ref, prev) -> (mask, box, iou): one slice from the neighbouring slice's mask.
Segment = Callable[[SliceRef, np.ndarray], tuple[np.ndarray, IntBox, float]]


@dataclass(frozen=True)
class Retry:
    """A second try at a slice the stop rules rejected for its grey values or a sudden growth.

    The slice is segmented again from the box of the last accepted mask, without margin
    (``segment``). That mask is kept when it is not a speck, keeps the anchor's grey values
    and overlaps the last accepted mask with Dice >= ``agreement``; at most ``limit``
    slices in a row are kept this way, then the rules decide alone. Inside the object the
    tight box stays on it where the margin box took in a neighbour; past the object's end the
    tight mask shrinks or moves and is not kept. Measured in
    ``research/propagation_stop_rules`` (README, "gated retry").
    """

    segment: Segment
    agreement: float = 0.5
    limit: int = 2
    #: The misses that are retried; an empty or jumping mask is not.
    reasons: tuple[StopReason, ...] = (StopReason.INTENSITY, StopReason.AREA)

    def keeps(self, mask: np.ndarray, prev: np.ndarray, largest: int, rules: StopRules,
              shift: float) -> bool:
        """Whether the retried ``mask`` is kept after the last accepted mask ``prev``.

        It must not be a speck (``rules.min_area_fraction`` of the ``largest`` mask), must
        keep the anchor's grey values (``shift``, in anchor standard deviations, within
        ``rules.max_intensity_shift``) and must overlap ``prev`` with Dice >= ``agreement``.
        """
        area = int(mask.sum())
        if area == 0 or area < rules.min_area_fraction * largest:
            return False
        if shift > rules.max_intensity_shift:
            return False
        return dice(mask, prev) >= self.agreement


class _Part:
    """One piece of the anchor, followed on its own."""

    def __init__(self, mask: np.ndarray, intensity: IntensityModel | None) -> None:
        self.prev = mask
        self.intensity = intensity
        self.largest = int(mask.sum())
        self.misses = 0
        self.retried = 0  # slices kept by the retry, in a row
        self.first_miss: tuple[int, StopReason] | None = None
        self.stopped: tuple[int, StopReason] | None = None

    def step(self, segment: Segment, ref: SliceRef, rules: StopRules, force: bool,
             image: Callable[[SliceRef], np.ndarray], retry: Retry | None = None
             ) -> tuple[np.ndarray | None, IntBox, float]:
        """The accepted mask of slice ``ref`` (None for a miss), the box and the IoU."""
        mask, box, iou = segment(ref, self.prev)
        reason = rules.reason(mask, self.prev, self.largest, self._shift(image, ref, mask))
        if reason is not None and force and mask.any():
            reason = None  # continuing past a stop: take what the model gives
        retried = False
        if retry is not None and reason in retry.reasons and self.retried < retry.limit:
            again, used, score = retry.segment(ref, self.prev)
            if retry.keeps(again, self.prev, self.largest, rules,
                           self._shift(image, ref, again)):
                mask, box, iou, reason, retried = again, used, score, None, True
        if reason is None:
            self.retried = self.retried + 1 if retried else 0
            self.prev, self.misses, self.first_miss = mask, 0, None
            self.largest = max(self.largest, int(mask.sum()))
            return mask, box, iou
        if self.misses == 0:
            self.first_miss = (ref.index, reason)
        self.misses += 1
        if self.misses >= rules.patience:
            self.stopped = self.first_miss
        return None, box, iou

    def _shift(self, image: Callable[[SliceRef], np.ndarray], ref: SliceRef,
               mask: np.ndarray) -> float:
        """How far the mask's grey values are from the anchor's (0 without a model)."""
        return 0.0 if self.intensity is None else self.intensity.shift(image(ref), mask)


def _merge_overlapping(parts: list[_Part]) -> list[_Part]:
    """Parts whose last masks overlap by half of the smaller are merged into one."""
    out: list[_Part] = []
    for part in parts:
        for kept in out:
            if kept.stopped is None and part.stopped is None:
                inter = int((kept.prev & part.prev).sum())
                if inter >= 0.5 * min(kept.prev.sum(), part.prev.sum()):
                    kept.prev = kept.prev | part.prev
                    kept.largest = max(kept.largest, part.largest, int(kept.prev.sum()))
                    break
        else:
            out.append(part)
    return out


class Run:
    """Slices segmented one after the other from a seed mask, in one direction.

    Parameters
    ----------
    segment
        How one slice is segmented from its neighbour's mask.
    image
        A slice's grey values as the model sees them (``session.slice_image``).
    axis, seed, direction, limit
        The run covers ``seed + direction`` .. ``limit`` (inclusive) along ``axis``.
    parts
        The seed's parts (see :func:`anchor_parts`).
    rules
        Stop rules of this run.
    force
        This many first slices are accepted whatever the rules say, unless empty
        (continuing past a stop).
    outer
        Whether the run goes beyond the outermost anchors (it records a
        :class:`DirectionStop`); a run filling a gap between anchors does not.
    barrier
        The run ends on an empty anchor (it records ``BARRIER`` when it reaches it).
    retry
        A second try at slices the rules reject (:class:`Retry`), or None.
    """

    def __init__(self, segment: Segment, image: Callable[[SliceRef], np.ndarray], axis: int,
                 seed: int, parts: list[np.ndarray], direction: int, limit: int,
                 rules: StopRules, *, force: int = 0, outer: bool = True,
                 barrier: bool = False, retry: Retry | None = None) -> None:
        self.segment, self.image, self.axis, self.direction = segment, image, axis, direction
        self.seed, self.index, self.limit = seed, seed + direction, limit
        seed_image = image(SliceRef(axis, seed)) if np.isfinite(rules.max_intensity_shift) \
            else None
        self.parts = [_Part(p, None if seed_image is None else IntensityModel.of(seed_image, p))
                      for p in parts]
        self.rules, self.force, self.outer, self.barrier = rules, force, outer, barrier
        self.retry = retry
        self.held: list[SliceResult] = []
        self.last = seed
        self.stopped = False
        self.stop: DirectionStop | None = None
        self.partner: Run | None = None

    @property
    def active(self) -> bool:
        return not self.stopped and (self.limit - self.index) * self.direction >= 0

    def step(self) -> list[SliceResult]:
        """Segment the next slice; the results that can be yielded now."""
        ref = SliceRef(self.axis, self.index)
        force = (self.index - self.seed) * self.direction <= self.force
        union, box, iou = None, None, 0.0
        for part in self.parts:
            if part.stopped is not None:
                continue
            mask, used, score = part.step(self.segment, ref, self.rules, force, self.image,
                                          self.retry)
            if box is None or (mask is not None and (union is None or score > iou)):
                box, iou = used, score
            if mask is not None:
                union = mask.copy() if union is None else union | mask
        self.parts = _merge_overlapping(self.parts)
        index = self.index
        self.index += self.direction
        if union is not None:
            out = [SliceResult(h.index, h.mask, h.box, h.iou, None, h.direction)
                   for h in self.held]
            self.held, self.last = [], index
            out.append(SliceResult(index, union, box, iou, None, self.direction))
            return out + self._at_end()
        shape = self.parts[0].prev.shape
        empty = SliceResult(index, np.zeros(shape, dtype=bool), box, iou, None, self.direction)
        if all(p.stopped is not None for p in self.parts):
            return [self._finish(empty)]
        self.held.append(empty)
        return self._at_end()

    def _finish(self, current: SliceResult) -> SliceResult:
        """The run ended: the first slice of its empty streak is the stop slice."""
        first = self.held[0] if self.held else current
        ended = max(self.parts, key=lambda p: p.stopped[0] * self.direction)
        reason = ended.stopped[1]
        self.stopped, self.held = True, []
        self._record(first.index, reason)
        return SliceResult(first.index, first.mask, first.box, first.iou, reason,
                           self.direction)

    def _at_end(self) -> list[SliceResult]:
        """Held slices are released (empty) when the run reaches its limit."""
        if self.active:
            return []
        out = self.held
        self.held = []
        if out:
            reasons = [p.first_miss[1] for p in self.parts if p.first_miss is not None]
            self._record(out[0].index, reasons[0] if reasons else StopReason.EMPTY)
        else:
            self._record(self.index, StopReason.BARRIER if self.barrier else StopReason.END)
        return out

    def _record(self, index: int, reason: StopReason) -> None:
        if not self.outer:
            return
        parts = tuple(p.stopped or p.first_miss or (self.index, StopReason.END)
                      for p in self.parts) if len(self.parts) > 1 else ()
        self.stop = DirectionStop(self.direction, int(index), reason, int(self.last), parts)

    def end_at_once(self) -> None:
        """The run has no slice to segment (its first slice is outside its range)."""
        self.stopped = True
        self._record(self.index, StopReason.BARRIER if self.barrier else StopReason.END)

    def cancel(self) -> None:
        """Record a cancelled run (only one that had not ended)."""
        if self.outer and self.stop is None:
            self.stop = DirectionStop(self.direction, int(self.index), StopReason.CANCELLED,
                                      int(self.last))
        self.stopped = True

"""Where a propagation run ends: stop reasons, stop rules and the record of each stop.

A slice beyond the outermost anchors is a *miss* when the model's mask vanishes (nothing, or a
speck of the largest mask seen), jumps away from the last accepted mask (it barely overlaps it
and its centre moved further than the two masks' sizes), slid onto another tissue (its mean
grey value lies more than ``max_intensity_shift`` of the anchor's standard deviations from the
anchor's) or grew suddenly (``max_area_ratio`` x the last accepted mask: a leak). The next
slice is then prompted from the last accepted mask again, and only ``patience`` consecutive
misses end the run (at the first of them): one odd slice no longer ends it. Before issue 18
a single such slice ended the run, and a mask overlapping the previous one by less than 30 %
did too; on large, irregular, multi-part and tubular structures that ended runs a few slices
after the anchor. The grey-value and area rules stay because nothing else sees the end of
most CT organs and small glands (the model then segments the neighbouring tissue inside the
box, which neither vanishes nor jumps): ``research/propagation_stop_rules``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


class StopReason(str, enum.Enum):
    """Why a propagation run (one direction of one anchor) ended."""

    #: The model's mask vanished (empty, or a speck of the largest mask of the run).
    EMPTY = "empty"
    #: The mask jumped away from the previous one (little overlap, centre moved far).
    JUMP = "jump"
    #: The mask slid onto another tissue (its grey values moved away from the anchor's).
    INTENSITY = "intensity shift"
    #: The mask grew suddenly (the model leaked into a neighbour).
    AREA = "area jump"
    #: The run reached the end of the volume or of the slice range it was given.
    END = "end of range"
    #: The run met an empty anchor: a slice marked outside the object (*Cut here* marks
    #: the slice it cut at, and later runs of that object stop there too).
    BARRIER = "marked outside"
    #: The run was cancelled.
    CANCELLED = "cancelled"
    #: The user cut the pending result there (*Cut here*: the object ends on that slice).
    CUT = "cut by you"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class DirectionStop:
    """Where one direction of a run ended (what a UI shows: "stopped at slice 42: empty").

    Attributes
    ----------
    direction
        +1 (towards higher slice indices) or -1.
    index
        The first slice of that direction without the object: the first of the missed
        slices that ended the run, or one past the range's end (``END``).
    reason
        Why it ended.
    last
        The last slice that holds a mask (the anchor when no slice was accepted); a run
        continued with :func:`~napari_medsam.segmentation.propagation.continue_propagation`
        starts from here.
    parts
        For a multi-part anchor: (slice, reason) where each part ended, in part order.
    """

    direction: int
    index: int
    reason: StopReason
    last: int
    parts: tuple[tuple[int, StopReason], ...] = ()


@dataclass(frozen=True)
class StopRules:
    """When a run beyond the outermost anchors ends (all relative quantities).

    Attributes
    ----------
    min_area_fraction
        ``EMPTY``: a mask smaller than this fraction of the largest mask of the run (anchor
        included), or with no pixel, vanished.
    min_overlap
        ``JUMP`` needs this little overlap: the fraction of the new mask that lies on the
        last accepted mask (dilated by one pixel) is below it ...
    max_shift
        ... and the centre moved more than this many times the sum of the two masks'
        equivalent radii (a mask that slid a little along an oblique tube is no jump).
    max_intensity_shift
        ``INTENSITY``: the mean grey value (as the model sees it) inside the mask lies more
        than this many standard deviations of the anchor's grey values from the anchor's
        mean (``inf``: off; see :class:`IntensityModel`).
    max_area_ratio
        ``AREA``: the mask is more than this many times the last accepted mask (``inf``:
        off).
    patience
        Consecutive missed slices that end the run (it ends at the first of them).
    """

    min_area_fraction: float = 0.05
    min_overlap: float = 0.1
    max_shift: float = 1.0
    max_intensity_shift: float = 2.0
    max_area_ratio: float = 1.5
    patience: int = 2

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def reason(self, mask: np.ndarray, prev: np.ndarray, largest: int, shift: float = 0.0
               ) -> StopReason | None:
        """Why ``mask`` is a miss after the last accepted mask ``prev`` (None: accept it).

        ``shift`` is the intensity shift in anchor standard deviations
        (:meth:`IntensityModel.shift`).
        """
        area = int(mask.sum())
        if area == 0 or area < self.min_area_fraction * largest:
            return StopReason.EMPTY
        if shift > self.max_intensity_shift:
            return StopReason.INTENSITY
        if area > self.max_area_ratio * max(int(prev.sum()), 1):
            return StopReason.AREA
        near = ndimage.binary_dilation(prev) if prev.any() else prev
        if (mask & near).sum() >= self.min_overlap * area:
            return None
        prev_area = max(int(prev.sum()), 1)
        shift = float(np.hypot(*(np.subtract(_centre(mask), _centre(prev)))))
        radii = np.sqrt(area / np.pi) + np.sqrt(prev_area / np.pi)
        return StopReason.JUMP if shift > self.max_shift * radii else None


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


def _centre(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0.0, 0.0
    return float(rows.mean()), float(cols.mean())


#: Only an empty mask ends a run, at once (between two anchors, where the object goes on).
EMPTY_ONLY = StopRules(min_area_fraction=0.0, min_overlap=0.0, max_shift=float("inf"),
                       max_intensity_shift=float("inf"), max_area_ratio=float("inf"),
                       patience=1)

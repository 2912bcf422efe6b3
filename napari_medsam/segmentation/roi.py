"""Regions of interest (ROI) for small and low-contrast objects, and a hysteresis threshold.

LiteMedSAM sees every slice at 256x256 pixels. For a box small enough (``RoiPolicy.context``),
the session also segments it in a region of interest: ``input_size / upsample`` native pixels
square around the box (64 for LiteMedSAM; the whole slice, padded, when the slice is
smaller), so the model sees each native pixel as exactly ``upsample`` x ``upsample`` model
pixels. The ROI is mapped to grey values like its slice, embedded (cached per slice and
region), prompted in its own coordinates, and its logits are pasted back and averaged with
the whole slice's. Box masks that got a ROI then use a hysteresis threshold: pixels above
``weak_logit`` connected to pixels above 0.

The rule applies to data-driven intensity mappings (MRI percentiles, min-max) and, under a
fixed CT window, only to slices larger than the model input: on CT slices the model already
sees at 2x it measured worse. No Qt and no napari here;
:class:`~napari_medsam.segmentation.SegmentationSession` applies it (``session.zoom``).
Measured accuracy and cost: ``docs/speed_accuracy.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

from napari_medsam.io.intensity import CT_WINDOWS, IntensityMapping

__all__ = [
    "DEFAULT_POLICY",
    "ZOOM_MODES",
    "Crop",
    "RoiPolicy",
    "choose_crop",
    "combine_predictions",
    "hysteresis_mask",
]

#: Accepted values of ``SegmentationSession.zoom`` and of ``--zoom``.
ZOOM_MODES = ("auto", "off")
#: Logit given to pixels outside a crop when its logits are pasted back on the slice.
OUTSIDE_LOGIT = -40.0

#: A box on a slice: (x0, y0, x1, y1), x = column, inclusive pixel indices.
IntBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class Crop:
    """A region of a slice and the square image (``canvas``) the model is given for it.

    The region is rows ``y0 .. y0 + rows - 1`` and cols ``x0 .. x0 + cols - 1``; it is put in
    the top-left corner of a ``canvas`` x ``canvas`` image (the rest is filled with the
    region's lowest grey value, which the model's min-max normalisation maps to 0 like its
    own padding), so region pixels and canvas pixels share coordinates up to the offset.
    """

    y0: int
    x0: int
    rows: int
    cols: int
    canvas: int

    def __post_init__(self) -> None:
        if self.rows < 2 or self.cols < 2 or self.y0 < 0 or self.x0 < 0:
            raise ValueError(f"invalid crop {self}")
        if self.canvas < max(self.rows, self.cols):
            raise ValueError(f"canvas {self.canvas} is smaller than the region {self}")

    @property
    def side(self) -> int:
        """The region's longer side in pixels."""
        return max(self.rows, self.cols)

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        """``(y0, x0, rows, cols, canvas)``: what identifies the crop in cache keys."""
        return (self.y0, self.x0, self.rows, self.cols, self.canvas)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.rows), slice(self.x0, self.x0 + self.cols)

    def extract(self, image2d: np.ndarray) -> np.ndarray:
        """The region's pixels of a slice-sized array."""
        return np.asarray(image2d)[self.slices]

    def canvas_image(self, region: np.ndarray) -> np.ndarray:
        """The region (uint8) on the model's square canvas, padded with its lowest value."""
        region = np.asarray(region)
        if region.shape != (self.rows, self.cols):
            raise ValueError(f"region of shape {region.shape} does not fit the crop "
                             f"{self.rows}x{self.cols}")
        if self.canvas == self.rows == self.cols:
            return region
        out = np.full((self.canvas, self.canvas), region.min(), dtype=region.dtype)
        out[: self.rows, : self.cols] = region
        return out

    def box_to_crop(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """A slice box (x0, y0, x1, y1) in the crop's pixel coordinates."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return (x0 - self.x0, y0 - self.y0, x1 - self.x0, y1 - self.y0)

    def box_to_slice(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """A crop box (x0, y0, x1, y1) back in the slice's pixel coordinates."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return (x0 + self.x0, y0 + self.y0, x1 + self.x0, y1 + self.y0)

    def points_to_crop(self, points: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
        """Clicks (x, y[, label]) in the crop's pixel coordinates."""
        return [(float(p[0]) - self.x0, float(p[1]) - self.y0, *(float(v) for v in p[2:]))
                for p in points]

    def contains(self, box: Sequence[float], margin: float = 0.0,
                 shape: tuple[int, int] | None = None) -> bool:
        """Whether ``box`` grown by ``margin`` pixels on every side lies inside the region.

        With the slice's ``shape``, a side of the region on the slice's border needs no
        margin (the object cannot go on beyond the slice); the box itself must always be
        inside.
        """
        x0, y0, x1, y1 = (float(v) for v in box)
        x_end, y_end = self.x0 + self.cols - 1, self.y0 + self.rows - 1
        if x0 < self.x0 or y0 < self.y0 or x1 > x_end or y1 > y_end:
            return False
        rows, cols = shape if shape is not None else (-1, -1)
        return ((self.x0 == 0 and shape is not None) or x0 - margin >= self.x0) \
            and ((self.y0 == 0 and shape is not None) or y0 - margin >= self.y0) \
            and (x_end == cols - 1 or x1 + margin <= x_end) \
            and (y_end == rows - 1 or y1 + margin <= y_end)

    def paste(self, crop_array: np.ndarray, shape: tuple[int, int], fill=0) -> np.ndarray:
        """A slice-sized array holding ``crop_array`` (region or canvas sized) at the region
        and ``fill`` elsewhere."""
        values = np.asarray(crop_array)
        if values.shape == (self.canvas, self.canvas):
            values = values[: self.rows, : self.cols]
        if values.shape != (self.rows, self.cols):
            raise ValueError(f"array of shape {values.shape} does not fit the crop "
                             f"{self.rows}x{self.cols} (canvas {self.canvas})")
        out = np.full(shape, fill, dtype=values.dtype)
        out[self.slices] = values
        return out


@dataclass(frozen=True)
class RoiPolicy:
    """When a box prompt is also segmented in a region of interest (ROI), and its threshold.

    The ROI is ``input_size / upsample`` native pixels square around the box (the whole
    slice, padded, when the slice is smaller), so the model sees every native pixel as
    exactly ``upsample`` x ``upsample`` model pixels; on the whole slice it sees them at
    ``input_size / longest side``, usually a fraction. A box gets a ROI when it fits in it
    with ``context``; the logits of the ROI and of the whole slice are then averaged.

    Attributes
    ----------
    upsample
        Model pixels per native pixel in the ROI (a power of two keeps the resampling exact).
    context
        The ROI's side is at least this many times the box's longer side; larger boxes are
        segmented on the whole slice only.
    grids
        Where ROIs start: on grids of these fractions of their side, coarse to fine (32 and 8
        native pixels for LiteMedSAM). A box gets the coarse grid's ROI that holds it most
        centrally when that ROI leaves ``margin`` free around it, else the finest grid's.
        The ROI is a function of the box alone: the same box always gets the same mask,
        whatever was segmented before, and nearby boxes (other structures on the slice, the
        next click, the next slice of a propagation) share one embedding.
    margin
        Free space the coarse grid's ROI must leave on every inner side of the box, as a
        fraction of the box's longer side (a side on the slice's border needs none).
    weak_logit
        Hysteresis threshold of box masks that got a ROI: pixels with logit above
        ``weak_logit`` that are connected to a pixel above 0 join the mask.

    The class attributes below are fixed (the measured choice) and not configurable:
    ``combine`` (the two logit maps are averaged), ``intensity`` and ``percentiles`` (the
    ROI's grey values are the slice's; both are part of a ROI embedding's cache key). The
    hysteresis threshold applies only to boxes that got a ROI, and every candidate box of
    the click search is predicted like a box prompt.
    """

    upsample: float = 4.0
    context: float = 1.25
    grids: tuple[float, ...] = (0.5, 0.125)
    margin: float = 0.1
    weak_logit: float = -3.0

    combine: ClassVar[str] = "mean"
    intensity: ClassVar[str] = "slice"
    percentiles: ClassVar[tuple[float, float]] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.context < 1.0:
            raise ValueError(f"context must be >= 1 (the ROI holds the box), got {self.context}")
        if self.upsample <= 0:
            raise ValueError(f"upsample must be > 0, got {self.upsample}")
        if not self.grids or not all(0.0 < g <= 1.0 for g in self.grids):
            raise ValueError(f"grids must be fractions in (0, 1] of the ROI's side, "
                             f"got {self.grids}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def applies_to(self, mapping, shape: tuple[int, int], input_size: int) -> bool:
        """Whether the rule is used on slices of ``shape`` that the model sees via ``mapping``:
        always for data-driven mappings, for a fixed CT window only on slices larger than the
        model input (which the model sees shrunk, so small structures lose pixels)."""
        return not is_fixed_window(mapping) or max(shape) > input_size

    def canvas(self, input_size: int) -> int:
        """Side (native pixels) of the ROI: ``input_size / upsample``."""
        return max(2, int(round(input_size / self.upsample)))

    def grid_steps(self, input_size: int) -> tuple[int, ...]:
        """Spacings (native pixels) of the grids ROIs start on, coarse to fine."""
        return tuple(max(1, int(round(g * self.canvas(input_size)))) for g in self.grids)


DEFAULT_POLICY = RoiPolicy()


def _place(centre: float, side: int, size: int) -> int:
    """Start of a segment of ``side`` pixels centred on ``centre``, inside ``0..size-1``."""
    start = int(math.floor(centre - (side - 1) / 2.0 + 0.5))
    return max(0, min(start, size - side))


def _place_on_grid(lo: float, hi: float, side: int, size: int, step: int) -> int | None:
    """Start of a segment of ``side`` pixels inside ``0..size-1`` that holds ``lo..hi``: a
    multiple of ``step`` (or the last possible start), the one that leaves the most room on
    its tighter side; None when no such start holds the interval."""
    last = size - side
    starts = {*range(0, last + 1, step), last}
    held = [s for s in starts if s <= lo and hi <= s + side - 1]
    if not held:
        return None
    return max(held, key=lambda s: (min(lo - s, s + side - 1 - hi), -s))


def choose_crop(box: Sequence[float], shape: tuple[int, int], input_size: int,
                policy: RoiPolicy = DEFAULT_POLICY) -> Crop | None:
    """The ROI to segment ``box`` in, or None when the box gets none.

    The ROI is :meth:`RoiPolicy.canvas` pixels square, inside the slice, and starts on one
    of the policy's grids (:meth:`RoiPolicy.grid_steps`): the coarsest whose most central
    ROI leaves the box ``margin`` free around it, else the finest: a function of the box
    alone. Where the slice is smaller than the ROI, the ROI is cut to the slice (and padded
    on the canvas). None when the box is too large for it (``context``), or when the ROI
    would be exactly the whole slice at the whole slice's own scale.

    Parameters
    ----------
    box
        (x0, y0, x1, y1) on the slice, inclusive pixel indices.
    shape
        (rows, cols) of the slice.
    input_size
        The model's input side (256 for LiteMedSAM).
    policy
        The rule.
    """
    rows, cols = (int(s) for s in shape)
    canvas = policy.canvas(input_size)
    x0, y0, x1, y1 = (float(v) for v in box)
    extent = max(x1 - x0 + 1.0, y1 - y0 + 1.0)
    if policy.context * extent > canvas:
        return None
    if max(rows, cols) == canvas:  # the whole slice, seen exactly as without a ROI
        return None
    crop_rows, crop_cols = min(canvas, rows), min(canvas, cols)
    if crop_rows < 2 or crop_cols < 2:
        return None
    room = policy.margin * extent
    for step in policy.grid_steps(input_size):
        top = _place_on_grid(y0, y1, crop_rows, rows, step)
        left = _place_on_grid(x0, x1, crop_cols, cols, step)
        if top is not None and left is not None:
            crop = Crop(top, left, crop_rows, crop_cols, canvas)
            if crop.contains(box, room, (rows, cols)):
                return crop
    # no grid leaves the room: the finest grid's ROI, or the centred one
    if top is None:
        top = _place((y0 + y1) / 2.0, crop_rows, rows)
    if left is None:
        left = _place((x0 + x1) / 2.0, crop_cols, cols)
    crop = Crop(top, left, crop_rows, crop_cols, canvas)
    return crop if crop.contains(box) else None


def combine_predictions(plain, roi, mode: str = "mean"):
    """One prediction from the whole slice's (``plain``) and the ROI's (``roi``): the mean of
    their logits (predicted IoU: the mean).

    Both are :class:`~napari_medsam.engine.protocol.Prediction` at the slice's size (the
    ROI's logits pasted back, :data:`OUTSIDE_LOGIT` elsewhere). ``mode`` must be
    ``"mean"`` (:attr:`RoiPolicy.combine`).
    """
    from napari_medsam.engine.protocol import Prediction

    if mode != "mean":
        raise ValueError(f"combine must be 'mean', got {mode!r}")
    logits = (np.asarray(plain.logits, dtype=np.float32)
              + np.asarray(roi.logits, dtype=np.float32)) / np.float32(2.0)
    return Prediction(logits=logits, mask=logits > 0, iou=(plain.iou + roi.iou) / 2.0,
                      low_res_logits=plain.low_res_logits)


def is_fixed_window(mapping: IntensityMapping) -> bool:
    """Whether the mapping is a CT window in Hounsfield units (fixed, not data-driven)."""
    return mapping.name in CT_WINDOWS or str(mapping.key).startswith("ct_window:")


def hysteresis_mask(logits: np.ndarray, weak: float | None, strong: float = 0.0) -> np.ndarray:
    """Pixels above ``strong``, plus those above ``weak`` connected to them (8-connected).

    ``weak`` None (or >= ``strong``) gives the plain ``logits > strong``.
    """
    logits = np.asarray(logits)
    core = logits > strong
    if weak is None or weak >= strong or not core.any():
        return core
    candidate = logits > weak
    labels, count = ndimage.label(candidate, structure=np.ones((3, 3), dtype=bool))
    keep = np.unique(labels[core])
    keep = keep[keep > 0]
    return np.isin(labels, keep)

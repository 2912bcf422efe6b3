"""Regions of interest (ROI) for small and low-contrast objects, and a hysteresis threshold.

LiteMedSAM sees every slice at 256x256 pixels. For a box small enough (``RoiPolicy.context``),
the session also segments it in a region of interest: ``input_size / upsample`` native pixels
square around the box (64 for LiteMedSAM; the whole slice, padded, when the slice is
smaller), so the model sees each native pixel as exactly ``upsample`` x ``upsample`` model
pixels. The ROI is mapped to grey values, embedded (cached per slice and region), prompted in
its own coordinates, and its logits are pasted back and combined with the whole slice's
(mean of the logits by default). Box masks then use a hysteresis threshold: pixels above
``weak_logit`` connected to pixels above 0.

The rule applies to data-driven intensity mappings (MRI percentiles, min-max) and, under a
fixed CT window, only to slices larger than the model input (``RoiPolicy.on_ct_windows``):
on CT slices the model already sees at 2x it measured worse. No Qt and no napari here;
:class:`~napari_medsam.segmentation.SegmentationSession` applies it (``session.zoom``).
Measurements and how the parameters were chosen: ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_medsam.io.intensity import CT_WINDOWS, IntensityMapping

__all__ = [
    "COMBINE_MODES",
    "DEFAULT_POLICY",
    "ZOOM_MODES",
    "Crop",
    "RoiPolicy",
    "choose_crop",
    "combine_predictions",
    "crop_mapping",
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


#: How the whole-slice and the ROI predictions of a box are combined.
COMBINE_MODES = ("iou", "mean", "roi")
#: What the ROI rule does to clicks (:attr:`RoiPolicy.clicks`).
CLICK_MODES = ("off", "search", "box", "refit")


@dataclass(frozen=True)
class RoiPolicy:
    """When and how a box prompt is also segmented in a region of interest (ROI).

    The ROI is ``input_size / upsample`` native pixels square around the box (the whole
    slice, padded, when the slice is smaller), so the model sees every native pixel as
    exactly ``upsample`` x ``upsample`` model pixels; on the whole slice it sees them at
    ``input_size / longest side``, usually a fraction. A box gets a ROI when it fits in it
    with ``context``; its prediction is then combined with the whole slice's (``combine``).

    Attributes
    ----------
    upsample
        Model pixels per native pixel in the ROI (a power of two keeps the resampling exact).
    context
        The ROI's side is at least this many times the box's longer side; larger boxes are
        segmented on the whole slice only.
    combine
        ``"iou"``: keep the prediction (whole slice or ROI) with the higher predicted IoU;
        ``"mean"``: average the two logit maps; ``"roi"``: the ROI's alone.
    reuse_margin
        A ROI already embedded on the slice is reused for a new box that it holds with at
        least this fraction of the box's longer side free on every inner side.
    intensity
        Grey values the model sees in the ROI: ``"slice"`` (the session's mapping, as on the
        whole slice), ``"local"`` (the ROI's own ``percentiles`` of the raw values) or
        ``"auto"`` (``local`` for data-driven mappings such as MRI percentiles, ``slice`` for
        CT windows).
    percentiles
        Low and high percentiles of the ROI's raw values for ``"local"``.
    weak_logit
        Hysteresis threshold for box prompts (None: plain ``logit > 0``): pixels with logit
        above ``weak_logit`` that are connected to a pixel above 0 join the mask.
    weak_everywhere
        Use the hysteresis threshold on every box mask, not only on boxes that got a ROI.
    clicks
        What the rule does to a mask grown from clicks: ``"off"`` (nothing: the click
        search runs on the whole slice), ``"search"`` (every candidate box of the click
        search is predicted like a box prompt, in a ROI where it gets one), ``"box"`` (the
        box the click search ended with is segmented like a drawn box) or ``"refit"`` (the
        click mask's bounding box, grown by 10 % + 1 pixel, is).
    on_ct_windows
        Where the rule is used when the model sees a fixed CT window (Hounsfield units):
        ``"downsampled"`` only on slices larger than the model input (which the model sees
        shrunk, so small structures lose pixels), ``"always"`` or ``"never"``. Data-driven
        mappings (MRI percentiles, min-max) always use it.
    """

    upsample: float = 4.0
    context: float = 1.25
    combine: str = "mean"
    reuse_margin: float = 0.1
    intensity: str = "slice"
    percentiles: tuple[float, float] = (0.5, 99.5)
    weak_logit: float | None = -3.0
    weak_everywhere: bool = False
    clicks: str = "search"
    on_ct_windows: str = "downsampled"

    def applies_to(self, mapping, shape: tuple[int, int], input_size: int) -> bool:
        """Whether the rule is used on slices of ``shape`` that the model sees via ``mapping``."""
        if not is_fixed_window(mapping) or self.on_ct_windows == "always":
            return True
        return self.on_ct_windows == "downsampled" and max(shape) > input_size

    def __post_init__(self) -> None:
        if self.context < 1.0:
            raise ValueError(f"context must be >= 1 (the ROI holds the box), got {self.context}")
        if self.upsample <= 0:
            raise ValueError(f"upsample must be > 0, got {self.upsample}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got "
                             f"{self.combine!r}")
        if self.clicks not in CLICK_MODES:
            raise ValueError(f"clicks must be one of {', '.join(CLICK_MODES)}, got "
                             f"{self.clicks!r}")
        if self.on_ct_windows not in ("downsampled", "always", "never"):
            raise ValueError(f"on_ct_windows must be 'downsampled', 'always' or 'never', got "
                             f"{self.on_ct_windows!r}")
        if self.intensity not in ("auto", "slice", "local"):
            raise ValueError(f"intensity must be 'auto', 'slice' or 'local', got "
                             f"{self.intensity!r}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got "
                             f"{self.percentiles}")

    def canvas(self, input_size: int) -> int:
        """Side (native pixels) of the ROI: ``input_size / upsample``."""
        return max(2, int(round(input_size / self.upsample)))


DEFAULT_POLICY = RoiPolicy()


def _place(centre: float, side: int, size: int) -> int:
    """Start of a segment of ``side`` pixels centred on ``centre``, inside ``0..size-1``."""
    start = int(math.floor(centre - (side - 1) / 2.0 + 0.5))
    return max(0, min(start, size - side))


def choose_crop(box: Sequence[float], shape: tuple[int, int], input_size: int,
                policy: RoiPolicy = DEFAULT_POLICY) -> Crop | None:
    """The ROI to segment ``box`` in, or None when the box gets none.

    The ROI is :meth:`RoiPolicy.canvas` pixels square, centred on the box and shifted to lie
    inside the slice; where the slice is smaller than that, the ROI is cut to the slice (and
    padded on the canvas). None when the box is too large for it (``context``), or when the
    ROI would be exactly the whole slice at the whole slice's own scale.

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
    top = _place((y0 + y1) / 2.0, crop_rows, rows)
    left = _place((x0 + x1) / 2.0, crop_cols, cols)
    crop = Crop(top, left, crop_rows, crop_cols, canvas)
    return crop if crop.contains(box) else None


def combine_predictions(plain, roi, mode: str = "iou"):
    """One prediction from the whole slice's (``plain``) and the ROI's (``roi``).

    Both are :class:`~napari_medsam.engine.protocol.Prediction` at the slice's size (the
    ROI's logits pasted back, :data:`OUTSIDE_LOGIT` elsewhere). ``"iou"``: the one with the
    higher predicted IoU; ``"mean"``: the mean of the logits (predicted IoU: the mean);
    ``"roi"``: the ROI's.
    """
    from napari_medsam.engine.protocol import Prediction

    if mode == "roi":
        return roi
    if mode == "iou":
        return roi if roi.iou > plain.iou else plain
    if mode == "mean":
        logits = (np.asarray(plain.logits, dtype=np.float32)
                  + np.asarray(roi.logits, dtype=np.float32)) / np.float32(2.0)
        return Prediction(logits=logits, mask=logits > 0, iou=(plain.iou + roi.iou) / 2.0,
                          low_res_logits=plain.low_res_logits)
    raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {mode!r}")


def is_fixed_window(mapping) -> bool:
    """Whether the mapping is a CT window in Hounsfield units (fixed, not data-driven)."""
    name = str(getattr(mapping, "name", ""))
    return name in CT_WINDOWS or str(getattr(mapping, "key", "")).startswith("ct_window:")


def crop_mapping(raw_crop: np.ndarray, base, policy: RoiPolicy = DEFAULT_POLICY):
    """The intensity mapping the model sees in a crop.

    ``"slice"`` (and ``"auto"`` for CT windows) keeps ``base``; ``"local"`` (and ``"auto"``
    for data-driven mappings) uses the crop's own percentiles of the raw values, falling back
    to ``base`` on a flat crop.
    """
    mode = policy.intensity
    if mode == "slice" or (mode == "auto" and is_fixed_window(base)):
        return base
    values = np.asarray(raw_crop, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return base
    low, high = (float(v) for v in np.percentile(values, policy.percentiles))
    if not high > low:
        return base
    return IntensityMapping("roi_percentile", low, high)


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

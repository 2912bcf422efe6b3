"""The ROI rule's study variants, which the product does not offer.

The product's :class:`~napari_medsam.segmentation.roi.RoiPolicy` keeps only the measured
choice (ROI at 4x, logits averaged, the slice's grey values, hysteresis -3 on boxes that got a
ROI, the click search through ROIs, CT only on slices larger than the model input).
:class:`StudyRoiPolicy` has every variant the study compared; :func:`install` lets a
:class:`~napari_medsam.segmentation.SegmentationSession` given such a policy use them (the
session reads the policy's attributes, ``combine_predictions`` and the ROI's grey values are
replaced by the variants below). Only for ``roi_eval.py`` beside this file.

Since 2026-12-06 the product no longer carries the hooks of two rejected variants,
``weak_everywhere=True`` and ``clicks="box"/"refit"``: :class:`StudyRoiPolicy` refuses them;
to rerun them, check out git a1471be, where the session still read those attributes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from napari_medsam.io.intensity import IntensityMapping  # noqa: E402
from napari_medsam.segmentation.roi import RoiPolicy, is_fixed_window  # noqa: E402

COMBINE_MODES = ("iou", "mean", "roi")
CLICK_MODES = ("off", "search", "box", "refit")
ON_CT = ("downsampled", "always", "never")
INTENSITY_MODES = ("auto", "slice", "local")


@dataclass(frozen=True)
class StudyRoiPolicy:
    """:class:`~napari_medsam.segmentation.roi.RoiPolicy` with the study's variants.

    ``combine``: ``"iou"`` (the prediction with the higher predicted IoU), ``"mean"``
    (average the logits, the product's) or ``"roi"`` (the ROI's alone). ``intensity``:
    ``"slice"`` (the product's), ``"local"`` (the ROI's own ``percentiles``) or ``"auto"``
    (local for data-driven mappings). ``weak_logit`` None: plain ``logit > 0``.
    ``weak_everywhere``: the hysteresis threshold on every box. ``clicks``: ``"off"`` (click
    search on the whole slice), ``"search"`` (the product's), ``"box"`` / ``"refit"`` (the
    search's final box, or the click mask's box + 10 %, segmented again like a drawn box).
    ``on_ct_windows``: ``"downsampled"`` (the product's), ``"always"`` or ``"never"``.
    """

    upsample: float = 4.0
    context: float = 1.25
    combine: str = "mean"
    # the product's region placement since 2026-12-06 (was reuse_margin): see RoiPolicy
    grids: tuple[float, ...] = (0.5, 0.125)
    margin: float = 0.1
    intensity: str = "slice"
    percentiles: tuple[float, float] = (0.5, 99.5)
    weak_logit: float | None = -3.0
    weak_everywhere: bool = False
    clicks: str = "search"
    on_ct_windows: str = "downsampled"

    def __post_init__(self) -> None:
        for name, allowed in (("combine", COMBINE_MODES), ("clicks", CLICK_MODES),
                              ("on_ct_windows", ON_CT), ("intensity", INTENSITY_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        if self.weak_everywhere or self.clicks in ("box", "refit"):
            raise ValueError("weak_everywhere and clicks box/refit need the product at git "
                             "a1471be (see the module docstring)")
        if self.context < 1.0 or self.upsample <= 0:
            raise ValueError("context must be >= 1 and upsample > 0")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got "
                             f"{self.percentiles}")

    def applies_to(self, mapping, shape: tuple[int, int], input_size: int) -> bool:
        if not is_fixed_window(mapping) or self.on_ct_windows == "always":
            return True
        return self.on_ct_windows == "downsampled" and max(shape) > input_size

    def canvas(self, input_size: int) -> int:
        return max(2, int(round(input_size / self.upsample)))

    grid_steps = RoiPolicy.grid_steps


def combine_predictions(plain, roi, mode: str = "mean"):
    """The study's combinations of the whole slice's and the ROI's predictions."""
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


def crop_mapping(raw_crop: np.ndarray, base, policy=None):
    """The ROI's grey values: the slice's, or the ROI's own percentiles (``local``)."""
    mode = getattr(policy, "intensity", "slice")
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


def install() -> None:
    """Let sessions use the variants above (the product's functions otherwise)."""
    from napari_medsam.segmentation import session

    session.combine_predictions = combine_predictions

    def crop_image(self, ref, crop):
        raw = crop.extract(np.take(self.volume, ref.index, axis=ref.axis))
        return crop.canvas_image(crop_mapping(raw, self.mapping, self.roi_policy).apply(raw))

    session.SegmentationSession.crop_image = crop_image


def check() -> None:
    """The variants behave as they did in the product while the study ran."""
    from napari_medsam.engine.protocol import Prediction
    from napari_medsam.io.intensity import auto_mapping, ct_window

    a = Prediction(np.full((4, 4), 1.0, np.float32), np.ones((4, 4), bool), 0.5, np.zeros(1))
    b = Prediction(np.full((4, 4), -3.0, np.float32), np.zeros((4, 4), bool), 0.9, np.zeros(1))
    assert combine_predictions(a, b, "iou") is b and combine_predictions(a, b, "roi") is b
    assert np.all(combine_predictions(a, b, "mean").logits == -1.0)
    raw = np.linspace(0, 1000, 400).reshape(20, 20)
    ct = ct_window("abdomen")
    assert crop_mapping(raw, ct, StudyRoiPolicy(intensity="auto")) is ct
    mr = auto_mapping(np.linspace(0, 3000, 1000).reshape(10, 10, 10), "MR")
    local = crop_mapping(raw, mr, StudyRoiPolicy(intensity="auto", percentiles=(1, 99)))
    assert abs(local.low - np.percentile(raw, 1)) < 1e-9
    assert crop_mapping(raw, mr, StudyRoiPolicy(intensity="slice")) is mr
    assert crop_mapping(np.zeros((5, 5)), mr, StudyRoiPolicy(intensity="local")) is mr
    for bad in ({"combine": "vote"}, {"intensity": "wild"}, {"percentiles": (50, 10)},
                {"clicks": "sometimes"}):
        try:
            StudyRoiPolicy(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")
    from napari_medsam.segmentation.roi import choose_crop

    for box in ((100, 200, 139, 219), (100, 200, 149, 219), (0, 500, 19, 511)):
        assert choose_crop(box, (512, 512), 256, StudyRoiPolicy()) \
            == choose_crop(box, (512, 512), 256, RoiPolicy()), box
    print("ok: study variants behave as measured")


if __name__ == "__main__":
    check()

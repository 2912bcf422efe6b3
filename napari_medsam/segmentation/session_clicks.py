"""How a :class:`~napari_medsam.segmentation.session.SegmentationSession` answers clicks
beyond the click search itself: the click search's per-slice predictor and point prompts
for models that answer clicks natively.

Kept out of ``session.py`` for its size; the session's methods call these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from napari_medsam.engine.protocol import Box, Click, Embedding, Prediction

from .roi import combine_predictions

if TYPE_CHECKING:
    from .session import SegmentationSession, SliceRef


def native_clicks(session: SegmentationSession, ref: SliceRef, box: Box | None,
                  points: list[Click], combine: Callable = combine_predictions) -> np.ndarray:
    """Clicks (and a box) as one point prompt; with ``zoom == "auto"`` a small result
    is predicted again in its region of interest and the two are combined, as boxes
    are (two decoder calls).

    ``combine`` joins the whole-slice and ROI predictions (the session passes the
    ``combine_predictions`` its own module holds, so that a study replacing that name
    there changes this path too).
    """
    pred = session.predict(ref, box=box, points=points)
    if box is not None or not pred.mask.any() or not session.roi_active(ref.axis):
        return pred.mask
    rows = np.flatnonzero(pred.mask.any(axis=1))
    cols = np.flatnonzero(pred.mask.any(axis=0))
    crop = session.crop_for(ref, Box(cols[0], rows[0], cols[-1], rows[-1]))
    if crop is None:
        return pred.mask
    roi = session.predict_in_crop(ref, crop, points=points)
    return combine(pred, roi, session.roi_policy.combine).mask


class _SlicePredictor:
    """A prompt model for :func:`~napari_medsam.segmentation.clicks.segment_clicks` that
    predicts every box on one slice through :meth:`SegmentationSession.predict` (whole slice
    and ROI combined where the box gets a ROI). The embedding passed in is the slice's own
    and is not needed again."""

    def __init__(self, session: SegmentationSession, ref: SliceRef) -> None:
        self.session, self.ref = session, ref

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Click] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        return self.session.predict(self.ref, box=box, points=points, mask_input=mask_input)

"""The product's propagation with the learned stop model as one more miss (research only).

``use_stop_model(model)`` replaces, while it is active, the step of one part of a run
(``napari_medsam.segmentation.propagation_runs._Part.step``) by the product's step plus one
check: a mask the rules accept is still a miss ("unlike the object") when
``model.misses(...)`` (``stop_model.py``). Everything else (patience, parts, *Continue*'s
forced slices) is the product's. This is the code the 2026-12-06 "learned stop" rows of the
README were measured with (``variants.py learned``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stop_model import SliceSignals, StopModel

from napari_medsam.segmentation import propagation_runs

#: The reason a learned miss records (the product's reasons are ``StopReason`` values).
UNLIKE = "unlike the object"


def _step(model: StopModel):
    def step(self, segment, ref, rules, force, image):
        mask, box, iou = segment(ref, self.prev)
        grey = None if self.intensity is None else image(ref)
        shift = 0.0 if grey is None else self.intensity.shift(grey, mask)
        reason = rules.reason(mask, self.prev, self.largest, shift)
        if reason is None and grey is not None:
            signals = SliceSignals.measure(mask, self.prev, self.largest, grey, iou)
            if model.misses(signals, self.intensity.mean, self.intensity.std):
                reason = UNLIKE
        if reason is not None and force and mask.any():
            reason = None  # continuing past a stop: take what the model gives
        if reason is None:
            self.prev, self.misses, self.first_miss = mask, 0, None
            self.largest = max(self.largest, int(mask.sum()))
            return mask, box, iou
        if self.misses == 0:
            self.first_miss = (ref.index, reason)
        self.misses += 1
        if self.misses >= rules.patience:
            self.stopped = self.first_miss
        return None, box, iou

    return step


@contextlib.contextmanager
def use_stop_model(model: StopModel) -> Iterator[None]:
    """Propagation runs with ``model`` as an extra miss while the block runs."""
    original = propagation_runs._Part.step
    propagation_runs._Part.step = _step(model)
    try:
        yield
    finally:
        propagation_runs._Part.step = original

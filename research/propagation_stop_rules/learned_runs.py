"""The product's propagation with the learned stop model as one more miss (research only).

``use_stop_model(model)`` wraps, while it is active, the step of one part of a run
(``napari_medsam.segmentation.propagation_runs._Part.step``): the product's own step runs
with the run's stop rules behind a proxy whose ``reason`` adds one check, so that a mask the
rules accept is still a miss ("unlike the object") when ``model.misses(...)``
(``stop_model.py``). Everything else (patience, parts, *Continue*'s forced slices) is the
product's code. This is what the 2026-12-06 "learned stop" rows of the README were measured
with (``variants.py learned``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from stop_model import SliceSignals, StopModel

from napari_medsam.segmentation import propagation_runs

#: The reason a learned miss records (the product's reasons are ``StopReason`` values).
UNLIKE = "unlike the object"


class _LearnedRules:
    """The run's stop rules, with the learned miss after them (one slice of one part)."""

    def __init__(self, rules, model: StopModel, part, grey: Callable, iou: Callable) -> None:
        self._rules, self._model, self._part = rules, model, part
        self._grey, self._iou = grey, iou  # the slice's grey values and IoU, when asked

    def __getattr__(self, name: str):
        return getattr(self._rules, name)  # patience and the rule values

    def reason(self, mask, prev, largest, shift=0.0):
        reason = self._rules.reason(mask, prev, largest, shift)
        intensity = self._part.intensity
        if reason is not None or intensity is None:
            return reason
        signals = SliceSignals.measure(mask, prev, largest, self._grey(), self._iou())
        return UNLIKE if self._model.misses(signals, intensity.mean, intensity.std) else None


def _step(original, model: StopModel):
    def step(self, segment, ref, rules, force, image, retry=None):
        seen = {}

        def segment_seen(r, prev):
            seen["result"] = segment(r, prev)
            return seen["result"]

        learned = _LearnedRules(rules, model, self, lambda: image(ref),
                                lambda: seen["result"][2])
        return original(self, segment_seen, ref, learned, force, image, retry)

    return step


@contextlib.contextmanager
def use_stop_model(model: StopModel) -> Iterator[None]:
    """Propagation runs with ``model`` as an extra miss while the block runs."""
    original = propagation_runs._Part.step
    propagation_runs._Part.step = _step(original, model)
    try:
        yield
    finally:
        propagation_runs._Part.step = original

"""The product's propagation with a tight retry of rejected slices (research only).

``use_tight_retry(session, agreement, limit)`` wraps, while it is active, the step of one
part of a run (``napari_medsam.segmentation.propagation_runs._Part.step``): a slice the
run's stop rules reject is segmented again from the box of the last accepted mask with no
margin (one prediction); that mask is kept when it is not a speck and overlaps the last
accepted mask with Dice >= ``agreement``, at most ``limit`` slices in a row. Everything
else (patience, parts, *Continue*'s forced slices) is the product's code. This is what the
2026-12-07 "tight retry" rows of the README were measured with (``variants.py retry`` and
``retry2``). The gated retry (``retry2g``: grey-value and area misses only) was first
measured with this wrapper too and then shipped as the product's
:class:`~napari_medsam.segmentation.propagation_runs.Retry`, which ``variants.py retry2g``
now uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from napari_medsam.evaluation import dice
from napari_medsam.segmentation import propagation_runs
from napari_medsam.segmentation.propagation_steps import TIGHT_STEP, segment_from
from napari_medsam.segmentation.session import SliceRef


def agrees(mask: np.ndarray, prev: np.ndarray, min_area: float, agreement: float) -> bool:
    """Not a speck, and Dice >= ``agreement`` with the last accepted mask."""
    area = int(mask.sum())
    return area > 0 and area >= min_area and dice(mask, prev) >= agreement


class _RetryRules:
    """The run's stop rules, accepting the one mask the retry chose (one slice of one part)."""

    def __init__(self, rules, chosen: dict) -> None:
        self._rules, self._chosen = rules, chosen

    def __getattr__(self, name: str):
        return getattr(self._rules, name)  # patience and the rule values

    def reason(self, mask, prev, largest, shift=0.0):
        if self._chosen.get("mask") is mask:
            return None
        return self._rules.reason(mask, prev, largest, shift)


def _step(original, session, agreement: float, limit: float):
    def step(self, segment, ref: SliceRef, rules, force, image, retry=None):
        chosen: dict = {}

        def segment_or_retry(r, prev):
            mask, box, iou = segment(r, prev)
            shift = 0.0 if self.intensity is None else self.intensity.shift(image(r), mask)
            reason = rules.reason(mask, prev, self.largest, shift)
            if reason is None or (force and mask.any()) or \
                    getattr(self, "tight_retried", 0) >= limit:
                return mask, box, iou
            retry, used, score = segment_from(session, r, prev, TIGHT_STEP)
            if agrees(retry, prev, rules.min_area_fraction * self.largest, agreement):
                chosen["mask"] = retry
                return retry, used, score
            return mask, box, iou

        out = original(self, segment_or_retry, ref, _RetryRules(rules, chosen), force, image,
                       retry)
        if out[0] is not None:  # its own count: the product's ``retried`` is its Retry's
            self.tight_retried = getattr(self, "tight_retried", 0) + 1 if "mask" in chosen else 0
        return out

    return step


@contextlib.contextmanager
def use_tight_retry(session, agreement: float = 0.5, limit: float = 2) -> Iterator[None]:
    """Propagation runs on ``session`` retry every rejected slice while the block runs."""
    original = propagation_runs._Part.step
    propagation_runs._Part.step = _step(original, session, agreement, limit)
    try:
        yield
    finally:
        propagation_runs._Part.step = original

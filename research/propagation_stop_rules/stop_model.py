"""A learned stop signal for propagation (studied for issue 18, not adopted): does a slice's
mask still hold the object?

Beside the product's fixed stop rules
(:class:`~napari_medsam.segmentation.propagation_stops.StopRules`) a small logistic model
weighs what a run sees on each slice: how the mask's area compares with the last accepted
mask and with the run's largest, how far its grey values moved from the anchor's and how much
their spread changed, how much of it lies on the last mask, how far its centre moved, and the
model's own predicted IoU. ``learned_stop.py --write`` fits it on traced slices and writes
the weights (``stop_model.json``: all six scans); ``learned_runs.py`` runs the product's
propagation with it as an extra miss ("unlike the object"). README: 2026-12-06, a learned
stop.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

#: The signals, in the order of the weights.
FEATURES = ("log_area_prev", "log_area_largest", "grey_shift", "log_spread", "overlap",
            "shift", "iou")
#: The weights fitted on all six traced scans.
DEFAULT_PATH = Path(__file__).with_name("stop_model.json")
#: Grey values (0..255): the least spread an anchor counts with (flat regions).
MIN_STD = 5.0
#: Centre shifts beyond this many times the two masks' equivalent radii count as this much.
MAX_SHIFT = 3.0


@dataclass(frozen=True)
class SliceSignals:
    """What a run sees on one slice, before it accepts or misses the mask (non-empty)."""

    area: int
    prev_area: int
    largest: int
    mean: float
    std: float
    overlap: float
    shift: float
    iou: float

    @classmethod
    def measure(cls, mask: np.ndarray, prev: np.ndarray, largest: int, image: np.ndarray,
                iou: float) -> SliceSignals:
        """The signals of ``mask`` after the last accepted mask ``prev``; ``image`` is the
        slice as the model sees it, ``largest`` the run's largest accepted area."""
        values = np.asarray(image, dtype=np.float64)[mask]
        area, prev_area = int(mask.sum()), int(prev.sum())
        near = ndimage.binary_dilation(prev) if prev_area else prev
        radii = np.sqrt(area / np.pi) + np.sqrt(max(prev_area, 1) / np.pi)
        moved = np.hypot(*np.subtract(_centre(mask), _centre(prev))) if prev_area else 0.0
        return cls(area, prev_area, int(largest), float(values.mean()), float(values.std()),
                   float((mask & near).sum() / area), float(moved / radii), float(iou))

    def vector(self, anchor_mean: float, anchor_std: float) -> np.ndarray:
        """The model's inputs (:data:`FEATURES`), against the anchor's grey values."""
        std = max(anchor_std, MIN_STD)
        return np.array([
            np.log(self.area / max(self.prev_area, 1)),
            np.log(self.area / max(self.largest, 1)),
            abs(self.mean - anchor_mean) / std,
            np.log(max(self.std, 1.0) / std),
            self.overlap,
            min(self.shift, MAX_SHIFT),
            self.iou,
        ])


def _centre(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())


@dataclass(frozen=True)
class StopModel:
    """Logistic weights over standardised :data:`FEATURES`, and the miss threshold."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    beta: tuple[float, ...]
    threshold: float

    def __post_init__(self) -> None:
        n = len(FEATURES)
        if not (len(self.mean) == len(self.scale) == n and len(self.beta) == n + 1):
            raise ValueError(f"a stop model needs {n} means and scales and {n + 1} weights")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")

    @classmethod
    def from_json(cls, data: dict) -> StopModel:
        if tuple(data.get("features", ())) != FEATURES:
            raise ValueError(f"the stop model's features are not {FEATURES}")
        return cls(tuple(map(float, data["mean"])), tuple(map(float, data["scale"])),
                   tuple(map(float, data["beta"])), float(data["threshold"]))

    def probability(self, vector: np.ndarray) -> float:
        """How likely the slice's mask is mostly not the object."""
        z = (np.asarray(vector, dtype=np.float64) - self.mean) / self.scale
        logit = self.beta[0] + float(np.dot(self.beta[1:], z))
        return float(1.0 / (1.0 + np.exp(-logit)))

    def misses(self, signals: SliceSignals, anchor_mean: float, anchor_std: float) -> bool:
        return self.probability(signals.vector(anchor_mean, anchor_std)) > self.threshold


@functools.cache
def default_stop_model() -> StopModel:
    """The weights fitted on all six scans (read once)."""
    return StopModel.from_json(json.loads(DEFAULT_PATH.read_text()))

"""What an evaluation measured: result types, the error it raises, Dice and the text table.

Split out of :mod:`napari_medsam.evaluation`, which re-exports every public name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medsam.segmentation.mask_metrics import dice

__all__ = ["EvalError", "EvalResult", "LabelResult", "dice", "format_table"]


class EvalError(ValueError):
    """The evaluation cannot run (geometry mismatch, nothing to evaluate...)."""


@dataclass
class LabelResult:
    """One evaluated label."""

    label: int
    name: str | None
    dice: float
    voxels: int
    slices: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"dice": self.dice, "voxels": self.voxels, "slices": self.slices,
                "name": self.name, "seconds": self.seconds}


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    ``seconds`` is the whole run; ``embed_seconds`` the part spent embedding slices up front
    (each slice once, shared by all labels), so each label's ``seconds`` is its own prompt
    work (decoder calls, click growing, propagation, and embedding zoomed crops:
    ``roi_encoder_calls`` of them in all; ``encoder_calls`` counts whole slices).
    """

    mode: str
    axis: int
    labels: list[LabelResult] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    encoder_calls: int = 0
    roi_encoder_calls: int = 0
    zoom: str = "off"
    jitter: int = 0
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float | None:
        if not self.labels:
            return None
        return float(np.mean([r.dice for r in self.labels]))

    def to_json(self) -> dict[str, Any]:
        """The JSON document written by ``napari-medsam eval --json``."""
        return {
            "mode": self.mode,
            "axis": self.axis,
            "zoom": self.zoom,
            "jitter": self.jitter,
            "seed": self.seed,
            **self.info,
            "labels": {str(r.label): r.to_json() for r in self.labels},
            "skipped": list(self.skipped),
            "mean_dice": self.mean_dice,
            "seconds": self.seconds,
            "embed_seconds": self.embed_seconds,
            "encoder_calls": self.encoder_calls,
            "roi_encoder_calls": self.roi_encoder_calls,
        }


# -- small helpers ----------------------------------------------------------------------------
def _fmt_dice(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def format_table(result: EvalResult) -> str:
    """A plain-text table: label, name, voxels, slices, Dice, seconds; then the mean."""
    width = max([4, *(len(r.name or "-") for r in result.labels)])
    width = min(width, 32)
    lines = [f"{'label':>5}  {'name':<{width}}  {'voxels':>8}  {'slices':>6}  {'Dice':>6}  "
             f"{'seconds':>7}"]
    for r in result.labels:
        lines.append(f"{r.label:>5}  {(r.name or '-')[:width]:<{width}}  {r.voxels:>8}  "
                     f"{r.slices:>6}  {_fmt_dice(r.dice):>6}  {r.seconds:>7.1f}")
    n = len(result.labels)
    lines.append(f"mean Dice {_fmt_dice(result.mean_dice)} over {n} label{'s' * (n != 1)} "
                 f"({result.mode} mode, axis {result.axis}); {result.seconds:.1f} s in all, "
                 f"{result.embed_seconds:.1f} s embedding {result.encoder_calls} slices"
                 + (f"; zoom {result.zoom}, {result.roi_encoder_calls} zoomed crops embedded"
                    if result.zoom != "off" else ""))
    if result.skipped:
        parts = [f"{s['label']} ({s['reason']})" for s in result.skipped]
        lines.append(f"skipped {len(parts)}: " + ", ".join(parts))
    return "\n".join(lines)

"""Simulated users against a reference label map: Dice per label, no Qt and no napari.

Three users, all running through :class:`~napari_medsam.segmentation.SegmentationSession`
exactly as the widget does:

``box``
    On every slice where a label is present, a box from that slice's reference mask (tight,
    or each side moved outwards by a random 0..``jitter`` pixels, clipped to the slice).
``click``
    On every such slice, one positive click at the interior point of the largest connected
    component (the maximum of its distance transform), through
    :meth:`~napari_medsam.segmentation.SegmentationSession.predict_prompts`.
``propagate``
    One tight box on the label's largest slice, then propagation through the volume
    (:mod:`napari_medsam.segmentation.propagation`).

Dice is computed in 3D over the whole volume. Labels smaller than :data:`MIN_VOXELS` voxels
are skipped and listed. Whether small boxes are segmented in a zoomed crop is the session's
choice (``session.zoom``, :mod:`napari_medsam.segmentation.roi`); the result records it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from napari_medsam.io import Volume
from napari_medsam.segmentation import SegmentationSession, SliceRef

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_VOXELS",
    "MODES",
    "EvalError",
    "EvalResult",
    "LabelResult",
    "align_reference",
    "box_from_mask",
    "box_slices",
    "click_slices",
    "dice",
    "evaluate",
    "format_table",
    "interior_click",
    "reference_label_names",
]

MODES = ("box", "click", "propagate")
#: Labels with fewer voxels than this are skipped.
MIN_VOXELS = 50
#: Bytes of one cached LiteMedSAM embedding (float16, 256x64x64) plus some slack.
_EMBEDDING_BYTES = 2 * 1024**2 + 4096

Progress = Callable[[str, bool], None]


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
def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def box_from_mask(mask2d: np.ndarray, jitter: int = 0,
                  rng: np.random.Generator | None = None) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max, y_max) around a 2D mask, x = column.

    Each side is moved outwards by a random 0..``jitter`` pixels (``rng``) and clipped to the
    slice; a box one pixel wide or tall is widened by one pixel (inside the slice) so that it
    has an area.
    """
    rows, cols = mask2d.shape
    ys, xs = np.nonzero(mask2d)
    if xs.size == 0:
        raise ValueError("box_from_mask needs a non-empty mask")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    if jitter > 0:
        if rng is None:
            rng = np.random.default_rng()
        dx0, dy0, dx1, dy1 = (int(v) for v in rng.integers(0, jitter + 1, size=4))
        x0, y0, x1, y1 = x0 - dx0, y0 - dy0, x1 + dx1, y1 + dy1
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(cols - 1, x1), min(rows - 1, y1)
    if x1 == x0:
        x1, x0 = (x1 + 1, x0) if x1 + 1 < cols else (x1, x0 - 1)
    if y1 == y0:
        y1, y0 = (y1 + 1, y0) if y1 + 1 < rows else (y1, y0 - 1)
    return x0, y0, x1, y1


def interior_click(mask2d: np.ndarray) -> tuple[int, int]:
    """(x, y) of the point farthest from the border of the largest connected component."""
    lab, n = ndimage.label(mask2d)
    if n == 0:
        raise ValueError("interior_click needs a non-empty mask")
    sizes = ndimage.sum(mask2d, lab, range(1, n + 1))
    largest = lab == (1 + int(np.argmax(sizes)))
    dist = ndimage.distance_transform_edt(largest)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _present_slices(mask3d: np.ndarray, axis: int) -> list[int]:
    other = tuple(a for a in range(3) if a != axis)
    return [int(i) for i in np.nonzero(mask3d.any(axis=other))[0]]


def _label_rng(seed: int | None, label: int) -> np.random.Generator:
    """One generator per label, so a label's boxes do not depend on the other labels."""
    return np.random.default_rng(None if seed is None else [int(seed), int(label)])


# -- simulated users --------------------------------------------------------------------------
def box_slices(session: SegmentationSession, reference: np.ndarray, axis: int = 0,
               jitter: int = 0, rng: np.random.Generator | None = None
               ) -> Iterator[tuple[int, tuple[int, int, int, int], np.ndarray]]:
    """The box user: ``(index, box, mask)`` for every slice where ``reference`` is present.

    ``reference`` is the label's boolean 3D mask; ``mask`` comes from
    ``session.predict_prompts(SliceRef(axis, index), [box])``, the widget's call.
    """
    for index in _present_slices(reference, axis):
        box = box_from_mask(np.take(reference, index, axis=axis), jitter, rng)
        mask = session.predict_prompts(SliceRef(axis, index), [box])
        yield index, box, np.asarray(mask, dtype=bool)


def click_slices(session: SegmentationSession, reference: np.ndarray, axis: int = 0
                 ) -> Iterator[tuple[int, tuple[int, int], np.ndarray]]:
    """The click user: ``(index, (x, y), mask)`` for every slice where ``reference`` is present.

    One positive click per slice at :func:`interior_click`, segmented by
    ``session.predict_prompts(ref, positives=[click])`` (the widget's call).
    """
    for index in _present_slices(reference, axis):
        click = interior_click(np.take(reference, index, axis=axis))
        mask = session.predict_prompts(SliceRef(axis, index), positives=[click])
        yield index, click, np.asarray(mask, dtype=bool)


def propagate_slices(session: SegmentationSession, reference: np.ndarray, axis: int = 0,
                     cancel: Callable[[], bool] | None = None
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """The propagate user: a tight box on the largest slice, then propagation.

    Yields ``(index, mask)``, the box's own slice first.
    """
    from napari_medsam.segmentation import propagation

    other = tuple(a for a in range(3) if a != axis)
    index = int(np.argmax(reference.sum(axis=other)))
    box = box_from_mask(np.take(reference, index, axis=axis))
    anchor = np.asarray(session.predict_prompts(SliceRef(axis, index), [box]), dtype=bool)
    yield index, anchor
    if not anchor.any():
        return
    for result in propagation.propagate(session, axis, {index: anchor}, cancel=cancel):
        if int(result.index) != index:
            yield int(result.index), np.asarray(result.mask, dtype=bool)


def _set_slice(volume: np.ndarray, axis: int, index: int, mask: np.ndarray) -> None:
    where: list[Any] = [slice(None)] * 3
    where[axis] = index
    volume[tuple(where)] = mask


# -- reference geometry -----------------------------------------------------------------------
def _same_geometry(a: Volume, b: Volume) -> bool:
    return (a.shape == b.shape
            and np.allclose(a.spacing, b.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(a.origin, b.origin, rtol=0, atol=1e-3)
            and np.allclose(a.direction, b.direction, rtol=0, atol=1e-5))


def _physical_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper physical corners (x, y, z) of the volume, voxel edges included."""
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    size = np.array(volume.shape[::-1], dtype=float)  # x, y, z
    corners = []
    for cx in (-0.5, size[0] - 0.5):
        for cy in (-0.5, size[1] - 0.5):
            for cz in (-0.5, size[2] - 0.5):
                idx = np.array([cx, cy, cz]) * np.asarray(volume.spacing)
                corners.append(np.asarray(volume.origin) + d @ idx)
    pts = np.array(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _as_int_labels(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0)
        arr = np.rint(arr)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    return arr.astype(np.int64) if arr.dtype.kind == "f" else arr


def align_reference(image: Volume, reference: Volume) -> tuple[np.ndarray, bool]:
    """The reference labels on the image's voxel grid, and whether they were resampled.

    Same shape and geometry: the array as it is. Different geometry that overlaps the image
    (e.g. ``totalseg_ct_dicom``, whose label file is flipped in y): resampled onto the image
    in physical space with nearest neighbour (logged).

    Raises
    ------
    EvalError
        When the reference does not overlap the image, or nothing of it lands on the image.
    """
    labels = _as_int_labels(reference.array)
    if _same_geometry(image, reference):
        return labels, False
    lo_a, hi_a = _physical_bounds(image)
    lo_b, hi_b = _physical_bounds(reference)
    overlap = np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)
    def geometry(v: Volume) -> str:
        return (f"{v.shape} spacing {tuple(round(s, 4) for s in v.spacing)} origin "
                f"{tuple(round(o, 2) for o in v.origin)} direction "
                f"{tuple(round(d, 3) for d in v.direction)}")

    describe = f"image {geometry(image)} vs reference {geometry(reference)}"
    if np.any(overlap <= 0):
        raise EvalError(f"the reference does not overlap the image in physical space "
                        f"({describe}): are they from the same scan?")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise EvalError("the reference has negative label values")
    src = sitk.GetImageFromArray(labels.astype(np.uint32, copy=False))
    reference.copy_geometry_to(src)
    grid = sitk.Image(*[int(s) for s in image.shape[::-1]], sitk.sitkUInt8)
    image.copy_geometry_to(grid)
    out = sitk.Resample(src, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt32)
    resampled = sitk.GetArrayFromImage(out)
    logger.warning("the reference's geometry differs from the image's (%s): resampled it onto "
                   "the image grid in physical space (nearest neighbour)", describe)
    if labels.any() and not resampled.any():
        raise EvalError(f"no reference label lands on the image after resampling ({describe})")
    return resampled, True


def reference_label_names(reference: Volume, path: str | Path | None = None) -> dict[int, str]:
    """Label names: the reference's own (ITK-SNAP sidecar), else ``labels.json`` beside it.

    ``labels.json`` is the data folder's format: ``{"labels": {"1": "liver", ...}}``.
    """
    names = dict(reference.label_names)
    where = path if path is not None else reference.path
    if where is None:
        return names
    p = Path(where)
    candidate = (p if p.is_dir() else p.parent) / "labels.json"
    if candidate.is_file():
        try:
            meta = json.loads(candidate.read_text(encoding="utf-8"))
            for key, value in (meta.get("labels") or {}).items():
                names.setdefault(int(key), str(value))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            logger.warning("could not read label names from %s: %s", candidate, exc)
    return names


# -- the evaluation ---------------------------------------------------------------------------
def _select_labels(reference: np.ndarray, wanted: Sequence[int] | None, names: Mapping[int, str]
                   ) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
    """(label, voxels) to evaluate and the skipped ones (too small or absent)."""
    ids, counts = np.unique(reference, return_counts=True)
    present = {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i != 0}
    chosen = sorted(present) if wanted is None else list(dict.fromkeys(int(w) for w in wanted))
    keep, skipped = [], []
    for label in chosen:
        voxels = present.get(label, 0)
        if voxels == 0:
            skipped.append({"label": label, "name": names.get(label), "voxels": 0,
                            "reason": "not in the reference"})
        elif voxels < MIN_VOXELS:
            skipped.append({"label": label, "name": names.get(label), "voxels": voxels,
                            "reason": f"fewer than {MIN_VOXELS} voxels"})
        else:
            keep.append((label, voxels))
    return keep, skipped


def _slices_to_embed(reference: np.ndarray, labels: Iterable[int], axis: int, mode: str
                     ) -> list[int]:
    mask = np.isin(reference, list(labels))
    present = _present_slices(mask, axis)
    if not present:
        return []
    if mode == "propagate":  # propagation looks one slice past the object to see it end
        lo, hi = max(0, present[0] - 1), min(reference.shape[axis] - 1, present[-1] + 1)
        return list(range(lo, hi + 1))
    return present


def evaluate(session: SegmentationSession, reference: np.ndarray, mode: str, *,
             labels: Sequence[int] | None = None, axis: int = 0, jitter: int = 0,
             seed: int | None = None, names: Mapping[int, str] | None = None,
             progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None) -> EvalResult:
    """Simulate a user on every label of ``reference`` and measure 3D Dice.

    Parameters
    ----------
    session
        A session on the image (its ``volume`` has the reference's shape).
    reference
        Integer label map on the image's voxel grid (see :func:`align_reference`).
    mode
        ``"box"``, ``"click"`` or ``"propagate"``.
    labels
        Label values to evaluate (default: every non-zero value in the reference).
    axis
        The array axis the simulated user slices across.
    jitter, seed
        Box mode: each side of the box is enlarged by a random 0..``jitter`` pixels,
        reproducible with ``seed``.
    names
        Label names for the result.
    progress
        ``progress(message, done)``: called per slice (``done`` False) and after each label
        (``done`` True).

    Returns
    -------
    EvalResult
    """
    if mode not in MODES:
        raise EvalError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if axis not in (0, 1, 2):
        raise EvalError(f"axis must be 0, 1 or 2, got {axis}")
    if jitter < 0:
        raise EvalError(f"jitter must be >= 0, got {jitter}")
    reference = np.asarray(reference)
    if reference.shape != session.volume.shape:
        raise EvalError(f"the reference has shape {reference.shape} but the image has "
                        f"{session.volume.shape}")
    names = dict(names or {})
    t_start = time.perf_counter()
    result = EvalResult(mode=mode, axis=axis, jitter=int(jitter), seed=seed,
                        zoom=session.zoom)
    chosen, result.skipped = _select_labels(reference, labels, names)
    for item in result.skipped:
        logger.info("skipped label %d (%s): %s", item["label"], item["name"] or "-",
                    item["reason"])
    calls_before = session.encoder_calls
    roi_before = session.roi_encoder_calls

    to_embed = _slices_to_embed(reference, [lab for lab, _ in chosen], axis, mode)
    needed = len(to_embed) * _EMBEDDING_BYTES
    if session.cache.max_bytes < needed:
        session.cache.resize(needed)
    t0 = time.perf_counter()
    for k, index in enumerate(to_embed, start=1):
        if cancel is not None and cancel():
            break
        if progress is not None:
            progress(f"embedding slice {index} ({k}/{len(to_embed)})", False)
        session.embedding(SliceRef(axis, index))
    result.embed_seconds = time.perf_counter() - t0
    if progress is not None and to_embed:
        progress(f"embedded {len(to_embed)} slices along axis {axis} in "
                 f"{result.embed_seconds:.1f} s", True)

    for n, (label, voxels) in enumerate(chosen, start=1):
        if cancel is not None and cancel():
            break
        name = names.get(label)
        tag = f"[{mode}] label {label}" + (f" {name}" if name else "") + f" ({n}/{len(chosen)})"
        ref_mask = reference == label
        predicted = np.zeros(reference.shape, dtype=bool)
        slices = _present_slices(ref_mask, axis)
        t_label = time.perf_counter()
        if mode == "box":
            steps: Iterator[tuple[Any, ...]] = box_slices(session, ref_mask, axis, jitter,
                                                          _label_rng(seed, label))
        elif mode == "click":
            steps = click_slices(session, ref_mask, axis)
        else:
            steps = propagate_slices(session, ref_mask, axis, cancel)
        for k, step in enumerate(steps, start=1):
            index, mask = step[0], step[-1]
            _set_slice(predicted, axis, index, mask)
            if progress is not None:
                progress(f"{tag}: slice {index} ({k}/{len(slices)})", False)
        seconds = time.perf_counter() - t_label
        score = dice(predicted, ref_mask)
        result.labels.append(LabelResult(label=label, name=name, dice=score, voxels=voxels,
                                         slices=len(slices), seconds=seconds))
        logger.info("%s: Dice %.3f (%d voxels, %d slices, %.1f s)", tag, score, voxels,
                    len(slices), seconds)
        if progress is not None:
            progress(f"{tag}: Dice {score:.3f} ({seconds:.1f} s)", True)
    result.encoder_calls = session.encoder_calls - calls_before
    result.roi_encoder_calls = session.roi_encoder_calls - roi_before
    result.seconds = time.perf_counter() - t_start
    return result


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

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

:func:`evaluate` lives here; the pieces it uses are in :mod:`napari_medsam.evaluation_users`
(the simulated users), :mod:`napari_medsam.evaluation_reference` (reference alignment and
label names) and :mod:`napari_medsam.evaluation_results` (result types, Dice, the table), and
are all importable from this module as before.
"""


from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from napari_medsam.evaluation_reference import align_reference, reference_label_names
from napari_medsam.evaluation_results import (
    EvalError,
    EvalResult,
    LabelResult,
    dice,
    format_table,
)
from napari_medsam.evaluation_users import (
    _label_rng,
    _present_slices,
    _set_slice,
    box_from_mask,
    box_slices,
    click_slices,
    interior_click,
    propagate_slices,
)
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
    result.embed_seconds = _embed_slices(session, to_embed, axis, progress, cancel)

    for n, (label, voxels) in enumerate(chosen, start=1):
        if cancel is not None and cancel():
            break
        result.labels.append(_evaluate_label(session, reference, mode, label, voxels, axis,
                                             f"({n}/{len(chosen)})", names.get(label),
                                             jitter, seed, progress, cancel))
    result.encoder_calls = session.encoder_calls - calls_before
    result.roi_encoder_calls = session.roi_encoder_calls - roi_before
    result.seconds = time.perf_counter() - t_start
    return result


def _embed_slices(session: SegmentationSession, to_embed: list[int], axis: int,
                  progress: Progress | None, cancel: Callable[[], bool] | None) -> float:
    """Embed slices ``to_embed`` along ``axis`` first (so that label times exclude the
    encoder); the seconds it took."""
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
    seconds = time.perf_counter() - t0
    if progress is not None and to_embed:
        progress(f"embedded {len(to_embed)} slices along axis {axis} in {seconds:.1f} s", True)
    return seconds


def _evaluate_label(session: SegmentationSession, reference: np.ndarray, mode: str,
                    label: int, voxels: int, axis: int, count: str, name: str | None,
                    jitter: int, seed: int | None, progress: Progress | None,
                    cancel: Callable[[], bool] | None) -> LabelResult:
    """One label's simulated user and its 3D Dice (``count``: "(n/N)" for the messages)."""
    tag = f"[{mode}] label {label}" + (f" {name}" if name else "") + f" {count}"
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
    logger.info("%s: Dice %.3f (%d voxels, %d slices, %.1f s)", tag, score, voxels,
                len(slices), seconds)
    if progress is not None:
        progress(f"{tag}: Dice {score:.3f} ({seconds:.1f} s)", True)
    return LabelResult(label=label, name=name, dice=score, voxels=voxels, slices=len(slices),
                       seconds=seconds)

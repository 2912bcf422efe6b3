"""Prompt files for headless segmentation: the JSON schema, its validation, and applying it.

A prompt file lists the objects to segment, in voxel indices of the image array (numpy
(z, y, x) order)::

    {"objects": [
        {"label": 1, "name": "liver", "axis": 0, "slice": 57,
         "box": [row_min, col_min, row_max, col_max],
         "points": [[row, col, 1], [row, col, 0]],
         "propagate": true, "slice_range": [40, 80]}
    ]}

``axis`` is the array axis the slice cuts across (default 0); the 2D slice is
``np.take(volume, slice, axis)`` and its rows and columns are the two remaining axes in
order. ``box`` and ``points`` are inclusive indices within that slice (point sign 1 =
positive, 0 = negative); an object needs a box or a positive point. ``propagate`` (default
false) carries the slice's mask through the volume; ``slice_range`` (inclusive) makes the
box a 3D box over those slices, or bounds the propagation when ``propagate`` is true.

The schema itself (pydantic models, the JSON Schema, the one-line errors) is in
:mod:`.prompts_schema`; every problem is reported as a :class:`PromptFileError` naming the
object (its index in ``objects`` and its label/name) and the field. No Qt and no napari here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from .labels import merge_mask
from .prompts_messages import PromptFileError, one_line_error
from .prompts_schema import (
    MAX_OBJECTS,
    OBJECT_KEYS,
    TOP_KEYS,
    PromptFileSpec,
    object_title,
    prompt_file_schema,
)
from .session import SegmentationSession, SliceRef

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_OBJECTS",
    "OBJECT_KEYS",
    "TOP_KEYS",
    "ObjectOutcome",
    "ObjectPrompt",
    "PromptFileError",
    "apply_prompts",
    "load_prompts",
    "parse_prompts",
    "prompt_file_schema",
    "validate_prompt_file",
]

@dataclass(frozen=True)
class ObjectPrompt:
    """One validated object of a prompt file.

    Attributes
    ----------
    index
        Position in the file's ``objects`` list (0-based).
    label
        Label value written for the object (>= 1, unique in the file).
    name
        Optional name (written to the label description sidecar).
    axis, slice
        The slice the prompts are on: ``np.take(volume, slice, axis)``.
    box
        ``(row_min, col_min, row_max, col_max)`` inclusive, within the slice, or None.
    points
        ``(row, col, sign)`` triples; sign 1 = positive, 0 = negative.
    propagate
        Propagate the slice's mask through the volume.
    slice_range
        ``(first, last)`` inclusive slice indices along ``axis``, or None.
    """

    index: int
    label: int
    name: str | None
    axis: int
    slice: int
    box: tuple[int, int, int, int] | None
    points: tuple[tuple[int, int, int], ...] = ()
    propagate: bool = False
    slice_range: tuple[int, int] | None = None

    @property
    def title(self) -> str:
        """``objects[2] (label 3 "liver")``: how messages name the object."""
        return object_title(self.index, self.label, self.name)

    @property
    def session_box(self) -> tuple[int, int, int, int] | None:
        """The box in the session's convention: (x_min, y_min, x_max, y_max), x = column."""
        if self.box is None:
            return None
        row_min, col_min, row_max, col_max = self.box
        return (col_min, row_min, col_max, row_max)

    @property
    def positives(self) -> list[tuple[int, int]]:
        """Positive clicks as (x, y) = (column, row)."""
        return [(c, r) for r, c, s in self.points if s == 1]

    @property
    def negatives(self) -> list[tuple[int, int]]:
        """Negative clicks as (x, y) = (column, row)."""
        return [(c, r) for r, c, s in self.points if s == 0]

    @property
    def mode(self) -> str:
        """``"2d"``, ``"box_range"``, ``"propagate"`` or ``"propagate_range"``."""
        if self.propagate:
            return "propagate_range" if self.slice_range else "propagate"
        return "box_range" if self.slice_range else "2d"


@dataclass
class ObjectOutcome:
    """What applying one object did."""

    prompt: ObjectPrompt
    voxels: int = 0
    slices: list[int] = field(default_factory=list)
    kept: int = 0
    seconds: float = 0.0


def validate_prompt_file(data: Any, shape: tuple[int, int, int] | None = None,
                         source: str = "prompts") -> PromptFileSpec:
    """Check decoded JSON against the schema and, given ``shape`` (z, y, x), the image bounds.

    Raises
    ------
    PromptFileError
        For the first problem in file order, in one line naming the object and the field (a
        pydantic ``ValidationError`` never gets out).
    """
    context = {"shape": shape} if shape is not None else None
    try:
        return PromptFileSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise one_line_error(exc, data, source, shape) from None


def parse_prompts(data: Any, shape: Iterable[int], source: str = "prompts") -> list[ObjectPrompt]:
    """Validate decoded JSON against an image of ``shape`` (z, y, x).

    Parameters
    ----------
    data
        The decoded JSON document.
    shape
        The image array's shape.
    source
        How messages name the file.

    Returns
    -------
    list of ObjectPrompt
        In file order.

    Raises
    ------
    PromptFileError
        For the first problem found, naming the object and the field.
    """
    shape3 = tuple(int(s) for s in shape)
    if len(shape3) != 3:
        raise ValueError(f"expected a 3D image shape, got {shape3}")
    spec = validate_prompt_file(data, shape3, source)
    return [ObjectPrompt(index=i, label=o.label, name=o.name, axis=o.axis, slice=o.slice,
                         box=o.box, points=tuple(o.points), propagate=o.propagate,
                         slice_range=o.slice_range)
            for i, o in enumerate(spec.objects)]


def load_prompts(path: str | os.PathLike[str], shape: Iterable[int]) -> list[ObjectPrompt]:
    """Read and validate a prompt file for an image of ``shape`` (z, y, x).

    Raises
    ------
    PromptFileError
        When the file is missing, not JSON, or does not follow the schema.
    """
    p = Path(os.fspath(path))
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PromptFileError(f"{p}: no such prompt file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"{p}: cannot read the prompt file ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{p}: not valid JSON: {exc.msg} at line {exc.lineno} column "
                              f"{exc.colno}") from exc
    except RecursionError:
        raise PromptFileError(f"{p}: the JSON is nested too deeply to be a prompt file "
                              "(objects hold lists of numbers, a few levels deep)") from None
    return parse_prompts(data, shape, source=str(p))


# -- applying ---------------------------------------------------------------------------------
def _object_masks(session: SegmentationSession, prompt: ObjectPrompt,
                  cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(slice index, 2D mask) pairs for one object, the prompt's own slice first."""
    ref = SliceRef(prompt.axis, prompt.slice)
    box = prompt.session_box
    mask = session.predict_prompts(ref, [box] if box is not None else [], prompt.positives,
                                   prompt.negatives)
    if mask is None:  # pragma: no cover - validation guarantees a box or a positive click
        return
    mask = np.asarray(mask, dtype=bool)
    yield prompt.slice, mask
    if prompt.mode == "2d":
        return
    from . import propagation

    if prompt.mode == "box_range":
        first, last = prompt.slice_range  # type: ignore[misc]
        results = propagation.box_range(session, prompt.axis, prompt.slice, box, first, last,
                                        cancel=cancel)
    else:
        if not mask.any():
            logger.warning("%s: the mask on slice %d is empty: nothing to propagate",
                           prompt.title, prompt.slice)
            return
        results = propagation.propagate(session, prompt.axis, {prompt.slice: mask},
                                        stop_at=prompt.slice_range, cancel=cancel)
    for result in results:
        if int(result.index) == prompt.slice:
            continue
        yield int(result.index), np.asarray(result.mask, dtype=bool)


def apply_prompts(session: SegmentationSession, prompts: Iterable[ObjectPrompt], *,
                  labels: np.ndarray | None = None, overwrite: bool = False,
                  progress: Callable[[ObjectOutcome, int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None
                  ) -> tuple[np.ndarray, list[ObjectOutcome]]:
    """Segment every object and write it into a label volume.

    Each 2D mask goes in through :func:`~napari_medsam.segmentation.labels.merge_mask`, the
    rule the widget's *Accept* uses: with ``overwrite`` False (the default) an object never
    paints over voxels an earlier object already holds.

    Parameters
    ----------
    session
        The session on the image (model, volume, intensity mapping).
    prompts
        Validated objects (see :func:`load_prompts`).
    labels
        The label volume to write into (default: a new zero uint32 volume).
    overwrite
        Let later objects paint over earlier ones.
    progress
        Called after each object with its outcome, its position (1-based) and the total.
    cancel
        Polled by propagation between slices.

    Returns
    -------
    (labels, outcomes)
        The label volume and one :class:`ObjectOutcome` per object.
    """
    prompts = list(prompts)
    if labels is None:
        labels = np.zeros(session.volume.shape, dtype=np.uint32)
    outcomes = []
    for n, prompt in enumerate(prompts, start=1):
        t0 = time.perf_counter()
        outcome = ObjectOutcome(prompt)
        for index, mask in _object_masks(session, prompt, cancel):
            if not mask.any():
                continue
            wanted = int(mask.sum())
            edit = merge_mask(labels, mask, prompt.axis, index, prompt.label,
                              overwrite=overwrite)
            labels[edit.indices] = edit.value
            already = int((np.take(labels, index, axis=prompt.axis)[mask]
                           == prompt.label).sum())
            outcome.kept += wanted - already
            outcome.slices.append(index)
        outcome.voxels = int(np.count_nonzero(labels == prompt.label))
        outcome.slices.sort()
        outcome.seconds = time.perf_counter() - t0
        logger.info("%s: %d voxels on %d slices (%.1f s)", prompt.title, outcome.voxels,
                    len(outcome.slices), outcome.seconds)
        if outcome.kept:
            logger.info("%s: %d voxels kept by earlier objects", prompt.title, outcome.kept)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome, n, len(prompts))
    return labels, outcomes

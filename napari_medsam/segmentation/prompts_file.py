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

Every problem is reported as a :class:`PromptFileError` naming the object (its index in
``objects`` and its label/name) and the field. No Qt and no napari here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labels import merge_mask
from .session import SegmentationSession, SliceRef

logger = logging.getLogger(__name__)

__all__ = [
    "OBJECT_KEYS",
    "ObjectOutcome",
    "ObjectPrompt",
    "PromptFileError",
    "apply_prompts",
    "load_prompts",
    "parse_prompts",
]

#: Keys an object may have (anything else is an error).
OBJECT_KEYS = ("label", "name", "axis", "slice", "box", "points", "propagate", "slice_range")
#: Keys allowed at the top level of the file.
TOP_KEYS = ("objects", "description")
_MAX_LABEL = 2**32 - 1
#: Objects in one prompt file. A file of 200,000 objects was accepted and meant ~5.5 h of
#: work; 10,000 objects are ~20 minutes of 2D boxes on a laptop.
MAX_OBJECTS = 10_000


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the object and the field.

    Attributes
    ----------
    index
        Position of the offending object in ``objects`` (None for file-level problems).
    field
        The offending key (None when the problem is the whole object or file).
    """

    def __init__(self, message: str, *, index: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.field = field


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
        return _title(self.index, self.label, self.name)

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


def _title(index: int, label: Any = None, name: Any = None) -> str:
    parts = []
    if isinstance(label, int) and not isinstance(label, bool):
        parts.append(f"label {label}")
    if isinstance(name, str) and name:
        parts.append(json.dumps(name))
    return f"objects[{index}]" + (f" ({' '.join(parts)})" if parts else "")


class _Checker:
    """Validates one object dict, raising errors that name the object and the field."""

    def __init__(self, index: int, obj: Mapping[str, Any], shape: tuple[int, int, int],
                 source: str) -> None:
        self.index = index
        self.obj = obj
        self.shape = shape
        self.source = source
        self.title = _title(index, obj.get("label"), obj.get("name"))

    def fail(self, key: str | None, message: str) -> PromptFileError:
        where = f"{self.source}: {self.title}"
        if key is not None:
            where += f", field {key!r}"
        return PromptFileError(f"{where}: {message}", index=self.index, field=key)

    def integer(self, key: str, value: Any, what: str | None = None) -> int:
        """A whole number (int, or a float like 57.0); never a bool or a string."""
        what = what or "the value"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"{what} must be a whole number, got {json.dumps(value)}")
        if isinstance(value, float):
            if not math.isfinite(value) or value != int(value):
                raise self.fail(key, f"{what} must be a whole number, got {value!r}")
            value = int(value)
        return int(value)

    def in_range(self, key: str, value: int, size: int, what: str) -> int:
        if not 0 <= value < size:
            raise self.fail(key, f"{what} {value} is outside the image (0..{size - 1})")
        return value


def _plane_shape(shape: tuple[int, int, int], axis: int) -> tuple[int, int]:
    rows, cols = (shape[a] for a in range(3) if a != axis)
    return rows, cols


def _parse_object(index: int, obj: Any, shape: tuple[int, int, int],
                  source: str) -> ObjectPrompt:
    if not isinstance(obj, Mapping):
        raise PromptFileError(f"{source}: objects[{index}] must be a JSON object "
                              f"({{\"label\": ..., \"slice\": ..., \"box\": ...}}), got "
                              f"{type(obj).__name__}", index=index)
    c = _Checker(index, obj, shape, source)
    unknown = [k for k in obj if k not in OBJECT_KEYS]
    if unknown:
        raise c.fail(unknown[0], f"unknown key {unknown[0]!r} (allowed: {', '.join(OBJECT_KEYS)})")

    if "label" not in obj:
        raise c.fail("label", "missing (every object needs a label value >= 1)")
    label = c.integer("label", obj["label"], "the label")
    if label <= 0:
        raise c.fail("label", f"must be >= 1 (0 is the background), got {label}")
    if label > _MAX_LABEL:
        raise c.fail("label", f"must be at most {_MAX_LABEL}, got {label}")

    name = obj.get("name")
    if name is not None and not isinstance(name, str):
        raise c.fail("name", f"must be a string, got {json.dumps(name)}")

    axis = c.integer("axis", obj.get("axis", 0), "the axis")
    if axis not in (0, 1, 2):
        raise c.fail("axis", f"must be 0, 1 or 2 (the array axis the slice cuts across), "
                             f"got {axis}")

    if "slice" not in obj:
        raise c.fail("slice", "missing (the slice index along the axis)")
    index_along = c.integer("slice", obj["slice"], "the slice")
    if not 0 <= index_along < shape[axis]:
        raise c.fail("slice", f"slice {index_along} is outside the image: axis {axis} has "
                              f"slices 0..{shape[axis] - 1}")
    rows, cols = _plane_shape(shape, axis)

    box = None
    if obj.get("box") is not None:
        raw = obj["box"]
        if not isinstance(raw, list) or len(raw) != 4:
            raise c.fail("box", "must be a list of 4 numbers [row_min, col_min, row_max, "
                                f"col_max], got {json.dumps(raw)}")
        names = ("row_min", "col_min", "row_max", "col_max")
        values = [c.integer("box", v, n) for v, n in zip(raw, names, strict=True)]
        for v, n in zip(values, names, strict=True):
            size = rows if n.startswith("row") else cols
            if not 0 <= v < size:
                kind = "rows" if n.startswith("row") else "columns"
                raise c.fail("box", f"{n} {v} is outside the slice ({kind} 0..{size - 1} on "
                                    f"axis {axis})")
        r0, c0, r1, c1 = values
        for lo, hi, what in ((r0, r1, "row"), (c0, c1, "col")):
            if hi == lo:
                raise c.fail("box", f"has zero size: {what}_max equals {what}_min ({lo})")
            if hi < lo:
                raise c.fail("box", f"is inverted: {what}_max {hi} is less than "
                                    f"{what}_min {lo}")
        box = (r0, c0, r1, c1)
    elif "box" in obj:
        raise c.fail("box", "must be a list of 4 numbers, got null")

    points: list[tuple[int, int, int]] = []
    if "points" in obj:
        raw = obj["points"]
        if not isinstance(raw, list):
            raise c.fail("points", f"must be a list of [row, col, sign] lists, got "
                                   f"{json.dumps(raw)}")
        for k, p in enumerate(raw):
            what = f"point {k}"
            if not isinstance(p, list) or len(p) != 3:
                raise c.fail("points", f"{what} must be [row, col, sign] (sign 1 positive, "
                                       f"0 negative), got {json.dumps(p)}")
            r = c.integer("points", p[0], f"{what} row")
            col = c.integer("points", p[1], f"{what} column")
            if isinstance(p[2], bool) or p[2] not in (0, 1):
                raise c.fail("points", f"{what} sign must be 1 (positive) or 0 (negative), got "
                                       f"{json.dumps(p[2])}")
            if not 0 <= r < rows:
                raise c.fail("points", f"{what} row {r} is outside the slice (rows "
                                       f"0..{rows - 1} on axis {axis})")
            if not 0 <= col < cols:
                raise c.fail("points", f"{what} column {col} is outside the slice (columns "
                                       f"0..{cols - 1} on axis {axis})")
            points.append((r, col, int(p[2])))
    if box is None and not any(s == 1 for _, _, s in points):
        key = "points" if points else "box"
        raise c.fail(key, "the object needs a box or at least one positive point "
                          "([row, col, 1])")

    propagate = obj.get("propagate", False)
    if not isinstance(propagate, bool):
        raise c.fail("propagate", f"must be true or false, got {json.dumps(propagate)}")

    slice_range = None
    if obj.get("slice_range") is not None:
        raw = obj["slice_range"]
        if not isinstance(raw, list) or len(raw) != 2:
            raise c.fail("slice_range", f"must be [first, last] (inclusive slice indices), "
                                        f"got {json.dumps(raw)}")
        first = c.integer("slice_range", raw[0], "first")
        last = c.integer("slice_range", raw[1], "last")
        for v, n in ((first, "first"), (last, "last")):
            if not 0 <= v < shape[axis]:
                raise c.fail("slice_range", f"{n} {v} is outside the image: axis {axis} has "
                                            f"slices 0..{shape[axis] - 1}")
        if last < first:
            raise c.fail("slice_range", f"last {last} is less than first {first}")
        if not first <= index_along <= last:
            raise c.fail("slice_range", f"[{first}, {last}] does not contain the prompt's "
                                        f"slice {index_along}")
        if box is None and not propagate:
            raise c.fail("slice_range", "a 3D box needs a box (or set \"propagate\": true "
                                        "to propagate the clicked object within the range)")
        slice_range = (first, last)
    elif "slice_range" in obj:
        raise c.fail("slice_range", "must be [first, last], got null")

    return ObjectPrompt(index=index, label=label, name=name, axis=axis, slice=index_along,
                        box=box, points=tuple(points), propagate=propagate,
                        slice_range=slice_range)


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
    if not isinstance(data, Mapping):
        raise PromptFileError(f"{source}: the file must hold a JSON object "
                              f"{{\"objects\": [...]}}, got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise PromptFileError(f"{source}: unknown top-level key {unknown[0]!r} (allowed: "
                              f"{', '.join(TOP_KEYS)})", field=unknown[0])
    if "objects" not in data:
        raise PromptFileError(f"{source}: missing \"objects\" (a list of objects to segment)",
                              field="objects")
    objects = data["objects"]
    if not isinstance(objects, list):
        raise PromptFileError(f"{source}: \"objects\" must be a list, got "
                              f"{type(objects).__name__}", field="objects")
    if not objects:
        raise PromptFileError(f"{source}: \"objects\" is empty: nothing to segment",
                              field="objects")
    if len(objects) > MAX_OBJECTS:
        raise PromptFileError(f"{source}: {len(objects)} objects; a prompt file holds at most "
                              f"{MAX_OBJECTS} (split it into several files)", field="objects")
    if "description" in data and not isinstance(data["description"], str):
        raise PromptFileError(f"{source}: \"description\" must be a string",
                              field="description")
    prompts = [_parse_object(i, obj, shape3, source) for i, obj in enumerate(objects)]
    seen: dict[int, ObjectPrompt] = {}
    for p in prompts:
        if p.label in seen:
            raise PromptFileError(f"{source}: {p.title}, field 'label': duplicate label "
                                  f"{p.label}, already used by {seen[p.label].title}",
                                  index=p.index, field="label")
        seen[p.label] = p
    return prompts


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

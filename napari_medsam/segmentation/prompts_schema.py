"""The prompt file's schema as pydantic models.

:class:`PromptFileSpec` describes the file ``napari-medsam segment --prompts`` reads (see
:mod:`.prompts_file` for what the fields mean); :func:`prompt_file_schema` publishes it as
JSON Schema. Validated with ``context={"shape": (z, y, x)}`` the models also check that every
index lies inside the image. Validators raise ``PydanticCustomError("prompt_file", ...)`` with
the finished message; :mod:`.prompts_messages` turns any ``ValidationError`` into one
:class:`~.prompts_messages.PromptFileError` line. No Qt, no napari, no numpy here.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "BOX_NAMES",
    "MAX_LABEL",
    "MAX_OBJECTS",
    "OBJECT_KEYS",
    "TOP_KEYS",
    "ObjectSpec",
    "PromptFileSpec",
    "object_title",
    "outside_message",
    "prompt_file_schema",
]

#: Keys an object may have (anything else is an error).
OBJECT_KEYS = ("label", "name", "axis", "slice", "box", "points", "propagate", "slice_range")
#: Keys allowed at the top level of the file.
TOP_KEYS = ("objects", "description")
MAX_LABEL = 2**32 - 1
#: Objects in one prompt file. A file of 200,000 objects was accepted and meant ~5.5 h of
#: work; 10,000 objects are ~20 minutes of 2D boxes on a laptop.
MAX_OBJECTS = 10_000
BOX_NAMES = ("row_min", "col_min", "row_max", "col_max")


def object_title(index: int, label: Any = None, name: Any = None) -> str:
    """``objects[2] (label 3 "liver")``: how messages name an object."""
    parts = []
    if isinstance(label, int) and not isinstance(label, bool):
        parts.append(f"label {label}")
    if isinstance(name, str) and name:
        parts.append(json.dumps(name))
    return f"objects[{index}]" + (f" ({' '.join(parts)})" if parts else "")


def _fail(field: str, message: str, index: int | None = None,
          title: str | None = None) -> PydanticCustomError:
    """A problem found by a validator, carried to :func:`_describe` in the error's context
    (with the object's ``index`` and ``title`` when the error is raised above the object)."""
    return PydanticCustomError("prompt_file", "{message}", {"message": message, "field": field,
                                                           "index": index, "title": title})


def _whole_number(value: Any) -> Any:
    """A whole number: an int, or a float like 57.0; never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("whole_number", "must be a whole number")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise PydanticCustomError("whole_number", "must be a whole number")
        return int(value)
    return value


_Whole = BeforeValidator(_whole_number)
#: A voxel index (>= 0; the upper bound depends on the image).
Index = Annotated[int, Field(ge=0), _Whole]
Label = Annotated[int, Field(ge=1, le=MAX_LABEL), _Whole]
Axis = Annotated[Literal[0, 1, 2], _Whole]
Sign = Annotated[Literal[0, 1], _Whole]
Box = tuple[Index, Index, Index, Index]
Point = tuple[Index, Index, Sign]
SliceRange = tuple[Index, Index]


def _image(info: ValidationInfo) -> tuple[int, ...] | None:
    """The image shape validation was given (``context={"shape": ...}``), if any."""
    shape = (info.context or {}).get("shape")
    return None if shape is None else tuple(shape)


def outside_message(field: str, what: str, value: int, shape: tuple[int, ...], axis: int) -> str:
    """The message for an index outside an image of ``shape`` cut across ``axis``."""
    if field in ("slice", "slice_range"):
        return (f"{what} {value} is outside the image: axis {axis} has slices "
                f"0..{shape[axis] - 1}")
    rows, cols = (shape[a] for a in range(3) if a != axis)
    row = what.endswith("row") or what.startswith("row")
    size, kind = (rows, "rows") if row else (cols, "columns")
    return f"{what} {value} is outside the slice ({kind} 0..{size - 1} on axis {axis})"


# The validators run in field order and see the fields before theirs (``info.data``; a field
# that failed is absent there and its own error is reported first), so problems come in the
# order of OBJECT_KEYS. With ``context={"shape": (z, y, x)}`` they also check every index
# against the image.
class ObjectSpec(BaseModel):
    """One object to segment: a slice, its prompts (a box and/or clicks) and how far the object
    reaches (2D, a 3D box over slice_range, or propagation)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, title="object",
        json_schema_extra={"anyOf": [{"required": ["box"]}, {"required": ["points"]}]})

    label: Label = Field(description="label value written for the object; unique in the file")
    name: StrictStr | None = Field(None, description="written to the .label.txt sidecar")
    axis: Axis = Field(0, description="the array axis the slice cuts across")
    slice: Index = Field(description="slice index along axis: np.take(volume, slice, axis)")
    # Not nullable: an explicit null is an error, leaving the key out means "no box".
    box: Box = Field(None, description="[row_min, col_min, row_max, col_max], inclusive "
                                       "indices within the slice")  # type: ignore[assignment]
    # validate_default: the "box or a positive point" rule runs when "points" is left out.
    points: list[Point] = Field([], validate_default=True,
                                description="clicks [row, col, sign] within the slice; "
                                            "sign 1 positive, 0 negative")
    propagate: StrictBool = Field(False, description="propagate the slice's mask through "
                                                     "the volume")
    slice_range: SliceRange = Field(None, description="[first, last] inclusive slice "
                                    "indices along axis; must contain slice")  # type: ignore[assignment]

    @field_validator("slice")
    @classmethod
    def _slice_inside(cls, value: int, info: ValidationInfo) -> int:
        shape, axis = _image(info), info.data.get("axis")
        if shape is not None and axis is not None and value >= shape[axis]:
            raise _fail("slice", outside_message("slice", "slice", value, shape, axis))
        return value

    @field_validator("box")
    @classmethod
    def _box_inside(cls, box: Box, info: ValidationInfo) -> Box:
        shape, axis = _image(info), info.data.get("axis")
        if shape is not None and axis is not None:
            rows, cols = (shape[a] for a in range(3) if a != axis)
            for value, name in zip(box, BOX_NAMES, strict=True):
                if value >= (rows if name.startswith("row") else cols):
                    raise _fail("box", outside_message("box", name, value, shape, axis))
        r0, c0, r1, c1 = box
        for lo, hi, what in ((r0, r1, "row"), (c0, c1, "col")):
            if hi == lo:
                raise _fail("box", f"has zero size: {what}_max equals {what}_min ({lo})")
            if hi < lo:
                raise _fail("box", f"is inverted: {what}_max {hi} is less than {what}_min {lo}")
        return box

    @field_validator("points")
    @classmethod
    def _points_inside(cls, points: list[Point], info: ValidationInfo) -> list[Point]:
        shape, axis = _image(info), info.data.get("axis")
        if shape is not None and axis is not None:
            rows, cols = (shape[a] for a in range(3) if a != axis)
            for k, (row, col, _) in enumerate(points):
                for value, size, what in ((row, rows, "row"), (col, cols, "column")):
                    if value >= size:
                        raise _fail("points", outside_message("points", f"point {k} {what}", value,
                                                       shape, axis))
        if "box" in info.data and info.data["box"] is None and not any(
                s == 1 for _, _, s in points):
            raise _fail("points" if points else "box", "the object needs a box or at least "
                        "one positive point ([row, col, 1])")
        return points

    @field_validator("slice_range")
    @classmethod
    def _range_inside(cls, value: SliceRange, info: ValidationInfo) -> SliceRange:
        shape, axis = _image(info), info.data.get("axis")
        first, last = value
        if shape is not None and axis is not None:
            for index, name in ((first, "first"), (last, "last")):
                if index >= shape[axis]:
                    raise _fail("slice_range", outside_message("slice_range", name, index, shape,
                                                        axis))
        if last < first:
            raise _fail("slice_range", f"last {last} is less than first {first}")
        if "slice" in info.data and not first <= info.data["slice"] <= last:
            raise _fail("slice_range", f"[{first}, {last}] does not contain the prompt's "
                                       f"slice {info.data['slice']}")
        if info.data.get("box", 0) is None and info.data.get("propagate") is False:
            raise _fail("slice_range", "a 3D box needs a box (or set \"propagate\": true "
                                       "to propagate the clicked object within the range)")
        return value


class PromptFileSpec(BaseModel):
    """A prompt file: the objects to segment, in voxel indices of the image array (z, y, x)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="napari-medsam prompt file")

    description: StrictStr = Field("", description="free text")
    objects: list[ObjectSpec] = Field(min_length=1, max_length=MAX_OBJECTS,
                                      description="objects to segment, written in this order")

    @model_validator(mode="after")
    def _unique_labels(self) -> PromptFileSpec:
        seen: dict[int, int] = {}
        for index, obj in enumerate(self.objects):
            if obj.label in seen:
                first = self.objects[seen[obj.label]]
                raise _fail("label", f"duplicate label {obj.label}, already used by "
                            f"{object_title(seen[obj.label], first.label, first.name)}", index,
                            object_title(index, obj.label, obj.name))
            seen[obj.label] = index
        return self


def prompt_file_schema() -> dict[str, Any]:
    """The prompt file's JSON Schema (draft 2020-12), as ``segment --print-schema`` prints it.

    Bounds that depend on the image (slice and box indices) and the rules across fields
    (a non-empty box, unique labels, ``slice_range`` containing ``slice``) are checked by
    the models' validators only.
    """
    schema = PromptFileSpec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}

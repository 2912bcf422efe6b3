"""Pydantic validation errors of a prompt file as one line each.

:func:`one_line_error` picks the error a reader meets first (file order, then the order of
``OBJECT_KEYS``, as the checks were written by hand before the models) and words it as
``p.json: objects[1] (label 3 "spleen"), field 'box': row_max 140 is outside the slice ...``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .prompts_schema import (
    BOX_NAMES,
    MAX_LABEL,
    MAX_OBJECTS,
    OBJECT_KEYS,
    TOP_KEYS,
    object_title,
    outside_message,
)

__all__ = ["PromptFileError", "one_line_error"]

_BOX_TEXT = "must be a list of 4 numbers [row_min, col_min, row_max, col_max]"
_POINT_TEXT = "must be [row, col, sign] (sign 1 positive, 0 negative)"
_RANGE_TEXT = "must be [first, last] (inclusive slice indices)"


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


def one_line_error(exc: ValidationError, data: Any, source: str,
                   shape: tuple[int, int, int] | None = None) -> PromptFileError:
    """The first problem of ``exc`` (validating ``data``) as a one-line PromptFileError."""
    first = min(exc.errors(include_url=False), key=_sort_key)
    return _describe(first, data, source, shape)


_STRUCTURAL = ("tuple_type", "list_type", "too_short", "too_long", "model_type")


def _sort_key(err: Mapping[str, Any]) -> tuple:
    """File order: file-level problems, then object by object in the order of OBJECT_KEYS
    (unknown keys first), within a field the order the hand-written checks had."""
    loc, kind = tuple(err["loc"]), err["type"]
    if len(loc) < 2 or not isinstance(loc[1], int):
        top = loc[0] if loc else None
        rank = -1 if kind == "extra_forbidden" else (
            TOP_KEYS.index(top) if top in TOP_KEYS else len(TOP_KEYS))
        return (0, rank)
    field = _field_of(err)
    rank = -1 if kind == "extra_forbidden" else (
        OBJECT_KEYS.index(field) if field in OBJECT_KEYS else -2)
    sub = loc[3:-1] if kind == "missing" and len(loc) > 3 else loc[3:]
    structural = kind in _STRUCTURAL or (kind == "missing" and len(loc) > 3)
    # As the checks went: a list's shape, its items' types, then their ranges; point by point.
    item = sub[:1] if field == "points" else ()
    return (1, loc[1], rank, item, not structural, kind == "greater_than_equal", sub)


def _field_of(err: Mapping[str, Any]) -> str | None:
    if err["type"] == "prompt_file":
        return err["ctx"]["field"]
    loc = err["loc"]
    return str(loc[2]) if len(loc) > 2 else None


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _at(data: Any, loc: tuple) -> Any:
    """The raw input at ``loc``."""
    for key in loc:
        data = data[key]
    return data


def _describe(err: Mapping[str, Any], data: Any, source: str,
              shape: tuple[int, int, int] | None) -> PromptFileError:
    loc, kind = tuple(err["loc"]), err["type"]
    ctx = err.get("ctx") or {}
    index = ctx.get("index")
    if index is None and len(loc) >= 2 and loc[0] == "objects" and isinstance(loc[1], int):
        index = loc[1]
    if index is None:
        field = loc[0] if loc else None
        return PromptFileError(f"{source}: {_file_message(kind, field, data)}",
                               field=None if field is None else str(field))
    raw = _at(data, ("objects", index))
    if len(loc) == 2 and kind == "model_type":
        return PromptFileError(f"{source}: objects[{index}] must be a JSON object "
                               f"({{\"label\": ..., \"slice\": ..., \"box\": ...}}), got "
                               f"{type(raw).__name__}", index=index)
    field = _field_of(err)
    if kind == "prompt_file":
        message = ctx["message"]
    else:
        message = _object_message(kind, field, loc[3:], err.get("input"), raw, shape)
    title = ctx.get("title") or object_title(index, raw.get("label"), raw.get("name"))
    where = f"{source}: {title}" + (f", field {field!r}" if field else "")
    return PromptFileError(f"{where}: {message}", index=index, field=field)


def _file_message(kind: str, field: Any, data: Any) -> str:
    if field is None:
        return f"the file must hold a JSON object {{\"objects\": [...]}}, got " \
               f"{type(data).__name__}"
    if kind == "extra_forbidden":
        return f"unknown top-level key {field!r} (allowed: {', '.join(TOP_KEYS)})"
    if field == "description":
        return "\"description\" must be a string"
    if kind == "missing":
        return "missing \"objects\" (a list of objects to segment)"
    if kind == "too_short":
        return "\"objects\" is empty: nothing to segment"
    if kind == "too_long":
        return f"{len(data['objects'])} objects; a prompt file holds at most {MAX_OBJECTS} " \
               "(split it into several files)"
    return f"\"objects\" must be a list, got {type(data['objects']).__name__}"


def _object_message(kind: str, field: str | None, sub: tuple, value: Any,
                    raw: Mapping[str, Any], shape: tuple[int, int, int] | None) -> str:
    """The message for a pydantic error at ``objects[i].field[sub...]``."""
    if kind == "extra_forbidden":
        return f"unknown key {field!r} (allowed: {', '.join(OBJECT_KEYS)})"
    if kind == "missing" and not sub:
        return ("missing (every object needs a label value >= 1)" if field == "label"
                else "missing (the slice index along the axis)")
    structural = kind in _STRUCTURAL or kind == "missing"
    if field in ("box", "slice_range") and structural:
        if raw[field] is None:
            return ("must be a list of 4 numbers" if field == "box" else
                    "must be [first, last]") + ", got null"
        return f"{_BOX_TEXT if field == 'box' else _RANGE_TEXT}, got {_show(raw[field])}"
    if field == "points" and structural:
        if not sub:
            return f"must be a list of [row, col, sign] lists, got {_show(raw['points'])}"
        return f"point {sub[0]} {_POINT_TEXT}, got {_show(raw['points'][sub[0]])}"
    if field == "points" and sub[1:] == (2,):
        return f"point {sub[0]} sign must be 1 (positive) or 0 (negative), got {_show(value)}"
    what = _what(field, sub)
    if kind == "whole_number":
        shown = repr(value) if isinstance(value, float) else _show(value)
        return f"{what} must be a whole number, got {shown}"
    if field == "label":
        return (f"must be >= 1 (0 is the background), got {value}" if kind ==
                "greater_than_equal" else f"must be at most {MAX_LABEL}, got {value}")
    if kind == "greater_than_equal":  # a negative index
        what = "slice" if field == "slice" else what
        if shape is None:
            return f"{what} {value} is outside the image (indices start at 0)"
        axis = int(raw.get("axis", 0))  # valid: an invalid axis is reported before
        return outside_message(str(field), what, value, shape, axis)
    if kind == "literal_error":
        return f"must be 0, 1 or 2 (the array axis the slice cuts across), got {value}"
    if kind == "string_type":
        return f"must be a string, got {_show(value)}"
    if kind == "bool_type":
        return f"must be true or false, got {_show(value)}"
    return _fallback(kind, value)


def _what(field: str | None, sub: tuple) -> str:
    """How a message names the value at ``field[sub...]``: ``row_min``, ``point 2 column``."""
    if field == "box" and sub:
        return BOX_NAMES[sub[0]]
    if field == "points" and len(sub) == 2:
        return f"point {sub[0]} {('row', 'column')[sub[1]]}"
    if field == "slice_range" and sub:
        return ("first", "last")[sub[0]]
    return f"the {field}"


def _fallback(kind: str, value: Any) -> str:
    """A fallback for an error type this module does not word itself (one line)."""
    return f"invalid value {_show(value)} ({kind})"

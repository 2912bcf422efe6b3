"""Which rows of a label map a napari Labels layer's paint event changed (no Qt, no napari).

:func:`rows_of_edit` reads the first-axis ranges (rows: slices along the first axis) out of
a paint event's history atoms, so that the autosave copies only those rows
(:mod:`napari_medsam._qt.paint_events` hands them to its mirror).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rows_of_edit"]


def _atom_rows(atom: Any, n_rows: int) -> tuple[int, int] | None:
    """First-axis range of one napari paint-history atom, or None for an unknown form.

    napari records ``(slice_key, mask, old_values, new_value)`` for brush, fill and polygon
    edits (a bounding box of slices) and ``(indices, old_values, new_values)`` for
    :meth:`Labels.data_setitem` (fancy indices).
    """
    if not isinstance(atom, tuple) or not atom or not isinstance(atom[0], (tuple, list)):
        return None
    where = atom[0]
    if not where:
        return None
    first = where[0]
    if isinstance(first, slice):
        start, stop, step = first.indices(n_rows)
        return (start, stop) if step == 1 else (0, n_rows)
    if isinstance(first, (int, np.integer)):
        row = int(first) % n_rows if n_rows else 0
        return row, row + 1
    rows = np.asarray(first)
    if rows.size == 0:
        return 0, 0
    if rows.dtype.kind not in "iu" or rows.min() < 0:
        return None
    return int(rows.min()), int(rows.max()) + 1


def rows_of_edit(item: Any, n_rows: int) -> list[tuple[int, int]] | None:
    """The first-axis ranges that one napari paint event (``event.value``: a list of history
    atoms) changed, or None when they cannot be told (then everything may have changed)."""
    if not isinstance(item, (list, tuple)):
        return None
    ranges = []
    for atom in item:
        rows = _atom_rows(atom, n_rows)
        if rows is None:
            return None
        ranges.append(rows)
    return ranges

"""Writing a 2D mask into a 3D label volume by a clear overlap rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelEdit:
    """Voxels to set in a label volume: ``indices`` (tuple of index arrays) and their value."""

    indices: tuple[np.ndarray, ...]
    value: int

    @property
    def count(self) -> int:
        return int(self.indices[0].size)


def merge_mask(labels: np.ndarray, mask2d: np.ndarray, axis: int, index: int, label_id: int,
               *, overwrite: bool = False) -> LabelEdit:
    """The edit that writes ``mask2d`` on slice ``index`` along ``axis`` as ``label_id``.

    Parameters
    ----------
    overwrite
        False (the default) keeps voxels of other objects: only background and voxels
        already equal to ``label_id`` are written. True paints over other objects.
    """
    if label_id <= 0:
        raise ValueError(f"label id must be positive, got {label_id}")
    plane = np.take(labels, index, axis=axis)
    if plane.shape != mask2d.shape:
        raise ValueError(f"mask of shape {mask2d.shape} does not fit slice {index} along axis "
                         f"{axis} of shape {plane.shape}")
    if labels.dtype.kind in "ui" and np.iinfo(labels.dtype).max < label_id:
        raise ValueError(f"label id {label_id} does not fit the labels' type {labels.dtype}")
    writable = mask2d.astype(bool)
    if not overwrite:
        writable &= (plane == 0) | (plane == label_id)
    writable &= plane != label_id  # nothing to change there
    rows, cols = np.nonzero(writable)
    slice_idx = np.full(rows.shape, index, dtype=np.intp)
    other = [a for a in range(labels.ndim) if a != axis]
    full: list[np.ndarray] = [np.empty(0, dtype=np.intp)] * labels.ndim
    full[axis] = slice_idx
    full[other[0]] = rows
    full[other[1]] = cols
    return LabelEdit(tuple(full), int(label_id))

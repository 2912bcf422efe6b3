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


@dataclass(frozen=True)
class VolumeEdit:
    """Voxels to set in a label volume, each with its own new value (one undoable step)."""

    indices: tuple[np.ndarray, ...]
    values: np.ndarray

    @property
    def count(self) -> int:
        return int(self.values.size)


def replace_object(labels: np.ndarray, new_mask: np.ndarray, label_id: int, *,
                   region: np.ndarray | None = None, overwrite: bool = False) -> VolumeEdit:
    """The edit that makes object ``label_id`` equal ``new_mask`` inside ``region``.

    Voxels of ``new_mask`` get ``label_id`` (other objects' voxels only with ``overwrite``);
    voxels of ``label_id`` outside ``new_mask`` but inside ``region`` return to 0. Outside
    ``region`` (default: everywhere) nothing changes, so e.g. a propagation that produced a
    few slices replaces only those slices.

    Parameters
    ----------
    labels
        The label volume (not modified).
    new_mask
        Boolean volume of the labels' shape: the object as it should be.
    region
        Boolean volume (or None for all voxels): where the object may change.
    """
    if label_id <= 0:
        raise ValueError(f"label id must be positive, got {label_id}")
    if new_mask.shape != labels.shape or (region is not None and region.shape != labels.shape):
        raise ValueError(f"mask of shape {new_mask.shape} does not fit labels of shape "
                         f"{labels.shape}")
    if labels.dtype.kind in "ui" and np.iinfo(labels.dtype).max < label_id:
        raise ValueError(f"label id {label_id} does not fit the labels' type {labels.dtype}")
    new_mask = new_mask.astype(bool)
    current = labels == label_id
    add = new_mask & ~current
    if not overwrite:
        add &= labels == 0
    remove = current & ~new_mask
    if region is not None:
        add &= region
        remove &= region
    changed = add | remove
    indices = np.nonzero(changed)
    values = np.where(add[indices], label_id, 0).astype(labels.dtype)
    return VolumeEdit(tuple(indices), values)

"""Writing an accepted change into a Labels layer: one undoable napari edit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari.layers import Labels

    from napari_medsam.segmentation.annotation_edits import LabelChange

__all__ = ["write_change"]


def write_change(labels: Labels, change: LabelChange) -> int:
    """Write ``change`` into ``labels`` through ``Labels.data_setitem`` (one undo step, a
    paint event for the autosave); returns the voxels changed (nothing is written for 0)."""
    if change.count:
        labels.visible = True  # napari updates only visible layers' slices in place
        labels.data_setitem(change.indices, change.value)
    return int(change.count)

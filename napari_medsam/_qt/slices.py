"""What the viewer shows of a scan: the displayed slice and the model's intensity mapping.

Thin napari glue over the Qt-free helpers of
:mod:`napari_medsam.segmentation.annotation_edits` (no Qt imports).
"""

from __future__ import annotations

from napari_medsam.io.intensity import IntensityMapping
from napari_medsam.segmentation import SliceRef
from napari_medsam.segmentation.annotation_edits import displayed_slice, mapping_for_limits

__all__ = ["current_slice", "mapping_for_layer"]


def current_slice(viewer, image) -> SliceRef | None:
    """The slice of ``image`` (a 3D Image layer, or None) on display: the array axis
    napari slices and its index; None in 3D views or without an image."""
    if image is None or viewer.dims.ndisplay != 2:
        return None
    return displayed_slice(viewer.dims.ndisplay, viewer.dims.displayed,
                           image.world_to_data(viewer.dims.point), image.data.shape)


def mapping_for_layer(layer) -> IntensityMapping:
    """The mapping the user sees: the layer's contrast limits, named after a CT preset if
    they equal one."""
    low, high = (float(v) for v in layer.contrast_limits)
    return mapping_for_limits(low, high)

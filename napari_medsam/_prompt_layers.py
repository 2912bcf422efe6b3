"""napari layers that hold the prompts (boxes and clicks) and the preview.

Prompts live in 3D layers with the image's scale and translate, so their coordinates are the
image's voxel indices; each prompt belongs to the slice it was drawn on (napari shows it only
there), in whichever axis the viewer slices.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from napari_medsam.segmentation import SliceRef

BOXES_LAYER = "MedSAM boxes"
CLICKS_LAYER = "MedSAM clicks"
PREVIEW_LAYER = "MedSAM preview"
POSITIVE_COLOR = "#33ff66"
NEGATIVE_COLOR = "#ff3355"


def _in_plane_axes(ref: SliceRef) -> tuple[int, int]:
    rows_axis, cols_axis = (a for a in range(3) if a != ref.axis)
    return rows_axis, cols_axis


def boxes_on_slice(shapes: Shapes, ref: SliceRef) -> list[tuple[float, float, float, float]]:
    """(x_min, y_min, x_max, y_max) of each rectangle drawn on slice ``ref``."""
    rows_axis, cols_axis = _in_plane_axes(ref)
    boxes = []
    for vertices, kind in zip(shapes.data, shapes.shape_type, strict=True):
        vertices = np.asarray(vertices)
        if kind != "rectangle" or vertices.shape[1] != 3:
            continue
        if not np.allclose(vertices[:, ref.axis], ref.index, atol=0.5):
            continue
        ys, xs = vertices[:, rows_axis], vertices[:, cols_axis]
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    return boxes


def clicks_on_slice(points: Points, ref: SliceRef) -> tuple[list[tuple[float, float]],
                                                            list[tuple[float, float]]]:
    """Positive and negative clicks (x, y) on slice ``ref``."""
    rows_axis, cols_axis = _in_plane_axes(ref)
    data = np.asarray(points.data)
    if data.size == 0:
        return [], []
    signs = np.asarray(points.features["sign"]) if "sign" in points.features else \
        np.ones(len(data), dtype=int)
    on_slice = np.abs(data[:, ref.axis] - ref.index) <= 0.5
    positives, negatives = [], []
    for vertex, sign in zip(data[on_slice], signs[on_slice], strict=True):
        xy = (float(vertex[cols_axis]), float(vertex[rows_axis]))
        (positives if int(sign) == 1 else negatives).append(xy)
    return positives, negatives


def prompts_off_slice(layer, ref: SliceRef) -> list[int]:
    """Indices of the shapes or points of ``layer`` that are not on slice ``ref``."""
    if isinstance(layer, Shapes):
        return [i for i, v in enumerate(layer.data)
                if not np.allclose(np.asarray(v)[:, ref.axis], ref.index, atol=0.5)]
    data = np.asarray(layer.data)
    return [i for i in range(len(data)) if abs(data[i, ref.axis] - ref.index) > 0.5]


def color_clicks(points: Points) -> None:
    """Green for positive clicks, red for negative ones."""
    if len(points.data) == 0:
        return
    signs = np.asarray(points.features["sign"])
    colors = np.where(signs[:, None] == 1, _rgba(POSITIVE_COLOR), _rgba(NEGATIVE_COLOR))
    points.face_color = colors


def _rgba(hex_color: str) -> np.ndarray:
    value = hex_color.lstrip("#")
    return np.array([int(value[i: i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0])


def add_prompt_layers(viewer, image: Image) -> tuple[Shapes, Points]:
    """Create (or re-fit to ``image``) the boxes, clicks and preview layers."""
    geometry = {"scale": image.scale, "translate": image.translate}
    if BOXES_LAYER not in viewer.layers:
        viewer.add_shapes(ndim=3, name=BOXES_LAYER, edge_color="yellow",
                          face_color="transparent", edge_width=1.5, **geometry)
    if CLICKS_LAYER not in viewer.layers:
        viewer.add_points(np.empty((0, 3)), ndim=3, name=CLICKS_LAYER, size=4,
                          features={"sign": np.zeros(0, dtype=int)},
                          feature_defaults={"sign": 1}, border_color="white",
                          face_color=POSITIVE_COLOR, **geometry)
    if PREVIEW_LAYER not in viewer.layers:
        viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint8), name=PREVIEW_LAYER,
                          opacity=0.5, **geometry)
    preview = viewer.layers[PREVIEW_LAYER]
    if preview.data.shape != image.data.shape:  # another image was chosen
        preview.data = np.zeros(image.data.shape, dtype=np.uint8)
    for name in (BOXES_LAYER, CLICKS_LAYER, PREVIEW_LAYER):
        viewer.layers[name].scale = image.scale
        viewer.layers[name].translate = image.translate
    return viewer.layers[BOXES_LAYER], viewer.layers[CLICKS_LAYER]


def draw_preview(preview: Labels, old: SliceRef | None, ref: SliceRef | None,
                 mask: np.ndarray | None) -> None:
    """Show ``mask`` on slice ``ref`` of the preview layer, clearing only slice ``old`` (the
    one drawn last time) first; ``mask`` None: nothing new is drawn."""
    if old is not None:
        key: list = [slice(None)] * 3
        key[old.axis] = old.index
        preview.data[tuple(key)] = 0
    if mask is not None and ref is not None:
        key = [slice(None)] * 3
        key[ref.axis] = ref.index
        preview.data[tuple(key)] = mask.astype(np.uint8)
    preview.refresh()

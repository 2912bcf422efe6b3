"""The reference label map: aligned onto the image's voxel grid, and its label names.

Split out of :mod:`napari_medsam.evaluation`, which re-exports every public name here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medsam.evaluation_results import EvalError
from napari_medsam.io import Volume

logger = logging.getLogger(__name__)

__all__ = ["align_reference", "reference_label_names"]


def _same_geometry(a: Volume, b: Volume) -> bool:
    return (a.shape == b.shape
            and np.allclose(a.spacing, b.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(a.origin, b.origin, rtol=0, atol=1e-3)
            and np.allclose(a.direction, b.direction, rtol=0, atol=1e-5))


def _physical_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper physical corners (x, y, z) of the volume, voxel edges included."""
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    size = np.array(volume.shape[::-1], dtype=float)  # x, y, z
    corners = []
    for cx in (-0.5, size[0] - 0.5):
        for cy in (-0.5, size[1] - 0.5):
            for cz in (-0.5, size[2] - 0.5):
                idx = np.array([cx, cy, cz]) * np.asarray(volume.spacing)
                corners.append(np.asarray(volume.origin) + d @ idx)
    pts = np.array(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _as_int_labels(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0)
        arr = np.rint(arr)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    return arr.astype(np.int64) if arr.dtype.kind == "f" else arr


def align_reference(image: Volume, reference: Volume) -> tuple[np.ndarray, bool]:
    """The reference labels on the image's voxel grid, and whether they were resampled.

    Same shape and geometry: the array as it is. Different geometry that overlaps the image
    (e.g. ``totalseg_ct_dicom``, whose label file is flipped in y): resampled onto the image
    in physical space with nearest neighbour (logged).

    Raises
    ------
    EvalError
        When the reference does not overlap the image, or nothing of it lands on the image.
    """
    labels = _as_int_labels(reference.array)
    if _same_geometry(image, reference):
        return labels, False
    lo_a, hi_a = _physical_bounds(image)
    lo_b, hi_b = _physical_bounds(reference)
    overlap = np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)
    def geometry(v: Volume) -> str:
        return (f"{v.shape} spacing {tuple(round(s, 4) for s in v.spacing)} origin "
                f"{tuple(round(o, 2) for o in v.origin)} direction "
                f"{tuple(round(d, 3) for d in v.direction)}")

    describe = f"image {geometry(image)} vs reference {geometry(reference)}"
    if np.any(overlap <= 0):
        raise EvalError(f"the reference does not overlap the image in physical space "
                        f"({describe}): are they from the same scan?")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise EvalError("the reference has negative label values")
    src = sitk.GetImageFromArray(labels.astype(np.uint32, copy=False))
    reference.copy_geometry_to(src)
    grid = sitk.Image(*[int(s) for s in image.shape[::-1]], sitk.sitkUInt8)
    image.copy_geometry_to(grid)
    out = sitk.Resample(src, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt32)
    resampled = sitk.GetArrayFromImage(out)
    logger.warning("the reference's geometry differs from the image's (%s): resampled it onto "
                   "the image grid in physical space (nearest neighbour)", describe)
    if labels.any() and not resampled.any():
        raise EvalError(f"no reference label lands on the image after resampling ({describe})")
    return resampled, True


def reference_label_names(reference: Volume, path: str | Path | None = None) -> dict[int, str]:
    """Label names: the reference's own (ITK-SNAP sidecar), else ``labels.json`` beside it.

    ``labels.json`` is the data folder's format: ``{"labels": {"1": "liver", ...}}``.
    """
    names = dict(reference.label_names)
    where = path if path is not None else reference.path
    if where is None:
        return names
    p = Path(where)
    candidate = (p if p.is_dir() else p.parent) / "labels.json"
    if candidate.is_file():
        try:
            meta = json.loads(candidate.read_text(encoding="utf-8"))
            for key, value in (meta.get("labels") or {}).items():
                names.setdefault(int(key), str(value))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            logger.warning("could not read label names from %s: %s", candidate, exc)
    return names

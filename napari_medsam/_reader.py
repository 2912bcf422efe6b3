"""napari reader: open NIfTI, NRRD, MetaImage files and DICOM series folders.

Scans become Image layers (with the automatic CT window or MR percentile contrast),
label maps become Labels layers; both carry the scan geometry in ``metadata`` (see
:meth:`napari_medsam.io.Volume.metadata`) and are placed in world coordinates (-S, P, L) by
``scale``/``translate`` (:attr:`~napari_medsam.io.Volume.display_scale`), so that slices show
the way radiologists read them whichever way the file stores its voxels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .io import Volume, is_volume_path, read_volume, volume_name
from .io.intensity import auto_mapping

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

__all__ = ["napari_get_reader", "read_layers", "volume_to_layer_data"]


def _as_label_data(array: np.ndarray) -> np.ndarray:
    """napari Labels need integers: convert float label maps holding whole numbers."""
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    high = float(np.nanmax(array)) if array.size else 0.0
    dtype = np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32
    return np.nan_to_num(array, nan=0.0).astype(dtype)


def _layer_name(volume: Volume) -> str:
    return volume_name(volume.path) if volume.path else "volume"


def volume_to_layer_data(volume: Volume) -> LayerData:
    """One napari LayerData tuple for ``volume``: Labels for label maps, else Image."""
    common: dict[str, Any] = {
        "name": _layer_name(volume),
        "scale": volume.display_scale,
        "translate": volume.display_translate,
        "metadata": volume.metadata(),
    }
    if volume.is_label_map:
        return (_as_label_data(volume.array), common, "labels")
    mapping = auto_mapping(volume.array, volume.modality)
    common["contrast_limits"] = list(mapping.contrast_limits)
    common["metadata"]["intensity_mapping"] = mapping.key
    return (volume.array, {**common, "colormap": "gray"}, "image")


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read one path or several into LayerData tuples (one per path).

    Raises
    ------
    napari_medsam.io.VolumeReadError
        With a plain-words message naming the file and the problem; napari shows
        it as a notification and stays usable.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [volume_to_layer_data(read_volume(p)) for p in paths]


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """npe2 reader contribution: a reader function for ``path``, or None.

    Files are accepted by extension (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``,
    ``.mha``, ``.mhd``, ``.dcm``) or by the DICOM ``DICM`` marker; folders only when
    they directly hold DICOM files. For a list, every path must be acceptable.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in paths:
        if not isinstance(p, (str, os.PathLike)) or not is_volume_path(p):
            return None
    return read_layers

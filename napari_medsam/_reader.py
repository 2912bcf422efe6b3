"""napari reader: open NIfTI, NRRD, MetaImage files and DICOM series folders.

Scans become Image layers (with the automatic CT window or MR percentile contrast),
label maps become Labels layers; both carry the scan geometry in ``metadata`` (see
:meth:`napari_medsam.io.Volume.metadata`) and are placed in world coordinates (-S, P, L) by
``scale``/``translate`` (:attr:`~napari_medsam.io.Volume.display_scale`), so that slices show
the way radiologists read them whichever way the file stores its voxels.

A DICOM series with missing slices is refused by default; the environment variable
``NAPARI_MEDSAM_SLICE_GAPS=fill`` opens it with blank slices at the missing positions
(see :func:`napari_medsam.io.read_volume`), and what was filled in is shown as a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .io import (
    SLICE_GAP_CHOICES,
    Volume,
    VolumeReadError,
    is_volume_path,
    label_description_path,
    read_volume,
    volume_name,
)
from .io.intensity import auto_mapping
from .io.label_descriptions import read_label_table

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

__all__ = ["SLICE_GAPS_ENV", "napari_get_reader", "read_layers", "volume_to_layer_data"]

#: Environment variable choosing ``read_volume(..., slice_gaps=...)`` for napari.
SLICE_GAPS_ENV = "NAPARI_MEDSAM_SLICE_GAPS"


def _as_label_data(array: np.ndarray) -> np.ndarray:
    """napari Labels need integers: convert float label maps holding whole numbers."""
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    high = float(np.nanmax(array)) if array.size else 0.0
    dtype = np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32
    return np.nan_to_num(array, nan=0.0).astype(dtype)


#: Label values past the largest one in a file that still get a colour of their own (for
#: objects added later); beyond them napari uses one colour.
_SPARE_COLORS = 64
_MAX_COLORS = 4096


def sidecar_colormap(path: str | None, data: np.ndarray) -> dict | None:
    """A napari label colormap (``{value: RGBA}``) from the ``.label.txt`` beside ``path``.

    Labels listed in the file get its colour and alpha (alpha 0 when hidden); other labels
    in ``data``, and a few values past the largest, get napari's default colours. None when
    there is no sidecar or it cannot be read (napari then uses its default colours).
    """
    if not path or not os.path.isfile(path):
        return None
    sidecar = label_description_path(path)
    if not sidecar.is_file():
        return None
    try:
        table = read_label_table(sidecar)
    except (OSError, ValueError) as exc:
        logger.warning("could not read label colours from %s: %s", sidecar, exc)
        return None
    if not table:
        return None
    from napari.utils.colormaps import label_colormap

    largest = int(data.max()) if data.size else 0
    top = min(max(largest, max(table)) + _SPARE_COLORS, _MAX_COLORS)
    values = np.arange(1, top + 1, dtype=np.uint32)
    defaults = label_colormap(49, 0.5, background_value=0).map(values)  # napari's default
    colors: dict = {int(v): tuple(float(c) for c in rgba)
                    for v, rgba in zip(values, defaults, strict=True)}
    for value, row in table.items():
        alpha = row.alpha if row.visible else 0.0
        colors[int(value)] = (*(c / 255 for c in row.color), float(alpha))
    colors[0] = (0.0, 0.0, 0.0, 0.0)
    colors[None] = (1.0, 0.0, 1.0, 1.0)
    return colors


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
        data = _as_label_data(volume.array)
        colors = sidecar_colormap(volume.path, data)
        if colors is not None:
            common["colormap"] = colors
        return (data, common, "labels")
    mapping = auto_mapping(volume.array, volume.modality)
    common["contrast_limits"] = list(mapping.contrast_limits)
    common["metadata"]["intensity_mapping"] = mapping.key
    return (volume.array, {**common, "colormap": "gray"}, "image")


def slice_gaps_choice() -> str:
    """``slice_gaps`` for :func:`read_volume` from ``NAPARI_MEDSAM_SLICE_GAPS`` (default error).

    Raises
    ------
    napari_medsam.io.VolumeReadError
        When the variable holds something else than ``error`` or ``fill``.
    """
    raw = os.environ.get(SLICE_GAPS_ENV, "")
    value = raw.strip().lower() or "error"
    if value not in SLICE_GAP_CHOICES:
        raise VolumeReadError(
            f"{SLICE_GAPS_ENV}={raw!r} is not understood: use 'error' (the default: refuse "
            "DICOM series with missing slices) or 'fill' (open them with blank slices)"
        )
    return value


def _show_warnings(volume: Volume) -> None:
    """Show what the reader repaired as napari notifications (they are logged anyway)."""
    if not volume.warnings:
        return
    try:
        from napari.utils.notifications import show_warning
    except ImportError:
        return
    for text in volume.warnings:
        show_warning(text)


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read one path or several into LayerData tuples (one per path).

    DICOM series with missing slices follow ``NAPARI_MEDSAM_SLICE_GAPS`` (see
    :func:`slice_gaps_choice`); ``Volume.warnings`` are shown as napari warnings.

    Raises
    ------
    napari_medsam.io.VolumeReadError
        With a plain-words message naming the file and the problem; napari shows
        it as a notification and stays usable.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    slice_gaps = slice_gaps_choice()
    layers = []
    for p in paths:
        volume = read_volume(p, slice_gaps=slice_gaps)
        _show_warnings(volume)
        layers.append(volume_to_layer_data(volume))
    return layers


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

"""Open CT/MRI volumes: NIfTI, NRRD, MetaImage files and DICOM series folders.

Every failure becomes a :class:`~napari_medsam.io.volume.VolumeReadError` whose message
names the file and says, in plain words, what is wrong with it. DICOM series are read and
checked in :mod:`.dicom`, NIfTI files checked in :mod:`.nifti`.

No napari or Qt imports here.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ._common import (
    DICOM_EXTENSIONS,
    VOLUME_EXTENSIONS,
    folder_has_dicom,
    is_dicom_file,
    looks_like_text,
    lower_name,
    permission_denied,
    sitk_detail,
)
from .dicom import SLICE_GAP_CHOICES, read_dicom
from .intensity import looks_like_ct
from .label_descriptions import label_description_path, read_label_descriptions
from .nifti import check_nifti, nifti_all_nan
from .volume import Volume, VolumeReadError, looks_like_label_map

logger = logging.getLogger(__name__)

__all__ = [
    "DICOM_EXTENSIONS",
    "SLICE_GAP_CHOICES",
    "VOLUME_EXTENSIONS",
    "folder_has_dicom",
    "is_dicom_file",
    "is_volume_path",
    "read_volume",
    "volume_name",
]

_NEEDS_3D = "napari-medsam needs a 3D volume"


def volume_name(path: str | os.PathLike[str]) -> str:
    """A layer name for ``path``: the file name without its volume extension."""
    p = Path(path)
    lower = p.name.lower()
    for ext in (*VOLUME_EXTENSIONS, *DICOM_EXTENSIONS):
        if lower.endswith(ext):
            return p.name[: -len(ext)]
    return p.name


def is_volume_path(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_volume` should be tried on ``path`` (by name or content)."""
    p = Path(path)
    if p.is_dir():
        return folder_has_dicom(p)
    if lower_name(p).endswith(VOLUME_EXTENSIONS + DICOM_EXTENSIONS):
        return True
    return p.is_file() and is_dicom_file(p)


# -- SimpleITK error translation -----------------------------------------------------------
def _translate_sitk_error(path: Path, exc: Exception) -> VolumeReadError:
    detail = sitk_detail(exc)
    if "Unable to determine ImageIO reader" in str(exc):
        if looks_like_text(path):
            return VolumeReadError(
                f"{path} is a text file, not a medical image (was another file renamed?)"
            )
        return VolumeReadError(
            f"{path} is not a medical image napari-medsam can read (NIfTI .nii/.nii.gz, "
            "NRRD .nrrd/.nhdr, MetaImage .mha/.mhd or a DICOM series), or it is damaged"
        )
    if "does not exist" in detail and path.exists():  # how ITK reports an unreadable file
        if not os.access(path, os.R_OK):
            return VolumeReadError(permission_denied(path))
        return VolumeReadError(
            f"cannot read {path}: {detail} (a file it refers to is missing or unreadable?)"
        )
    return VolumeReadError(
        f"{path} could not be read; the file is probably truncated or damaged ({detail})"
    )


# -- shape and value checks ----------------------------------------------------------------
def _size_text(size: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in size)


def _check_layout(path: Path, dimension: int, size: tuple[int, ...], components: int) -> None:
    """Raise for multichannel, 2D and (real) 4D images; called before pixels are loaded."""
    if components > 1:
        raise VolumeReadError(
            f"{path} has {components} values per voxel (a colour, vector or multichannel "
            f"image); {_NEEDS_3D} with one value per voxel"
        )
    if dimension < 3:
        raise VolumeReadError(f"{path} is 2D (size {_size_text(size)}); {_NEEDS_3D}")
    if dimension == 3 and min(size) == 1:
        raise VolumeReadError(
            f"{path} is 2D (a single slice, size {_size_text(size)}); {_NEEDS_3D}"
        )
    if dimension > 3 and math.prod(size[3:]) > 1:
        raise VolumeReadError(
            f"{path} is {dimension}D (size {_size_text(size)}, e.g. a time series or several "
            f"channels); {_NEEDS_3D} - save a single 3D volume from it first"
        )
    if dimension > 3 and min(size[:3]) == 1:
        raise VolumeReadError(f"{path} is 2D (size {_size_text(size)}); {_NEEDS_3D}")


def _to_3d(image: sitk.Image) -> sitk.Image:
    """Drop trailing length-1 dimensions (a 4D NIfTI with one time point)."""
    if image.GetDimension() <= 3:
        return image
    size = list(image.GetSize())
    return sitk.Extract(image, size[:3] + [0] * (len(size) - 3), [0] * len(size))


def _check_values(path: Path, array: np.ndarray, allow_constant: bool) -> None:
    if array.size == 0:
        raise VolumeReadError(f"{path} holds no voxels")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.any():
            raise VolumeReadError(f"{path} contains only NaN (or infinite) values: no image data")
        values = array if finite.all() else array[finite]
        low, high = float(values.min()), float(values.max())
    elif array.dtype.kind in "biu":
        low, high = float(array.min()), float(array.max())
    else:
        raise VolumeReadError(f"{path} has voxel type {array.dtype}, which is not supported")
    if low == high and not allow_constant:
        if low == 0 and lower_name(path).endswith((".nii", ".nii.gz")) and nifti_all_nan(path):
            raise VolumeReadError(f"{path} contains only NaN (or infinite) values: no image data")
        raise VolumeReadError(
            f"{path} is constant (every voxel is {low:g}): there is nothing to show or segment"
        )


# -- modality ------------------------------------------------------------------------------
def _modality_from_tag(value: str | None) -> str | None:
    if not value:
        return None
    text = value.strip().upper()
    if text in ("CT", "MET_MOD_CT"):
        return "CT"
    if text in ("MR", "MRI", "MET_MOD_MR"):
        return "MR"
    return "unknown"


def _guess_modality(array: np.ndarray, is_label: bool) -> str:
    if is_label:
        return "unknown"
    return "CT" if looks_like_ct(array) else "MR"


# -- single files --------------------------------------------------------------------------
def _read_file(path: Path) -> tuple[sitk.Image, str | None]:
    """Read one NIfTI/NRRD/MetaImage file; returns the image and a modality hint."""
    if path.stat().st_size == 0:
        raise VolumeReadError(f"{path} is an empty file (0 bytes)")
    if lower_name(path).endswith((".nii", ".nii.gz")):
        check_nifti(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _translate_sitk_error(path, exc) from exc
    _check_layout(
        path, reader.GetDimension(), tuple(reader.GetSize()), reader.GetNumberOfComponents()
    )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _translate_sitk_error(path, exc) from exc
    hint = reader.GetMetaData("Modality") if reader.HasMetaDataKey("Modality") else None
    return _to_3d(image), hint


# -- public --------------------------------------------------------------------------------
def read_volume(path: str | os.PathLike[str], *, slice_gaps: str = "error") -> Volume:
    """Open a 3D CT/MRI volume or label map.

    Parameters
    ----------
    path : path-like
        A NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
        (``.mha``, ``.mhd``) file; a folder holding a DICOM series; or one file of a
        DICOM series (its whole series is opened). A folder with several series opens
        the one with most files; the others are logged and listed in
        ``Volume.other_series``. DICOM slices are ordered by position, not file name.
    slice_gaps : {"error", "fill"}
        What to do with a DICOM series that misses slices (a gap of a whole number of
        slices) or holds files that cannot be read: ``"error"`` (default) raises;
        ``"fill"`` opens it, inserting blank slices (the volume's minimum) at the
        missing positions so that the geometry is exact, and lists what it did in
        ``Volume.warnings``. Uneven spacing that is not a whole number of slices, two
        slices at one position, mixed sizes and cut-off files are errors either way.

    Returns
    -------
    Volume
        With ``label_names`` from an ITK-SNAP ``<stem>.label.txt`` beside the file.

    Raises
    ------
    VolumeReadError
        When the path is missing, unreadable, empty, truncated, not an image (or
        NIfTI-2), 2D, 4D or multichannel, all NaN, or constant (label maps may be all
        zero); for a DICOM series, see ``slice_gaps``.
    ValueError
        When ``slice_gaps`` is not one of the choices.
    """
    if slice_gaps not in SLICE_GAP_CHOICES:
        raise ValueError(f"slice_gaps must be one of {SLICE_GAP_CHOICES}, got {slice_gaps!r}")
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise VolumeReadError(f"{p} does not exist (no such file or folder)")
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise VolumeReadError(permission_denied(p))
    try:
        volume = _read(p, slice_gaps)
    except PermissionError as exc:
        raise VolumeReadError(permission_denied(exc.filename or p)) from exc
    except OSError as exc:
        raise VolumeReadError(f"cannot read {exc.filename or p}: {exc.strerror or exc}") from exc
    logger.info("opened %r", volume)
    return volume


def _read(p: Path, slice_gaps: str) -> Volume:
    series_id: str | None = None
    others: list[str] = []
    warnings: list[str] = []
    if p.is_dir():
        image, series_id, hint, others, warnings = read_dicom(p, None, slice_gaps)
    elif is_dicom_file(p):
        image, series_id, hint, others, warnings = read_dicom(p.parent, p, slice_gaps)
    else:
        image, hint = _read_file(p)
    _check_layout(
        p, image.GetDimension(), tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel()
    )
    image = _to_3d(image)
    array = sitk.GetArrayFromImage(image)
    name_for_heuristic = None if series_id is not None else str(p)
    is_label = series_id is None and looks_like_label_map(array, name_for_heuristic)
    _check_values(p, array, allow_constant=is_label)
    modality = _modality_from_tag(hint) or _guess_modality(array, is_label)

    label_names: dict[int, str] = {}
    sidecar = label_description_path(p) if p.is_file() and series_id is None else None
    if sidecar is not None and sidecar.is_file():
        try:
            label_names = read_label_descriptions(sidecar)
        except (OSError, ValueError) as exc:
            logger.warning("could not read label names from %s: %s", sidecar, exc)
    volume = Volume(
        array=array,
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
        path=str(p),
        modality=modality,
        label_names=label_names,
        series_id=series_id,
        other_series=others,
        warnings=warnings,
    )
    # The label-map decision was made on the full array already: keep it.
    volume.__dict__["is_label_map"] = is_label
    return volume

"""Open CT/MRI volumes: NIfTI, NRRD, MetaImage files and DICOM series folders.

Every failure becomes a :class:`~napari_medsam.io.volume.VolumeReadError` whose message
names the file and says, in plain words, what is wrong with it.

No napari or Qt imports here.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .intensity import looks_like_ct
from .label_descriptions import label_description_path, read_label_descriptions
from .volume import Volume, VolumeReadError, looks_like_label_map

logger = logging.getLogger(__name__)

__all__ = [
    "VOLUME_EXTENSIONS",
    "folder_has_dicom",
    "is_dicom_file",
    "is_volume_path",
    "read_volume",
    "volume_name",
]

#: File name endings read as single-file volumes (plus DICOM).
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
_NEEDS_3D = "napari-medsam needs a 3D volume"
_MAX_FILES_TO_SNIFF = 200
_GZIP_MAGIC = b"\x1f\x8b"


# -- sniffing ------------------------------------------------------------------------------
def _lower_name(path: Path) -> str:
    return path.name.lower()


def volume_name(path: str | os.PathLike[str]) -> str:
    """A layer name for ``path``: the file name without its volume extension."""
    p = Path(path)
    lower = p.name.lower()
    for ext in (*VOLUME_EXTENSIONS, *DICOM_EXTENSIONS):
        if lower.endswith(ext):
            return p.name[: -len(ext)]
    return p.name


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True for ``.dcm``/``.ima`` files and files with the ``DICM`` preamble marker."""
    p = Path(path)
    if _lower_name(p).endswith(DICOM_EXTENSIONS):
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(path: str | os.PathLike[str], max_files: int = _MAX_FILES_TO_SNIFF) -> bool:
    """Whether a folder directly holds at least one DICOM file (checks ``max_files``)."""
    p = Path(path)
    if not p.is_dir():
        return False
    checked = 0
    try:
        entries = os.scandir(p)
    except OSError:
        return False
    with entries:
        for entry in entries:
            if not entry.is_file():
                continue
            if is_dicom_file(entry.path):
                return True
            checked += 1
            if checked >= max_files:
                break
    return False


def is_volume_path(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_volume` should be tried on ``path`` (by name or content)."""
    p = Path(path)
    if p.is_dir():
        return folder_has_dicom(p)
    if _lower_name(p).endswith(VOLUME_EXTENSIONS + DICOM_EXTENSIONS):
        return True
    return p.is_file() and is_dicom_file(p)


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2048)
    except OSError:
        return False
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # a multi-byte character may be cut at the end of the chunk
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


# -- NIfTI integrity (SimpleITK silently zero-fills truncated NIfTI data) ---------------------
def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header + voxel bytes promised by a NIfTI-1/2 header, or None if it is not one."""
    if len(header) < 348:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (offset,) = struct.unpack(endian + "f", header[108:112])
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            (bitpix,) = struct.unpack(endian + "h", header[14:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            (offset,) = struct.unpack(endian + "q", header[168:176])
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or not math.isfinite(offset):
        return None
    voxels = math.prod(max(int(d), 1) for d in dims[1 : ndim + 1])
    return int(offset) + (voxels * int(bitpix) + 7) // 8


def _gzip_payload_size(path: Path, chunk: int = 1 << 22) -> int:
    """Decompress the whole file, returning its size; raises on truncation/corruption."""
    total = 0
    with gzip.open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return total
            total += len(block)


def _check_nifti(path: Path) -> None:
    """Raise VolumeReadError for a NIfTI file that is not NIfTI, or is truncated."""
    compressed = _lower_name(path).endswith(".gz")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if compressed and magic == _GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as fh:
                header = fh.read(540)
        except (OSError, EOFError, zlib.error) as exc:
            raise VolumeReadError(
                f"{path} is truncated or damaged: its compressed data cannot be unpacked ({exc})"
            ) from exc
    else:
        with open(path, "rb") as fh:
            header = fh.read(540)
        compressed = False
    expected = _nifti_expected_bytes(header)
    if expected is None:
        if _looks_like_text(path):
            raise VolumeReadError(
                f"{path} is a text file, not a NIfTI image (was another file renamed?)"
            )
        raise VolumeReadError(
            f"{path} is not a valid NIfTI image: it has no NIfTI header "
            "(the file is damaged or is some other kind of file)"
        )
    if not compressed:
        actual = path.stat().st_size
        if actual < expected:
            raise VolumeReadError(
                f"{path} is truncated: its header promises {expected} bytes but the file "
                f"has only {actual} (the copy or download was probably cut off)"
            )
        return
    with open(path, "rb") as fh:  # gzip trailer: uncompressed size modulo 2**32
        fh.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", fh.read(4))
    if isize == expected % (1 << 32):
        return
    try:  # mismatch: either truncated or a multi-member gzip; decompress to be sure
        actual = _gzip_payload_size(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeReadError(
            f"{path} is truncated or damaged: the compressed data ends early or is "
            f"corrupt ({exc}); the copy or download was probably cut off"
        ) from exc
    if actual < expected:
        raise VolumeReadError(
            f"{path} is truncated: its header promises {expected} bytes of image data "
            f"but it unpacks to only {actual}"
        )


def _nifti_all_nan(path: Path) -> bool:
    """Whether a float NIfTI file holds only NaN/inf (which SimpleITK reads as zeros).

    The NIfTI library behind SimpleITK replaces non-finite floats by 0, so an all-NaN
    file would look like a constant one; this looks at the stored values instead.
    Only called on the (rare) constant-volume error path.
    """
    opener = gzip.open if _lower_name(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error):
        return False
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", raw[:4])
        if sizeof_hdr == 348:
            (datatype,) = struct.unpack(endian + "h", raw[70:72])
            offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            break
        if sizeof_hdr == 540:
            (datatype,) = struct.unpack(endian + "h", raw[12:14])
            (offset,) = struct.unpack(endian + "q", raw[168:176])
            break
    else:
        return False
    kinds = {16: "f4", 64: "f8"}  # NIfTI DT_FLOAT32, DT_FLOAT64
    if datatype not in kinds:
        return False
    values = np.frombuffer(raw, dtype=endian + kinds[datatype], offset=offset)
    return values.size > 0 and not np.isfinite(values).any()


# -- SimpleITK error translation -----------------------------------------------------------
def _sitk_detail(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception thrown", "/"))]
    text = (useful or lines or [type(exc).__name__])[-1]
    return text.replace("sitk::ERROR: ", "")[:300]


def _translate_sitk_error(path: Path, exc: Exception) -> VolumeReadError:
    detail = _sitk_detail(exc)
    if "Unable to determine ImageIO reader" in str(exc):
        if _looks_like_text(path):
            return VolumeReadError(
                f"{path} is a text file, not a medical image (was another file renamed?)"
            )
        return VolumeReadError(
            f"{path} is not a medical image napari-medsam can read (NIfTI .nii/.nii.gz, "
            "NRRD .nrrd/.nhdr, MetaImage .mha/.mhd or a DICOM series), or it is damaged"
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
        if low == 0 and _lower_name(path).endswith((".nii", ".nii.gz")) and _nifti_all_nan(path):
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


# -- DICOM ---------------------------------------------------------------------------------
def _series_label(series_id: str) -> str:
    return series_id or "<no SeriesInstanceUID>"


def _read_dicom(folder: Path, chosen: Path | None) -> tuple[sitk.Image, str, str | None, list[str]]:
    """Read a DICOM series: the one holding ``chosen``, else the largest in ``folder``.

    Returns the image, the series id, the modality tag and the other series' ids.
    """
    where = chosen if chosen is not None else folder
    if chosen is None and not any(folder.iterdir()):
        raise VolumeReadError(f"{folder} is an empty folder: there is no DICOM series to open")
    series_reader = sitk.ImageSeriesReader()
    try:
        ids = list(series_reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise VolumeReadError(f"{where}: the DICOM folder could not be scanned ({exc})") from exc
    if not ids:
        if chosen is not None:
            raise VolumeReadError(f"{chosen} is not a readable DICOM image file")
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        volumes = [n for n in files if n.lower().endswith(VOLUME_EXTENSIONS)]
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir())[:50]
        dicom_subfolders = [p.name for p in subfolders if folder_has_dicom(p, max_files=20)]
        hint = ""
        if volumes:
            hint = f"; it holds {', '.join(volumes[:3])}: open that file instead"
        elif dicom_subfolders:
            hint = f"; its subfolders {', '.join(dicom_subfolders[:3])} do: open one of those"
        raise VolumeReadError(
            f"{folder} contains no DICOM files ({len(files)} files, none of them DICOM){hint}"
        )
    series = {sid: list(series_reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in ids}
    if chosen is not None:
        target = os.path.realpath(chosen)
        matches = [s for s in ids if target in {os.path.realpath(f) for f in series[s]}]
        if not matches:
            raise VolumeReadError(f"{chosen} is not part of any DICOM series GDCM can read")
        series_id = matches[0]
    else:
        series_id = max(ids, key=lambda s: len(series[s]))
    others = [s for s in ids if s != series_id]
    if others:
        logger.warning(
            "%s holds %d DICOM series; opened %s (%d files), not: %s",
            folder,
            len(ids),
            _series_label(series_id),
            len(series[series_id]),
            ", ".join(f"{_series_label(s)} ({len(series[s])} files)" for s in others),
        )
    files = series[series_id]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)  # GDCM sorted them by position along the slice normal
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(
            f"{where}: DICOM series {_series_label(series_id)} ({len(files)} files) could not be "
            f"read ({_sitk_detail(exc)})"
        ) from exc
    tag = "0008|0060"
    modality = reader.GetMetaData(0, tag) if reader.HasMetaDataKey(0, tag) else None
    return image, series_id, modality, others


# -- single files --------------------------------------------------------------------------
def _read_file(path: Path) -> tuple[sitk.Image, str | None]:
    """Read one NIfTI/NRRD/MetaImage file; returns the image and a modality hint."""
    if path.stat().st_size == 0:
        raise VolumeReadError(f"{path} is an empty file (0 bytes)")
    if _lower_name(path).endswith((".nii", ".nii.gz")):
        _check_nifti(path)
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
def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Open a 3D CT/MRI volume or label map.

    Parameters
    ----------
    path : path-like
        A NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
        (``.mha``, ``.mhd``) file; a folder holding a DICOM series; or one file of a
        DICOM series (its whole series is opened). A folder with several series opens
        the one with most files; the others are logged and listed in
        ``Volume.other_series``. DICOM slices are ordered by position, not file name.

    Returns
    -------
    Volume
        With ``label_names`` from an ITK-SNAP ``<stem>.label.txt`` beside the file.

    Raises
    ------
    VolumeReadError
        When the path is missing, empty, truncated, not an image, 2D, 4D or
        multichannel, all NaN, or constant (label maps may be all zero).
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise VolumeReadError(f"{p} does not exist (no such file or folder)")
    series_id: str | None = None
    others: list[str] = []
    if p.is_dir():
        image, series_id, hint, others = _read_dicom(p, None)
    elif is_dicom_file(p):
        image, series_id, hint, others = _read_dicom(p.parent, p)
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
    )
    # The label-map decision was made on the full array already: keep it.
    volume.__dict__["is_label_map"] = is_label
    logger.info("opened %r", volume)
    return volume

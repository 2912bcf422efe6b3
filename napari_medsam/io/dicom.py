"""Open a DICOM series folder, and refuse (or repair) series GDCM would open wrongly.

GDCM, inside SimpleITK, sorts the slices by position and reads them, but silently drops
files it cannot read, stacks a series with a missing slice on a uniform (wrong) spacing,
and needs gigabytes to scan a slice whose compressed pixel data was cut off. Before
reading, every file's header is walked (:mod:`.dicom_header`, no pixels) and the series
checked: cut-off or unreadable files, mixed image sizes or orientations, two slices at
one position, gaps and uneven spacing each give a :class:`VolumeReadError` naming the
files. With ``slice_gaps="fill"``, missing slices are inserted as blank slices at their
true positions (when each gap is a whole number of slices) and unreadable files are
reported as warnings instead.

No napari or Qt imports here.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from ._common import VOLUME_EXTENSIONS, folder_has_dicom, sitk_detail
from .dicom_header import DicomHeader, FolderScan, scan_folder, sitk_header
from .volume import VolumeReadError

logger = logging.getLogger(__name__)

__all__ = ["SLICE_GAP_CHOICES", "DicomSeries", "read_dicom"]

#: Values of ``read_volume(..., slice_gaps=...)``.
SLICE_GAP_CHOICES = ("error", "fill")
_OPEN_ANYWAY = (
    'open it anyway with read_volume(path, slice_gaps="fill") or, in napari, by starting '
    "napari with the environment variable NAPARI_MEDSAM_SLICE_GAPS=fill"
)
_MAX_LISTED = 5
_ORIENTATION_TOLERANCE = 1e-3
_STEP_TOLERANCE = 0.01  # relative to the median step ...
_STEP_TOLERANCE_MM = 0.02  # ... but never below this (positions are often rounded)


class DicomSeries(NamedTuple):
    """What :func:`read_dicom` returns."""

    image: sitk.Image
    series_id: str
    modality: str | None
    other_series: list[str]
    warnings: list[str]


@dataclass
class _Stack:
    """Slice positions (mm along the slice normal, in file order) and their gaps."""

    positions: list[float]
    step: float
    gaps: list[tuple[int, int]]  # (i, k): files[i] -> files[i + 1] spans k steps (k >= 2)
    order: list[int]  # reading order (indices into GDCM's list); positions follow it


def _series_label(series_id: str) -> str:
    return series_id or "<no SeriesInstanceUID>"


def _mm(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _listed(names: list[str]) -> str:
    more = len(names) - _MAX_LISTED
    return ", ".join(names[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _cut_off_message(folder: Path, cut_off: dict[str, str]) -> str:
    if len(cut_off) == 1:
        ((name, reason),) = cut_off.items()
        return (
            f"{folder / name} {reason} (the copy or download was probably cut off); copy it "
            f"again, or remove it from {folder}"
        )
    details = "; ".join(f"{name} {reason}" for name, reason in list(cut_off.items())[:3])
    return (
        f"{len(cut_off)} DICOM files in {folder} are truncated or damaged: {details}"
        f"{'; ...' if len(cut_off) > 3 else ''} (the copy was probably cut off); copy them "
        "again, or remove them from the folder"
    )


def _unreadable_text(folder: Path, unreadable: dict[str, str]) -> str:
    names = [f"{name} ({reason})" for name, reason in unreadable.items()]
    return f"{_files(len(names))} in {folder} could not be read as DICOM: {_listed(names)}"


# -- series checks -------------------------------------------------------------------------
def _check_sizes(where: str, headers: list[DicomHeader]) -> None:
    sizes = [(h.columns, h.rows) for h in headers]
    counts = Counter(s for s in sizes if None not in s)
    if len(counts) < 2:
        return

    def group(size: tuple[int | None, int | None], n: int) -> str:
        return f"{_files(n)} {'is' if n == 1 else 'are'} {size[0]}x{size[1]}"

    (common, n_common), *rest = counts.most_common()
    parts = [group(common, n_common)]
    for size, n in rest:
        odd = [Path(h.path).name for h, s in zip(headers, sizes, strict=True) if s == size]
        parts.append(f"{group(size, n)}: {_listed(odd)}")
    raise VolumeReadError(
        f"{where} mixes image sizes: {', '.join(parts)}; napari-medsam needs every slice of a "
        "series to have the same size (remove the odd files, or open them separately)"
    )


def _slice_positions(where: str, headers: list[DicomHeader]) -> np.ndarray | None:
    """Positions along the slice normal (mm), or None when the headers do not tell."""
    if any(h.frames > 1 for h in headers):
        return None  # multi-frame files keep per-frame positions elsewhere
    if any(h.position is None or h.orientation is None for h in headers):
        logger.debug("%s: some slices have no position or orientation; spacing unchecked", where)
        return None
    orientation = np.array([h.orientation for h in headers], dtype=float)
    odd = np.abs(orientation - orientation[0]).max(axis=1) > _ORIENTATION_TOLERANCE
    if odd.any():
        names = [Path(h.path).name for h, o in zip(headers, odd, strict=True) if o]
        raise VolumeReadError(
            f"{where} mixes slice orientations: {_files(len(names))} of {len(headers)} differ "
            f"from {Path(headers[0].path).name}: {_listed(names)} (a localizer or a reformat "
            "in the series?); napari-medsam needs parallel slices"
        )
    normal = np.cross(orientation[0, :3], orientation[0, 3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return None
    return np.array([h.position for h in headers], dtype=float) @ (normal / length)


def _check_spacing(where: str, headers: list[DicomHeader]) -> _Stack | None:
    """Raise for duplicate positions and uneven spacing; return the gaps (k steps each).

    The slices keep GDCM's order when it runs along the normal (either way); when it
    does not (GDCM falls back to file names when it cannot sort), they are sorted here.
    """
    if len(headers) < 2:
        return None
    found = _slice_positions(where, headers)
    if found is None:
        return None
    names = [Path(h.path).name for h in headers]
    order = np.argsort(found, kind="stable")
    ascending = np.diff(found[order])
    apart = ascending[ascending > _STEP_TOLERANCE_MM]
    step = float(np.median(apart)) if apart.size else 0.0
    tolerance = max(_STEP_TOLERANCE * step, _STEP_TOLERANCE_MM)
    same = [i for i, s in enumerate(ascending) if s <= tolerance]
    if same:
        pairs = [
            f"{names[order[i]]} and {names[order[i + 1]]} at {_mm(found[order[i]])} mm"
            for i in same
        ]
        raise VolumeReadError(
            f"{where} has two slices at the same position: {_listed(pairs)} (along the slice "
            "normal); a file was copied twice, or two acquisitions share the series: remove "
            "the extra files"
        )
    steps = np.diff(found)
    if np.all(steps > 0) or np.all(steps < 0):
        order = np.arange(len(found))
    positions = found[order]
    sign = 1.0 if positions[-1] > positions[0] else -1.0
    gaps, uneven = [], []
    for i, s in enumerate(sign * np.diff(positions)):
        k = int(round(s / step))
        if k >= 1 and abs(s - k * step) <= tolerance:
            if k >= 2:
                gaps.append((i, k))
        else:
            uneven.append(
                f"{names[order[i]]} ({_mm(positions[i])} mm) -> {names[order[i + 1]]} "
                f"({_mm(positions[i + 1])} mm) is {_mm(s)} mm"
            )
    if uneven:
        raise VolumeReadError(
            f"{where} is unevenly spaced: {_listed(uneven)}, while the other slices are "
            f"{_mm(step)} mm apart (positions along the slice normal); napari-medsam needs "
            "evenly spaced slices, and these gaps are not a whole number of missing slices, "
            "so they cannot be filled either: resample or re-export the series first"
        )
    return _Stack(
        positions=[float(p) for p in positions],
        step=sign * step,
        gaps=gaps,
        order=[int(i) for i in order],
    )


def _gap_text(stack: _Stack, names: list[str]) -> str:
    parts = []
    for i, k in stack.gaps:
        missing = [stack.positions[i] + j * stack.step for j in range(1, k)]
        parts.append(
            f"{' and '.join(_mm(m) + ' mm' for m in missing)} (between {names[i]} at "
            f"{_mm(stack.positions[i])} mm and {names[i + 1]} at {_mm(stack.positions[i + 1])} mm)"
        )
    count = sum(k - 1 for _, k in stack.gaps)
    return (
        f"{count} slice{'s are' if count > 1 else ' is'} missing at {_listed(parts)} along the "
        f"slice normal; the other slices are {_mm(abs(stack.step))} mm apart"
    )


def _fill_gaps(image: sitk.Image, headers: list[DicomHeader], stack: _Stack) -> sitk.Image:
    """Insert blank slices (the volume's minimum) at the missing positions."""
    origin = np.array(image.GetOrigin())
    axis = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    along = np.array([(np.array(h.position) - origin) @ axis for h in headers])
    index = np.rint(along / abs(stack.step)).astype(int)
    if index[0] != 0 or np.any(np.diff(index) < 1):
        raise VolumeReadError(
            f"{headers[0].path}: the slices could not be placed on a regular grid to fill "
            "the missing ones"
        )
    array = sitk.GetArrayViewFromImage(image)
    filled = np.full((int(index[-1]) + 1, *array.shape[1:]), array.min(), dtype=array.dtype)
    filled[index] = array
    out = sitk.GetImageFromArray(filled)
    spacing = list(image.GetSpacing())
    spacing[2] = float(along[-1] / index[-1])
    out.SetSpacing(spacing)
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    return out


def _header(scan: FolderScan, path: str) -> DicomHeader:
    """The walked header of a file of the series, else SimpleITK's reading of it."""
    header = scan.headers.get(os.path.basename(path))
    return header if header is not None and header.walked else sitk_header(path)


# -- reading -------------------------------------------------------------------------------
def _no_series_error(folder: Path, chosen: Path | None, scan: FolderScan) -> VolumeReadError:
    broken = {**scan.unreadable, **scan.not_dicom}
    if broken:
        return VolumeReadError(_unreadable_text(folder, broken))
    if chosen is not None:
        return VolumeReadError(f"{chosen} is not a readable DICOM image file")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    volumes = [n for n in files if n.lower().endswith(VOLUME_EXTENSIONS)]
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())[:50]
    dicom_subfolders = [p.name for p in subfolders if folder_has_dicom(p, max_files=20)]
    hint = ""
    if volumes:
        hint = f"; it holds {', '.join(volumes[:3])}: open that file instead"
    elif dicom_subfolders:
        hint = f"; its subfolders {', '.join(dicom_subfolders[:3])} do: open one of those"
    return VolumeReadError(
        f"{folder} contains no DICOM files ({len(files)} files, none of them DICOM){hint}"
    )


def _choose_series(chosen: Path | None, series: dict[str, list[str]], scan: FolderScan) -> str:
    """The series holding ``chosen``, else the one with most files."""
    if chosen is None:
        return max(series, key=lambda s: len(series[s]))
    target = os.path.realpath(chosen)
    for series_id, files in series.items():
        if target in {os.path.realpath(f) for f in files}:
            return series_id
    reason = scan.unreadable.get(chosen.name) or scan.not_dicom.get(chosen.name)
    if reason:
        raise VolumeReadError(f"{chosen} could not be read as DICOM ({reason})")
    raise VolumeReadError(f"{chosen} is not part of any DICOM series GDCM can read")


def _execute(files: list[str], quiet: bool) -> tuple[sitk.Image, sitk.ImageSeriesReader]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)  # GDCM sorted them by position along the slice normal
    reader.MetaDataDictionaryArrayUpdateOn()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    if quiet:  # ITK's "non uniform sampling" line on stderr: the gaps are reported already
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return reader.Execute(), reader
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


# Long on purpose: the checks of one read in the order they must run (folder, cut-off files,
# series choice, geometry, gaps), each failing with its own message; the checks themselves
# are functions of this module and of dicom_header.
def read_dicom(folder: Path, chosen: Path | None, slice_gaps: str = "error") -> DicomSeries:
    """Read a DICOM series: the one holding ``chosen``, else the largest in ``folder``.

    See the module docstring for the checks; ``slice_gaps`` is ``"error"`` or ``"fill"``.
    """
    where = chosen if chosen is not None else folder
    if chosen is None and not any(folder.iterdir()):
        raise VolumeReadError(f"{folder} is an empty folder: there is no DICOM series to open")
    scan = scan_folder(folder)
    if scan.cut_off:  # before GDCM: scanning such a file costs it gigabytes
        raise VolumeReadError(_cut_off_message(folder, scan.cut_off))
    series_reader = sitk.ImageSeriesReader()
    try:
        ids = list(series_reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise VolumeReadError(f"{where}: the DICOM folder could not be scanned ({exc})") from exc
    if not ids:
        raise _no_series_error(folder, chosen, scan)
    series = {sid: list(series_reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in ids}
    series_id = _choose_series(chosen, series, scan)
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
    in_a_series = {os.path.basename(f) for fs in series.values() for f in fs}
    unreadable = {**scan.unreadable}
    unreadable.update((n, r) for n, r in scan.not_dicom.items() if n not in in_a_series)
    label = f"{where}: DICOM series {_series_label(series_id)} ({_files(len(files))})"
    headers = [_header(scan, f) for f in files]
    _check_sizes(label, headers)
    stack = _check_spacing(label, headers)
    if stack is not None and stack.order != list(range(len(files))):
        logger.info("%s: GDCM did not sort the slices by position; sorted them here", label)
        files = [files[i] for i in stack.order]
        headers = [headers[i] for i in stack.order]
    gaps = stack is not None and bool(stack.gaps)
    names = [os.path.basename(f) for f in files]
    warnings: list[str] = []
    if unreadable:
        text = _unreadable_text(folder, unreadable)
        if slice_gaps != "fill":
            them = "them" if len(unreadable) > 1 else "it"
            gap = f"; without {them} {_gap_text(stack, names)}" if gaps else ""
            raise VolumeReadError(f"{text}{gap}. Fix or remove {them}, or {_OPEN_ANYWAY}")
        warnings.append(f"{text}; opened the other {_files(len(files))} of the series")
    if gaps:
        text = f"{label}: {_gap_text(stack, names)}"
        if scan.other:  # was a slice overwritten by something else?
            verb = "is" if len(scan.other) == 1 else "are"
            text += f" ({folder} also holds {_files(len(scan.other))} that {verb} not DICOM: "
            text += f"{_listed(scan.other)})"
        if slice_gaps != "fill":
            raise VolumeReadError(
                f"{text}. Opened as they are, the slices would be stacked on a wrong uniform "
                f"spacing; {_OPEN_ANYWAY}: blank slices are then inserted at the missing "
                "positions"
            )
    try:
        image, reader = _execute(files, quiet=gaps)
    except RuntimeError as exc:
        raise VolumeReadError(
            f"{where}: DICOM series {_series_label(series_id)} ({len(files)} files) could not be "
            f"read ({sitk_detail(exc)})"
        ) from exc
    if gaps:
        image = _fill_gaps(image, headers, stack)
        warnings.append(
            f"{text}: filled with blank slices at those positions (they hold no image; do not "
            "segment them)"
        )
    for text in warnings:
        logger.warning("%s", text)
    tag = "0008|0060"
    modality = reader.GetMetaData(0, tag) if reader.HasMetaDataKey(0, tag) else None
    return DicomSeries(image, series_id, modality, others, warnings)

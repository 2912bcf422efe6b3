"""The :class:`Volume`: a 3D array plus the geometry that places it in the patient.

Axis conventions
----------------
* ``array`` is in numpy (z, y, x) order, as ``SimpleITK.GetArrayFromImage`` gives it.
* ``spacing`` / ``origin`` / ``direction`` are in SimpleITK (x, y, z) order; ``direction``
  is the 3x3 direction cosine matrix flattened row-major (9 floats).
* ``scale`` / ``translate`` are the napari (z, y, x) versions (reversed spacing/origin).

No napari or Qt imports here.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = [
    "IDENTITY_DIRECTION",
    "Volume",
    "VolumeReadError",
    "VolumeWriteError",
    "looks_like_label_map",
]

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# A label map has at most this many distinct values (in the sample that is examined) ...
_MAX_LABELS = 1000
# ... and at least this many voxels per distinct value.
_MIN_VOXELS_PER_LABEL = 100
# In a label map neighbouring voxels are nearly always equal (they only differ on region
# borders: < 25 % in the real masks), in a scan they nearly always differ (> 75 %).
_MAX_NEIGHBOUR_CHANGE = 0.5
# File-name words that mark a label map: "liver_seg", "label", "brain-mask", "labels01"
# ("totalseg_ct" or "unmasked" do not count: the word must start with the marker).
_LABEL_WORD = re.compile(r"(?:^|[^a-z])(label|seg|mask)", re.IGNORECASE)
_SAMPLE_SLICES = 24


class VolumeReadError(ValueError):
    """A file or folder could not be opened as a 3D volume; the message says why."""


class VolumeWriteError(ValueError):
    """A label map could not be written; the message says why. Nothing was written."""


def _floats(values: Any, n: int, what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != n:
        raise ValueError(f"{what} needs {n} numbers, got {len(out)}: {values!r}")
    return out


def _label_name_keys(names: Mapping[Any, Any] | None) -> dict[int, str]:
    """``{int: str}`` from a mapping whose keys may be strings (after a JSON round trip)."""
    return {int(k): str(v) for k, v in (names or {}).items()}


def _sample_slices(array: np.ndarray) -> np.ndarray:
    """Up to ``_SAMPLE_SLICES`` whole, evenly spaced z-slices (neighbourhoods kept)."""
    if array.shape[0] <= _SAMPLE_SLICES:
        return array
    idx = np.linspace(0, array.shape[0] - 1, _SAMPLE_SLICES).round().astype(int)
    return array[np.unique(idx)]


def _integral(array: np.ndarray) -> bool:
    """Integer dtype, bool, or float holding only whole numbers (no NaN)."""
    if array.dtype.kind in "biu":
        return True
    if array.dtype.kind != "f":
        return False
    sample = _sample_slices(array)
    return bool(np.all(np.isfinite(sample)) and np.all(np.mod(sample, 1) == 0))


def looks_like_label_map(array: np.ndarray, path: str | None = None) -> bool:
    """Guess whether ``array`` is a label map (segmentation) rather than a scan.

    True when the values are whole numbers >= 0 and either the file name has a word
    starting with ``label``, ``seg`` or ``mask`` (``liver_seg.nii.gz``), or the array
    has integer dtype, few distinct values (<= 1000 and far fewer than voxels) and
    neighbouring voxels are mostly equal (scans with few grey levels, e.g. 8-bit MRI,
    fail this last test). A constant array counts only when it is all zero (an empty
    segmentation) or named as a label map: a constant scan is not one.

    Parameters
    ----------
    array : numpy.ndarray
        The (z, y, x) volume.
    path : str, optional
        The file it came from; only its name is used.
    """
    arr = np.asarray(array)
    if arr.ndim != 3 or arr.size == 0 or not _integral(arr):
        return False
    sample = _sample_slices(arr)
    if arr.dtype.kind != "b" and sample.min() < 0:
        return False
    if path and _LABEL_WORD.search(Path(path).name):
        return True
    if arr.dtype.kind not in "biu":
        return False
    # Cheap neighbour test first (it rejects scans), the unique count only after it.
    changed = sample[:, :, 1:] != sample[:, :, :-1]
    touched = (sample[:, :, 1:] != 0) | (sample[:, :, :-1] != 0)
    n_touched = int(np.count_nonzero(touched))
    if n_touched and np.count_nonzero(changed & touched) / n_touched >= _MAX_NEIGHBOUR_CHANGE:
        return False
    n_unique = np.unique(sample).size
    if n_unique == 1 and sample.flat[0] != 0 and arr.min() == arr.max():
        return False  # constant and not zero: a blank scan, not an empty segmentation
    return n_unique <= _MAX_LABELS and n_unique * _MIN_VOXELS_PER_LABEL <= sample.size


@dataclass(eq=False)
class Volume:
    """A 3D scan or label map with its physical geometry.

    Parameters
    ----------
    array : numpy.ndarray
        Voxel data in (z, y, x) order.
    spacing, origin : tuple of 3 float
        Voxel size (mm) and the physical position of voxel (0, 0, 0), SimpleITK (x, y, z).
    direction : tuple of 9 float
        Direction cosines, SimpleITK row-major.
    path : str, optional
        Where it was read from.
    modality : str
        ``"CT"``, ``"MR"`` or ``"unknown"``.
    label_names : dict of int to str
        Label value -> name (from an ITK-SNAP ``.label.txt`` sidecar when present).
    series_id : str, optional
        DICOM SeriesInstanceUID of the opened series (``""`` when the files have none).
    other_series : list of str
        Other DICOM series found in the same folder that were not opened.
    warnings : list of str
        What the reader had to repair or leave out to open it (e.g. blank slices filled
        in for missing DICOM slices, unreadable files); empty for a clean read. The
        napari reader shows them as notifications.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    path: str | None = None
    modality: str = "unknown"
    label_names: dict[int, str] = field(default_factory=dict)
    series_id: str | None = None
    other_series: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D (z, y, x) array, got shape {self.array.shape}")
        self.spacing = _floats(self.spacing, 3, "spacing")  # type: ignore[assignment]
        self.origin = _floats(self.origin, 3, "origin")  # type: ignore[assignment]
        self.direction = _floats(self.direction, 9, "direction")
        if any(not math.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        self.path = None if self.path is None else str(self.path)
        self.label_names = _label_name_keys(self.label_names)
        self.other_series = [str(s) for s in self.other_series]
        self.warnings = [str(w) for w in self.warnings]

    # -- napari geometry -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape, (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def scale(self) -> tuple[float, float, float]:
        """Voxel size in napari (z, y, x) order."""
        return tuple(reversed(self.spacing))  # type: ignore[return-value]

    @property
    def translate(self) -> tuple[float, float, float]:
        """Origin in napari (z, y, x) order."""
        return tuple(reversed(self.origin))  # type: ignore[return-value]

    @property
    def display_signs(self) -> tuple[int, int, int] | None:
        """Signs of the direction's diagonal, (x, y, z), when the direction is axis-aligned.

        None for a direction that permutes or tilts the axes (oblique or non-axial
        acquisitions): napari then shows the array as stored.
        """
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        diagonal = np.diag(d)
        if np.abs(d - np.diag(diagonal)).max() > 1e-3 or np.abs(np.abs(diagonal) - 1).max() > 1e-3:
            return None
        return tuple(int(v) for v in np.sign(diagonal))  # type: ignore[return-value]

    @property
    def display_scale(self) -> tuple[float, float, float]:
        """napari (z, y, x) ``scale`` that shows axial slices the way radiologists read them.

        In-plane, world coordinates are the physical LPS ones, (P, L): anterior is up and the
        patient's left is on the right of the screen, whichever way the file stores its rows
        and columns (negative entries flip an axis, napari's documented way; the data stay as
        stored and the metadata keep the true geometry). The slice axis keeps the file's
        order (positive spacing), so that napari's slider, the widget and the command line
        number slices alike; :mod:`napari_medsam._orientation` keeps superior up in coronal
        and sagittal views. A direction that is not axis-aligned falls back to :attr:`scale`.
        """
        signs = self.display_signs
        if signs is None:
            return self.scale
        sx, sy, _ = signs
        spx, spy, spz = self.spacing
        return (spz, sy * spy, sx * spx)

    @property
    def display_translate(self) -> tuple[float, float, float]:
        """napari (z, y, x) ``translate`` that goes with :attr:`display_scale`."""
        return self.translate

    @property
    def affine(self) -> np.ndarray:
        """4x4 index (z, y, x) -> physical (z, y, x) matrix, direction included.

        ``scale``/``translate`` ignore the direction cosines (napari shows the array
        axis-aligned); this affine gives true physical coordinates when needed.
        """
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        linear_xyz = d @ np.diag(self.spacing)
        flip = np.eye(3)[::-1]
        out = np.eye(4)
        out[:3, :3] = flip @ linear_xyz @ flip
        out[:3, 3] = self.translate
        return out

    @functools.cached_property
    def is_label_map(self) -> bool:
        """Whether this looks like a segmentation rather than a scan.

        See :func:`looks_like_label_map`. Computed once and cached.
        """
        return looks_like_label_map(self.array, self.path)

    # -- metadata round trip ----------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """JSON-friendly geometry for ``layer.metadata``.

        Keys: ``spacing``, ``origin``, ``direction`` (lists, SimpleITK order), ``shape``
        (z, y, x), ``path``, ``modality``, ``label_names`` (int keys; ``json.dumps``
        turns them into strings and :meth:`from_metadata` accepts both),
        ``series_id``, ``other_series`` and ``warnings``.
        """
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "shape": list(self.array.shape),
            "path": self.path,
            "modality": self.modality,
            "label_names": dict(self.label_names),
            "series_id": self.series_id,
            "other_series": list(self.other_series),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_metadata(cls, array: np.ndarray, metadata: Mapping[str, Any]) -> Volume:
        """Rebuild a Volume from an array and a dict made by :meth:`metadata`.

        Missing keys fall back to unit spacing, zero origin and identity direction.
        """
        meta = dict(metadata or {})
        return cls(
            array=np.asarray(array),
            spacing=meta.get("spacing") or (1.0, 1.0, 1.0),
            origin=meta.get("origin") or (0.0, 0.0, 0.0),
            direction=meta.get("direction") or IDENTITY_DIRECTION,
            path=meta.get("path"),
            modality=meta.get("modality") or "unknown",
            label_names=_label_name_keys(meta.get("label_names")),
            series_id=meta.get("series_id"),
            other_series=list(meta.get("other_series") or []),
            warnings=list(meta.get("warnings") or []),
        )

    # -- SimpleITK ----------------------------------------------------------------------
    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of ``array`` (default: this volume's) with this geometry.

        Raises
        ------
        ValueError
            When ``array`` does not have this volume's shape.
        """
        data = self.array if array is None else np.asarray(array)
        if data.shape != self.array.shape:
            raise ValueError(
                f"array shape {data.shape} does not match the volume shape {self.array.shape}"
            )
        if data.dtype.kind == "b":
            data = data.astype(np.uint8)
        image = sitk.GetImageFromArray(data)
        self.copy_geometry_to(image)
        return image

    def copy_geometry_to(self, image: sitk.Image) -> sitk.Image:
        """Set ``image``'s spacing, origin and direction to this volume's (in place)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, **kwargs: Any) -> Volume:
        """A Volume from a 3D, single-channel SimpleITK image (array copied)."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("from_sitk needs a 3D single-channel image")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.array.shape}, dtype={self.array.dtype}, "
            f"spacing={tuple(round(s, 4) for s in self.spacing)}, modality={self.modality!r}, "
            f"path={self.path!r})"
        )

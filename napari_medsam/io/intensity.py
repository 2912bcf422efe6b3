"""Intensity windows: map CT Hounsfield units or MR signal to 8-bit grey values.

The segmentation model and the viewer both need a fixed grey-value range. For CT
that is a radiology window (level/width in HU); for MRI, whose units are arbitrary,
it is the 0.5-99.5 percentile range of the non-zero foreground.

Everything here is plain numpy: no napari, no Qt.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CT_WINDOWS",
    "IntensityMapping",
    "auto_mapping",
    "ct_window",
    "looks_like_ct",
    "mapping_from_name",
    "mapping_names",
    "subsample",
    "window_from_level_width",
]

#: Standard radiology windows as ``name -> (level, width)`` in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "soft_tissue": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

#: Window used when a volume is recognised as CT and the user has not chosen one.
DEFAULT_CT_WINDOW = "abdomen"
MR_PERCENTILE = "mr_percentile"
MINMAX = "minmax"
#: Percentiles of the non-zero foreground used for MRI normalisation.
MR_PERCENTILES = (0.5, 99.5)

# Voxels at or below this value count as air (or as the scanner's padding outside the
# reconstruction circle, e.g. -2048 or -3024).
_AIR_HU = -800.0
# A CT volume has at least this fraction of its voxels in air (outside the body, lungs,
# bowel gas). The real CT cases in the test data have 30-60 %; MRI never goes below -500.
_MIN_AIR_FRACTION = 0.02
_MAX_SAMPLE = 1_000_000
# Voxels per chunk in apply(): bounds the float32 scratch memory to a few MB.
_CHUNK = 1 << 20


def _fmt(value: float) -> str:
    """Short, run-to-run stable text for a number (used in cache keys)."""
    text = f"{float(value):.6g}"
    return "0" if text == "-0" else text


@dataclass(frozen=True)
class IntensityMapping:
    """Clip to ``[low, high]`` (original units) and scale linearly to 0..255.

    Parameters
    ----------
    name : str
        A CT window name from :data:`CT_WINDOWS`, ``"mr_percentile"``, ``"minmax"`` or
        any custom name.
    low, high : float
        The range, in the volume's own units (HU for CT), that maps to 0 and 255.
    """

    name: str
    low: float
    high: float

    def __post_init__(self) -> None:
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"intensity range must be finite, got low={low}, high={high}")
        if high <= low:
            raise ValueError(f"intensity range needs high > low, got low={low}, high={high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def contrast_limits(self) -> tuple[float, float]:
        """``(low, high)``, ready for a napari image layer's ``contrast_limits``."""
        return (self.low, self.high)

    @property
    def key(self) -> str:
        """Short string identifying this mapping, stable across runs (for cache keys).

        Examples: ``"ct_window:abdomen:-160:240"``, ``"mr_percentile:12:833"``.
        """
        prefix = f"ct_window:{self.name}" if self.name in CT_WINDOWS else self.name
        return f"{prefix}:{_fmt(self.low)}:{_fmt(self.high)}"

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Map ``array`` to uint8 (0..255): clip to ``[low, high]``, then scale.

        The work is done chunk by chunk in float32, so no float64 (or full-size
        float32) copy of the volume is ever made. NaN becomes 0.

        Parameters
        ----------
        array : numpy.ndarray
            Any real-valued array (any shape).

        Returns
        -------
        numpy.ndarray
            uint8 array with the shape of ``array``.
        """
        src = np.asarray(array)
        if src.dtype.kind not in "biuf":
            raise TypeError(f"cannot map an array of dtype {src.dtype} to grey values")
        out = np.empty(src.shape, dtype=np.uint8)
        flat_src = src.reshape(-1)  # a view for contiguous input, one copy otherwise
        flat_out = out.reshape(-1)
        low = np.float32(self.low)
        scale = np.float32(255.0 / (self.high - self.low))
        chunk = np.empty(min(_CHUNK, flat_src.size), dtype=np.float32)
        for start in range(0, flat_src.size, _CHUNK):
            piece = flat_src[start : start + _CHUNK]
            buf = chunk[: piece.size]
            buf[...] = piece  # cast into the float32 scratch buffer
            np.subtract(buf, low, out=buf)
            np.multiply(buf, scale, out=buf)
            np.clip(buf, 0.0, 255.0, out=buf)
            np.rint(buf, out=buf)
            if src.dtype.kind == "f":
                buf[np.isnan(buf)] = 0.0
            flat_out[start : start + piece.size] = buf
        return out


def ct_window(name: str) -> IntensityMapping:
    """The :class:`IntensityMapping` for a preset in :data:`CT_WINDOWS`."""
    key = _normalise_name(name)
    if key not in CT_WINDOWS:
        raise ValueError(
            f"unknown CT window {name!r}; valid windows: {', '.join(sorted(CT_WINDOWS))}"
        )
    level, width = CT_WINDOWS[key]
    return IntensityMapping(key, level - width / 2.0, level + width / 2.0)


def subsample(array: np.ndarray, max_voxels: int = _MAX_SAMPLE) -> np.ndarray:
    """A deterministic, evenly strided subsample of at most about ``max_voxels`` values.

    The same array always gives the same sample, so statistics (and cache keys built
    from them) are stable across runs.
    """
    arr = np.asarray(array)
    if arr.size <= max_voxels:
        return arr.reshape(-1)
    step = max(1, math.ceil((arr.size / max_voxels) ** (1.0 / arr.ndim)))
    sample = arr[(slice(None, None, step),) * arr.ndim]
    return sample.reshape(-1)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)] if values.dtype.kind == "f" else values


def looks_like_ct(array: np.ndarray) -> bool:
    """Guess whether ``array`` holds CT Hounsfield units.

    A CT volume has air near -1000 HU: its minimum is below about -500 and a clear
    fraction of voxels (outside the body, lungs, bowel gas) is at or below -800 HU.
    """
    sample = _finite(subsample(array))
    if sample.size == 0 or sample.dtype.kind == "b" or sample.dtype.kind == "u":
        return False
    if float(sample.min()) > -500.0:
        return False
    air_fraction = float(np.count_nonzero(sample <= _AIR_HU)) / sample.size
    return air_fraction >= _MIN_AIR_FRACTION


def _percentile_mapping(array: np.ndarray) -> IntensityMapping:
    sample = _finite(subsample(array))
    foreground = sample[sample != 0]
    if foreground.size == 0:
        foreground = sample
    if foreground.size == 0:
        return IntensityMapping(MR_PERCENTILE, 0.0, 1.0)
    low, high = np.percentile(foreground.astype(np.float64), MR_PERCENTILES)
    low, high = float(low), float(high)
    if high <= low:  # (nearly) constant foreground: fall back to the full range
        low, high = float(sample.min()), float(sample.max())
        if high <= low:
            high = low + 1.0
    return IntensityMapping(MR_PERCENTILE, low, high)


def _minmax_mapping(array: np.ndarray) -> IntensityMapping:
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        low, high = float(np.nanmin(arr)), float(np.nanmax(arr))
    else:
        low, high = float(arr.min()), float(arr.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high <= low:
        high = low + 1.0
    return IntensityMapping(MINMAX, low, high)


def auto_mapping(array: np.ndarray, modality: str | None = None) -> IntensityMapping:
    """Choose a mapping: a CT window for CT, percentile normalisation otherwise.

    Parameters
    ----------
    array : numpy.ndarray
        The volume (any real dtype).
    modality : str, optional
        ``"CT"``, ``"MR"`` or ``"unknown"``/``None``. When not known, CT is recognised
        from the intensities (see :func:`looks_like_ct`).

    Returns
    -------
    IntensityMapping
        The ``"abdomen"`` window (W400 L40) for CT, else ``"mr_percentile"``: the
        0.5-99.5 percentiles of the non-zero foreground, computed on a subsample.
    """
    mod = (modality or "unknown").strip().upper()
    if mod == "CT" or (mod not in ("MR", "MRI") and looks_like_ct(array)):
        return ct_window(DEFAULT_CT_WINDOW)
    return _percentile_mapping(array)


def mapping_names() -> list[str]:
    """All names accepted by :func:`mapping_from_name`."""
    return [*CT_WINDOWS, MR_PERCENTILE, MINMAX]


def _normalise_name(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def mapping_from_name(name: str, array: np.ndarray | None = None) -> IntensityMapping:
    """The mapping a user picked by name.

    Parameters
    ----------
    name : str
        A CT preset (see :data:`CT_WINDOWS`), ``"mr_percentile"`` or ``"minmax"``.
        Case, spaces and hyphens are ignored (``"Soft tissue"`` works).
    array : numpy.ndarray, optional
        Needed for the data-driven mappings ``"mr_percentile"`` and ``"minmax"``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), or when a data-driven
        mapping is asked for without ``array``.
    """
    key = _normalise_name(name)
    if key in CT_WINDOWS:
        return ct_window(key)
    if key in (MR_PERCENTILE, MINMAX):
        if array is None:
            raise ValueError(f"intensity mapping {key!r} is computed from the image: pass array")
        return _percentile_mapping(array) if key == MR_PERCENTILE else _minmax_mapping(array)
    raise ValueError(
        f"unknown intensity mapping {name!r}; valid names: {', '.join(mapping_names())}"
    )


def window_from_level_width(level: float, width: float, name: str = "custom") -> IntensityMapping:
    """A custom window given as level (centre) and width."""
    return IntensityMapping(name, level - width / 2.0, level + width / 2.0)

"""NIfTI checks SimpleITK does not make: truncation, NIfTI-2, all-NaN data.

SimpleITK silently zero-fills truncated NIfTI data and turns NaN into 0, and the NIfTI
library inside SimpleITK 2.5 does not recognise NIfTI-2 files at all ("Unable to
determine ImageIO reader"). These functions look at the bytes to say what is wrong.

No napari or Qt imports here.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ._common import looks_like_text, lower_name
from .volume import VolumeReadError

__all__ = ["check_nifti", "is_nifti2_header", "nifti_all_nan"]

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_SIZE = 348
_NIFTI2_SIZE = 540
_NIFTI2_MAGICS = (b"n+2\x00", b"ni2\x00")
_NIFTI_TYPES = {16: "f4", 64: "f8"}  # NIfTI DT_FLOAT32, DT_FLOAT64


def is_nifti2_header(header: bytes) -> bool:
    """Whether ``header`` starts a NIfTI-2 file (``sizeof_hdr`` 540 and its magic)."""
    if len(header) < 8 or header[4:8] not in _NIFTI2_MAGICS:
        return False
    return any(struct.unpack(e + "i", header[:4])[0] == _NIFTI2_SIZE for e in "<>")


def _nifti1_expected_bytes(header: bytes) -> int | None:
    """Header + voxel bytes promised by a NIfTI-1 header, or None if it is not one."""
    if len(header) < _NIFTI1_SIZE:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == _NIFTI1_SIZE:
            dims = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (offset,) = struct.unpack(endian + "f", header[108:112])
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


def _reraise_io_error(exc: BaseException) -> None:
    """Re-raise operating-system errors (permission, I/O); gzip's data errors have no errno."""
    if isinstance(exc, OSError) and exc.errno is not None:
        raise exc


def _nifti2_message(path: Path) -> str:
    return (
        f"{path} is NIfTI-2, which napari-medsam cannot read yet; convert it to NIfTI-1 "
        "(e.g. with nibabel: nib.save(nib.Nifti1Image.from_image(nib.load(f)), 'out.nii.gz'))"
    )


def check_nifti(path: Path) -> None:
    """Raise VolumeReadError for a NIfTI file that is not NIfTI-1, or is truncated."""
    compressed = lower_name(path).endswith(".gz")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if compressed and magic == _GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as fh:
                header = fh.read(_NIFTI2_SIZE)
        except (OSError, EOFError, zlib.error) as exc:
            _reraise_io_error(exc)
            raise VolumeReadError(
                f"{path} is truncated or damaged: its compressed data cannot be unpacked ({exc})"
            ) from exc
    else:
        with open(path, "rb") as fh:
            header = fh.read(_NIFTI2_SIZE)
        compressed = False
    if is_nifti2_header(header):
        raise VolumeReadError(_nifti2_message(path))
    expected = _nifti1_expected_bytes(header)
    if expected is None:
        if looks_like_text(path):
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
        _reraise_io_error(exc)
        raise VolumeReadError(
            f"{path} is truncated or damaged: the compressed data ends early or is "
            f"corrupt ({exc}); the copy or download was probably cut off"
        ) from exc
    if actual < expected:
        raise VolumeReadError(
            f"{path} is truncated: its header promises {expected} bytes of image data "
            f"but it unpacks to only {actual}"
        )


def nifti_all_nan(path: Path) -> bool:
    """Whether a float NIfTI-1 file holds only NaN/inf (which SimpleITK reads as zeros).

    The NIfTI library behind SimpleITK replaces non-finite floats by 0, so an all-NaN
    file would look like a constant one; this looks at the stored values instead.
    Only called on the (rare) constant-volume error path.
    """
    opener = gzip.open if lower_name(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error):
        return False
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", raw[:4])
        if sizeof_hdr == _NIFTI1_SIZE:
            (datatype,) = struct.unpack(endian + "h", raw[70:72])
            offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            break
    else:
        return False
    if datatype not in _NIFTI_TYPES:
        return False
    values = np.frombuffer(raw, dtype=endian + _NIFTI_TYPES[datatype], offset=offset)
    return values.size > 0 and not np.isfinite(values).any()

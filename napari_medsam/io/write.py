"""Save label maps with the scan's geometry: NIfTI, NRRD or MetaImage, atomically.

No napari or Qt imports here.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import stat
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .label_descriptions import label_description_path, write_label_descriptions
from .volume import IDENTITY_DIRECTION, Volume, VolumeWriteError

logger = logging.getLogger(__name__)

__all__ = ["WRITE_EXTENSIONS", "check_writable", "label_dtype", "write_labels"]

#: File name endings :func:`write_labels` can write.
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
_UNSIGNED = (np.uint8, np.uint16, np.uint32)
#: NIfTI-1 header and its 4-byte extension flag: where SimpleITK puts the voxels.
_NIFTI1_HEADER = 352


def _split_extension(path: Path) -> tuple[str, str]:
    """``("seg", ".nii.gz")`` for ``seg.nii.gz``; raise for formats we do not write."""
    lower = path.name.lower()
    for ext in WRITE_EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return path.name[: -len(ext)], path.name[-len(ext) :]
    raise VolumeWriteError(
        f"cannot write {path}: label maps are saved as {', '.join(WRITE_EXTENSIONS)}"
    )


def label_dtype(max_label: int) -> np.dtype:
    """Smallest unsigned integer dtype holding ``max_label`` (uint8, uint16 or uint32).

    Raises
    ------
    VolumeWriteError
        When ``max_label`` is negative or does not fit in uint32.
    """
    if max_label < 0:
        raise VolumeWriteError(f"label values must be >= 0, got {max_label}")
    for dtype in _UNSIGNED:
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise VolumeWriteError(
        f"label value {max_label} is too large: at most {np.iinfo(np.uint32).max} is supported"
    )


def _geometry(geometry: Volume | Mapping[str, Any]) -> tuple[Volume, tuple[int, ...] | None]:
    """A geometry-only Volume (tiny placeholder array) and the expected (z, y, x) shape."""
    if isinstance(geometry, Volume):
        meta: Mapping[str, Any] = geometry.metadata()
        shape: tuple[int, ...] | None = geometry.shape
    elif isinstance(geometry, Mapping):
        meta = geometry
        shape = tuple(int(s) for s in meta["shape"]) if meta.get("shape") else None
        missing = [k for k in ("spacing", "origin") if not meta.get(k)]
        if missing:
            raise VolumeWriteError(f"the geometry has no {' or '.join(missing)}: {dict(meta)!r}")
    else:
        raise VolumeWriteError(
            f"geometry must be a Volume or a metadata dict, got {type(geometry).__name__}"
        )
    try:
        holder = Volume(
            array=np.zeros((1, 1, 1), dtype=np.uint8),
            spacing=meta["spacing"],
            origin=meta["origin"],
            direction=meta.get("direction") or IDENTITY_DIRECTION,
        )
    except (TypeError, ValueError) as exc:
        raise VolumeWriteError(f"invalid geometry: {exc}") from exc
    return holder, shape


def _as_label_array(array: Any, target: Path) -> np.ndarray:
    """Validate and convert to the smallest unsigned dtype; never wraps values."""
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise VolumeWriteError(f"cannot write {target}: labels must be 3D, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise VolumeWriteError(
                f"cannot write {target}: label values must be whole numbers (got {arr.dtype} "
                "data with fractions or NaN)"
            )
    elif arr.dtype.kind not in "iu":
        raise VolumeWriteError(f"cannot write {target}: unsupported label dtype {arr.dtype}")
    if arr.size == 0:
        raise VolumeWriteError(f"cannot write {target}: the label map is empty (shape {arr.shape})")
    low, high = arr.min(), arr.max()
    if low < 0:
        raise VolumeWriteError(
            f"cannot write {target}: label values must be >= 0, found {low:g}"
            if arr.dtype.kind == "f"
            else f"cannot write {target}: label values must be >= 0, found {int(low)}"
        )
    try:
        dtype = label_dtype(int(high))
    except VolumeWriteError as exc:
        raise VolumeWriteError(f"cannot write {target}: {exc}") from exc
    return arr.astype(dtype, copy=False)


def _resolve_link(target: Path) -> Path:
    """The file a symbolic link points to (the link stays a link), else ``target``."""
    if target.is_symlink():
        resolved = Path(os.path.realpath(target))
        logger.info("%s is a link: writing %s", target, resolved)
        return resolved
    return target


def check_writable(target: str | os.PathLike[str]) -> Path:
    """Raise :class:`VolumeWriteError` unless a label map can be written at ``target``.

    Checks, before any work is done, that the folder exists and is writable and that the
    target is not a folder (or a read-only file). Call it first when the labels take long to
    compute (``napari-medsam segment``).
    """
    path = _resolve_link(Path(os.fspath(target)).expanduser())
    _split_extension(path)
    folder = path.parent
    if not folder.is_dir():
        raise VolumeWriteError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise VolumeWriteError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VolumeWriteError(f"cannot write {path}: folder {folder} is not writable "
                               "(permission denied)")
    if path.exists() and not os.access(path, os.W_OK):
        raise VolumeWriteError(f"cannot write {path}: the file is read-only (permission denied)")
    return path


def _check_free_space(target: Path, ext: str, labels: np.ndarray) -> None:
    """Refuse an uncompressed file that cannot fit (compressed sizes are verified after)."""
    if ext != ".nii":
        return
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        return
    needed = labels.nbytes + _NIFTI1_HEADER
    if free < needed:
        raise VolumeWriteError(
            f"cannot write {target}: not enough free space ({_mib(free)} free on its disk, "
            f"{_mib(needed)} needed){_kept_note(target)}")


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); folders cannot be opened on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _nifti_payload_bytes(path: Path, compressed: bool) -> int:
    """Bytes of a NIfTI file once unpacked (raises on a cut-off gzip stream)."""
    if not compressed:
        return path.stat().st_size
    total = 0
    with gzip.open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            total += len(block)
    return total


def _verify_written(tmp: Path, target: Path, ext: str, labels: np.ndarray,
                    holder: Volume) -> None:
    """Read the new file back before it replaces anything: size, voxels and geometry.

    SimpleITK's NIfTI writer ignores short writes (a full disk leaves a cut-off file and no
    error), and its reader fills a cut-off NIfTI with zeros, so NIfTI files are also checked
    for their full length.
    """
    where = (f"could not write {target}: the new file was cut short or damaged when written "
             "(is the disk full?)")
    if ext in (".nii", ".nii.gz"):
        try:
            payload = _nifti_payload_bytes(tmp, ext == ".nii.gz")
        except (OSError, EOFError, zlib.error) as exc:
            raise VolumeWriteError(f"{where}: {exc}") from exc
        needed = labels.nbytes + _NIFTI1_HEADER
        if payload < needed:
            raise VolumeWriteError(f"{where}: {payload} of "
                                   f"{needed} bytes")
    try:
        back = sitk.ReadImage(str(tmp))
    except RuntimeError as exc:
        raise VolumeWriteError(f"{where}") from exc
    voxels = sitk.GetArrayViewFromImage(back)
    if voxels.shape != labels.shape or not np.array_equal(voxels, labels):
        raise VolumeWriteError(f"{where}: its voxels differ")
    if not (np.allclose(back.GetSpacing(), holder.spacing, rtol=1e-4)
            and np.allclose(back.GetOrigin(), holder.origin, rtol=1e-5, atol=1e-2)
            and np.allclose(back.GetDirection(), holder.direction, atol=1e-3)):
        raise VolumeWriteError(f"{where}: its geometry differs")


def _kept_note(target: Path) -> str:
    return f"; {target} was left as it was" if target.exists() else ""


def write_labels(
    array: Any,
    path: str | os.PathLike[str],
    geometry: Volume | Mapping[str, Any],
    label_names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> Path:
    """Write a label map with the spacing, origin and direction of its scan.

    The file is first written to a temporary file in the same folder (with the same
    extension, so SimpleITK picks the right writer), flushed to disk, read back and
    compared (length, every voxel, geometry), and only then moved over the target with
    :func:`os.replace`: the target is either the old file or the complete new one, also
    when the disk fills up (SimpleITK's NIfTI writer does not report short writes). An
    existing file keeps its permissions; a symbolic link keeps pointing to the file it
    names, which is the one replaced.

    Parameters
    ----------
    array : array-like
        (z, y, x) labels: integers >= 0 (bool, or floats holding whole numbers, too).
        Stored as the smallest of uint8 / uint16 / uint32 that holds the largest label.
    path : path-like
        Target ending in ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``.
    geometry : Volume or dict
        The scan's :class:`Volume`, or a dict made by :meth:`Volume.metadata`
        (``spacing``, ``origin``, ``direction``; ``shape`` is checked when present).
    label_names : mapping of int to str, optional
        When given (or ``colors`` is), an ITK-SNAP ``<stem>.label.txt`` is written
        beside the file.
    colors : mapping of int to colour, optional
        RGB(A) per label, 0..255 integers or 0..1 floats.

    Returns
    -------
    pathlib.Path
        The written label map.

    Raises
    ------
    VolumeWriteError
        For an unsupported extension, a missing or read-only folder, too little free
        space, a shape that differs from the geometry's, negative or too large labels, or
        a write that did not read back intact. Nothing is left behind in those cases and
        an existing file is untouched.
    """
    target = Path(os.fspath(path)).expanduser()
    stem, ext = _split_extension(target)
    holder, expected_shape = _geometry(geometry)
    arr = np.asarray(array)
    if expected_shape is not None and tuple(arr.shape) != tuple(expected_shape):
        raise VolumeWriteError(
            f"cannot write {target}: the labels have shape {tuple(arr.shape)} but the scan "
            f"has shape {tuple(expected_shape)} (z, y, x)"
        )
    target = check_writable(target)  # a link's target: the link stays a link
    stem, ext = _split_extension(target)
    labels = _as_label_array(arr, target)
    image = sitk.GetImageFromArray(labels)
    holder.copy_geometry_to(image)
    _check_free_space(target, ext, labels)

    tmp = target.with_name(f".{stem}.{uuid.uuid4().hex[:10]}.tmp{ext}")
    try:
        sitk.WriteImage(image, str(tmp), ext != ".nii")
        _fsync(tmp)
        _verify_written(tmp, target, ext, labels, holder)
        if target.exists():
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))  # keep the file's permissions
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    except (RuntimeError, OSError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise VolumeWriteError(f"could not write {target}: {detail}"
                               f"{_kept_note(target)}") from exc
    except VolumeWriteError as exc:
        raise VolumeWriteError(f"{exc}{_kept_note(target)}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("wrote %s labels %s to %s", labels.dtype, labels.shape, target)

    if label_names or colors:
        sidecar = label_description_path(target)
        try:
            write_label_descriptions(sidecar, label_names or {}, colors)
        except (OSError, ValueError) as exc:
            raise VolumeWriteError(
                f"wrote {target} but not its label names file {sidecar}: {exc}"
            ) from exc
    return target

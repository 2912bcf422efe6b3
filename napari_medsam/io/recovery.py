"""Crash recovery: the unsaved labels of each scan, autosaved under ``<cache>/recovery/``.

One file per scan, ``<cache>/recovery/<image digest>.npz``, keyed by the content digest of
the scan (:func:`napari_medsam.engine.disk_cache.array_digest`), so re-opening the same
scan from any path finds it. The file is a NumPy ``.npz`` (deflate) holding

- ``labels``: the label map, in its own dtype and shape (label maps compress ~100-700x);
- ``meta``: a JSON string with the scan digest, the labels layer name, the time, the object
  and voxel counts, the layer metadata (scan geometry: ``spacing``, ``origin``,
  ``direction``, ``shape``; ``label_names``), label colours, the layer's scale and
  translate, and a digest of the labels.

Files are written atomically: a temporary file in the same folder, fsync, read back and
compared with what was meant to be written, then :func:`os.replace`; a failed or short
write never replaces the previous good file. A damaged file reads as "no recovery" with
one log warning.

:class:`LabelsMirror` keeps a private copy of a label map that is refreshed by copying only
the rows (slices along the first axis) that changed, so the caller can take a consistent
snapshot cheaply on the thread that edits the labels and compress it elsewhere.

No napari or Qt imports here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from napari_medsam.engine.disk_cache import array_digest
from napari_medsam.paths import cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "AUTOSAVE_EDITS",
    "AUTOSAVE_SECONDS",
    "LabelsMirror",
    "RecoveredLabels",
    "RecoveryError",
    "RecoveryInfo",
    "RecoverySnapshot",
    "RecoveryStore",
    "recovery_dir",
    "write_payload",
]

#: Autosave a changed labels layer after this many accepted edits...
AUTOSAVE_EDITS = 5
#: ...or this many seconds after its first unsaved change, whichever comes first.
AUTOSAVE_SECONDS = 60.0

FORMAT_VERSION = 1
SUFFIX = ".npz"
_DIGEST = re.compile(r"[0-9a-f]{8,128}")
_CHUNK_ROWS = 16  # rows per numpy call: short calls, so a worker never holds the GIL long
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


class RecoveryError(OSError):
    """A recovery file could not be written (the previous one, if any, is untouched)."""


def recovery_dir() -> Path:
    """Folder of the recovery files: ``<cache>/recovery``."""
    return cache_dir() / "recovery"


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a scan digest: {digest!r}")
    return digest


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for numpy values, paths and other metadata oddities."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def _int_keys(mapping: Mapping[Any, Any] | None) -> dict[int, Any]:
    """``{"5": v}`` (JSON) -> ``{5: v}``; keys that are not integers are dropped."""
    out: dict[int, Any] = {}
    for key, value in (mapping or {}).items():
        try:
            out[int(key)] = value
        except (TypeError, ValueError):
            continue
    return out


def _row_chunks(n_rows: int, step: int = _CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def count_objects(labels: np.ndarray) -> tuple[int, int]:
    """(distinct non-zero labels, non-zero voxels), a few rows at a time."""
    arr = np.asarray(labels)
    if arr.ndim == 0 or arr.size == 0:
        return 0, 0
    ids: set[int] = set()
    voxels = 0
    for rows in _row_chunks(arr.shape[0]):
        part = arr[rows]
        labelled = part[part != 0]  # label maps are mostly background
        voxels += labelled.size
        if labelled.size:
            ids.update(np.unique(labelled).tolist())
    return len(ids), voxels


def _same_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality of two label maps, a few rows at a time."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.ndim == 0:
        return bool(a == b)
    return all(np.array_equal(a[rows], b[rows]) for rows in _row_chunks(a.shape[0]))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1D bool array."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


@dataclass(frozen=True)
class RecoverySnapshot:
    """What one autosave writes.

    Attributes
    ----------
    image_digest : str
        Content digest of the scan (the recovery file's key).
    labels : numpy.ndarray
        The label map; :meth:`RecoveryStore.save` reads it while writing, so it must not be
        modified until ``save`` returns.
    layer_name : str
        Name of the labels layer.
    metadata : mapping
        The layer metadata: scan geometry (``spacing``, ``origin``, ``direction``,
        ``shape``) and ``label_names``.
    colors : mapping of int to RGBA, optional
        Colours of a layer with a direct colour map (``None`` key: default colour).
    scale, translate : sequence of float, optional
        The layer's world placement.
    time : float
        Seconds since the epoch when the snapshot was taken.
    """

    image_digest: str
    labels: np.ndarray
    layer_name: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    colors: Mapping[int | None, Sequence[float]] | None = None
    scale: Sequence[float] | None = None
    translate: Sequence[float] | None = None
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RecoveryInfo:
    """What a recovery file holds, read from its small JSON part only."""

    path: Path
    image_digest: str
    layer_name: str
    time: float
    object_count: int
    voxel_count: int
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        """``"3 objects in 'CT labels', autosaved 14:05"`` for the user."""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.time))
        objects = f"{self.object_count} object{'s' if self.object_count != 1 else ''}"
        return f"{objects} in '{self.layer_name}', autosaved {when}"


@dataclass(frozen=True)
class RecoveredLabels:
    """A recovery file read back: the labels and everything needed to rebuild the layer."""

    info: RecoveryInfo
    labels: np.ndarray
    metadata: dict[str, Any]
    label_names: dict[int, str]
    colors: dict[int | None, tuple[float, ...]]
    scale: tuple[float, ...] | None
    translate: tuple[float, ...] | None


def write_payload(file: IO[bytes], labels: np.ndarray, meta_json: str) -> None:
    """Write the ``.npz`` payload (labels and the JSON metadata) into an open binary file."""
    np.savez_compressed(file, labels=labels, meta=np.array(meta_json))


def _read_meta(npz: Any) -> dict[str, Any]:
    meta = json.loads(str(npz["meta"][()]))
    if not isinstance(meta, dict):
        raise ValueError("its metadata is not a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unknown recovery format {meta.get('format')!r}")
    return meta


def _info(path: Path, meta: Mapping[str, Any]) -> RecoveryInfo:
    return RecoveryInfo(
        path=path,
        image_digest=str(meta["image_digest"]),
        layer_name=str(meta["layer_name"]),
        time=float(meta["time"]),
        object_count=int(meta["object_count"]),
        voxel_count=int(meta["voxel_count"]),
        shape=tuple(int(s) for s in meta["shape"]),
        dtype=str(meta["dtype"]),
    )


def _read(path: Path, with_labels: bool) -> tuple[dict[str, Any], np.ndarray | None]:
    """(meta, labels or None) of a recovery file; raises one of ``_UNREADABLE`` if damaged."""
    with np.load(path, allow_pickle=False) as npz:
        meta = _read_meta(npz)
        _info(path, meta)  # every field present and well typed
        if not with_labels:
            return meta, None
        labels = npz["labels"]  # the zip member's CRC is checked while reading it
    if labels.shape != tuple(meta["shape"]) or labels.dtype.str != meta["dtype"]:
        raise ValueError(
            f"labels {labels.dtype} {labels.shape} do not match the recorded "
            f"{meta['dtype']} {tuple(meta['shape'])}"
        )
    if array_digest(labels) != meta["labels_digest"]:
        raise ValueError("the labels do not match their recorded digest")
    return meta, labels


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
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


class RecoveryStore:
    """Recovery files, one per scan, under ``root`` (default: :func:`recovery_dir`).

    Parameters
    ----------
    root : path-like, optional
        Folder of the files; by default ``<cache>/recovery`` as the cache is configured when
        the store is created (``NAPARI_MEDSAM_CACHE`` or the platform's cache folder).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root) if root is not None else recovery_dir()
        self._warned: set[tuple[str, float]] = set()

    def path_for(self, image_digest: str) -> Path:
        """The recovery file of the scan with content digest ``image_digest``."""
        return self.root / f"{_check_digest(image_digest)}{SUFFIX}"

    def save(self, snapshot: RecoverySnapshot) -> Path:
        """Write ``snapshot`` atomically, replacing the scan's previous recovery file.

        Returns
        -------
        pathlib.Path
            The recovery file.

        Raises
        ------
        RecoveryError
            When the file cannot be written or does not read back exactly; the previous
            recovery file of the scan, if any, is then left as it was.
        ValueError
            For a malformed digest or labels that are not an integer array.
        """
        target = self.path_for(snapshot.image_digest)
        labels = np.asarray(snapshot.labels)
        if labels.dtype.kind not in "iub" or labels.ndim < 2:
            raise ValueError(
                f"labels must be an integer array of 2 or more dimensions, got "
                f"{labels.dtype} {labels.shape}"
            )
        objects, voxels = count_objects(labels)
        colors = {
            ("default" if key is None else str(int(key))): [float(c) for c in value]
            for key, value in (snapshot.colors or {}).items()
        }
        meta = {
            "format": FORMAT_VERSION,
            "image_digest": snapshot.image_digest,
            "layer_name": str(snapshot.layer_name),
            "time": float(snapshot.time),
            "object_count": objects,
            "voxel_count": voxels,
            "shape": list(labels.shape),
            "dtype": labels.dtype.str,
            "labels_digest": array_digest(labels),
            "metadata": dict(snapshot.metadata or {}),
            "colors": colors,
            "scale": None if snapshot.scale is None else [float(s) for s in snapshot.scale],
            "translate": (
                None if snapshot.translate is None else [float(t) for t in snapshot.translate]
            ),
        }
        meta_json = json.dumps(meta, default=_jsonable)
        tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:10]}.tmp")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries(target.stem)
            with open(tmp, "wb") as file:
                write_payload(file, labels, meta_json)
                file.flush()
                os.fsync(file.fileno())
            try:
                written, back = _read(tmp, with_labels=True)
            except _UNREADABLE as exc:
                raise RecoveryError(f"it does not read back ({exc})") from exc
            if (
                written["labels_digest"] != meta["labels_digest"]
                or back is None
                or not _same_arrays(back, labels)
            ):
                raise RecoveryError("it reads back different labels")
            os.replace(tmp, target)
            _fsync_folder(self.root)
        except (OSError, ValueError) as exc:
            raise RecoveryError(f"could not write the recovery file {target}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        logger.info(
            "autosaved %d objects (%s %s) of scan %s to %s",
            objects,
            labels.dtype,
            labels.shape,
            snapshot.image_digest[:12],
            target,
        )
        return target

    def _remove_stale_temporaries(self, stem: str, age_s: float = 3600.0) -> None:
        """Temporary files left by a crash during a write (an hour old: not being written)."""
        for path in self.root.glob(f".{stem}.*.tmp"):
            try:
                if time.time() - path.stat().st_mtime > age_s:
                    path.unlink()
            except OSError:
                continue

    def _warn(self, path: Path, exc: BaseException) -> None:
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            key = (str(path), 0.0)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(
                "ignoring the damaged recovery file %s: %s",
                path,
                str(exc).strip() or type(exc).__name__,
            )

    def find(self, image_digest: str) -> RecoveryInfo | None:
        """What the scan's recovery file holds (reads only its small JSON part), or None
        when there is none or it is damaged (one log warning)."""
        path = self.path_for(image_digest)
        if not path.is_file():
            return None
        try:
            meta, _ = _read(path, with_labels=False)
            if meta["image_digest"] != image_digest:
                raise ValueError(f"it belongs to scan {meta['image_digest']}")
            return _info(path, meta)
        except _UNREADABLE as exc:
            self._warn(path, exc)
            return None

    def load(self, image_digest: str) -> RecoveredLabels | None:
        """The labels and layer attributes of the scan's recovery file, or None when there
        is none or it is damaged (one log warning)."""
        path = self.path_for(image_digest)
        if not path.is_file():
            return None
        try:
            meta, labels = _read(path, with_labels=True)
            if meta["image_digest"] != image_digest:
                raise ValueError(f"it belongs to scan {meta['image_digest']}")
            info = _info(path, meta)
            metadata = dict(meta.get("metadata") or {})
            names = {
                key: str(value) for key, value in _int_keys(metadata.get("label_names")).items()
            }
            if "label_names" in metadata:
                metadata["label_names"] = names
            colors: dict[int | None, tuple[float, ...]] = {
                (None if key == "default" else int(key)): tuple(float(c) for c in value)
                for key, value in (meta.get("colors") or {}).items()
            }
            scale, translate = meta.get("scale"), meta.get("translate")
        except _UNREADABLE as exc:
            self._warn(path, exc)
            return None
        assert labels is not None
        return RecoveredLabels(
            info=info,
            labels=labels,
            metadata=metadata,
            label_names=names,
            colors=colors,
            scale=None if scale is None else tuple(scale),
            translate=None if translate is None else tuple(translate),
        )

    def discard(self, image_digest: str) -> bool:
        """Delete the scan's recovery file; True if there was one."""
        path = self.path_for(image_digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        logger.info("discarded the recovery file %s", path)
        return True


class LabelsMirror:
    """A private copy of a label map, refreshed by copying only the rows that changed.

    Rows are slices along the first axis (axial slices of a (z, y, x) map). The owner marks
    rows changed by edits (:meth:`mark_rows`), a replaced array (:meth:`mark_all`) or a
    change it cannot locate, such as an undo (:meth:`mark_unknown`: every row edited since
    the mirror was made, or holding labels then, is compared and copied if it differs).
    :meth:`refresh` then makes :attr:`base` equal to the labels.

    The copy itself (:meth:`copy_of`) and the search for rows that differ
    (:meth:`differing_rows`) only read, so they may run on another thread while the owner
    edits the labels, as long as every row edited meanwhile gets marked: :meth:`refresh`
    (on the owner's thread, with nobody reading :attr:`base`) then copies those rows.

    Parameters
    ----------
    shape, dtype
        Of the label map.
    """

    def __init__(self, shape: Sequence[int], dtype: Any):
        self.shape = tuple(int(s) for s in shape)
        if not self.shape:
            raise ValueError("cannot mirror a 0-dimensional array")
        self.dtype = np.dtype(dtype)
        self.base: np.ndarray | None = None
        self._pending = np.zeros(self.shape[0], dtype=bool)
        self._touched = np.zeros(self.shape[0], dtype=bool)
        self._all = False
        self._unknown = False

    @classmethod
    def of(cls, data: np.ndarray) -> LabelsMirror:
        """A mirror of ``data``, made at once on this thread."""
        mirror = cls(data.shape, data.dtype)
        mirror.set_base(*cls.copy_of(data))
        return mirror

    @staticmethod
    def copy_of(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(copy of ``data``, which rows hold labels): a lazily allocated zero array for an
        all-zero map, so the copy costs memory only for rows that get labels later."""
        arr = np.asarray(data)
        n = arr.shape[0]
        if not arr.any():
            return np.zeros(arr.shape, dtype=arr.dtype), np.zeros(n, dtype=bool)
        base = np.array(arr, copy=True, order="C")
        return base, base.reshape(n, -1).any(axis=1)

    def set_base(self, base: np.ndarray, rows_with_labels: np.ndarray) -> None:
        """Adopt a copy made by :meth:`copy_of` (rows holding labels may be undone)."""
        if tuple(base.shape) != self.shape or base.dtype != self.dtype:
            raise ValueError(f"base {base.dtype} {base.shape} is not {self.dtype} {self.shape}")
        self.base = base
        self._touched |= np.asarray(rows_with_labels, dtype=bool)

    @property
    def ready(self) -> bool:
        """The copy exists."""
        return self.base is not None

    @property
    def stale(self) -> bool:
        """Whether rows were marked since the last :meth:`refresh`."""
        return bool(self._all or self._unknown or self._pending.any())

    def mark_rows(self, start: int, stop: int) -> None:
        """Rows ``start:stop`` changed (clipped to the array)."""
        n = len(self._pending)
        start, stop = max(0, int(start)), min(n, int(stop))
        if start < stop:
            self._pending[start:stop] = True
            self._touched[start:stop] = True

    def mark_all(self) -> None:
        """The whole array may have changed (e.g. it was replaced)."""
        self._all = True

    def mark_unknown(self) -> None:
        """Something may have changed rows edited before (an undo or redo)."""
        self._unknown = True

    def mark_row_mask(self, rows: np.ndarray) -> None:
        """The rows where ``rows`` (one bool per row) is True changed."""
        for start, stop in _runs(np.asarray(rows, dtype=bool)):
            self.mark_rows(start, stop)

    def take_unknown(self) -> np.ndarray | None:
        """The rows an unknown change may have touched (and clears the mark), or None."""
        if not self._unknown:
            return None
        self._unknown = False
        return self._touched & ~self._pending

    def differing_rows(self, data: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` differ between ``data`` and :attr:`base` (read-only)."""
        base = self.base
        found = np.zeros(len(rows), dtype=bool)
        if base is None or tuple(data.shape) != self.shape:
            found[rows] = True
            return found
        for start, stop in _runs(rows):
            for chunk in _row_chunks(stop - start):
                chunk = slice(start + chunk.start, start + chunk.stop)
                part = np.asarray(data[chunk])
                if not np.array_equal(base[chunk], part):
                    found[chunk] = (base[chunk] != part).reshape(len(part), -1).any(axis=1)
        return found

    def rebase(self, data: np.ndarray) -> None:
        """Start again from a new copy of ``data`` made on this thread (e.g. while another
        thread still reads the old :attr:`base`); rows known to be edited stay known."""
        base, rows = self.copy_of(data)
        self.base = None
        self.shape, self.dtype = tuple(base.shape), base.dtype
        if len(self._touched) != self.shape[0]:
            self._touched = np.ones(self.shape[0], dtype=bool)
        self._pending = np.zeros(self.shape[0], dtype=bool)
        self._all = self._unknown = False
        self.set_base(base, rows)

    def copy_pending(self, data: np.ndarray) -> int:
        """Copy the marked rows into :attr:`base` (nobody else may read it meanwhile);
        returns how many rows were copied. Requires :attr:`ready`."""
        base = self.base
        if base is None:
            raise ValueError("the mirror has no copy yet")
        if tuple(data.shape) != self.shape or np.dtype(data.dtype) != self.dtype:
            self.rebase(data)
            return self.shape[0]
        if self._all:
            base[...] = data
            self._touched[:] = True
            self._pending[:] = False
            self._all = False
            return self.shape[0]
        copied = 0
        for start, stop in _runs(self._pending):
            base[start:stop] = data[start:stop]
            copied += stop - start
        self._pending[:] = False
        return copied

    def refresh(self, data: np.ndarray) -> tuple[bool, int]:
        """Make :attr:`base` equal to ``data``, all on this thread.

        Returns
        -------
        (bool, int)
            Whether rows checked for an unknown change (or a new shape or dtype) differed,
            and how many rows were copied.
        """
        if tuple(data.shape) != self.shape or np.dtype(data.dtype) != self.dtype:
            self.rebase(data)
            return True, self.shape[0]
        differed = False
        rows = self.take_unknown()
        if rows is not None and not self._all:
            found = self.differing_rows(data, rows)
            differed = bool(found.any())
            self._pending |= found
        return differed, self.copy_pending(data)

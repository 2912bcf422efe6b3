"""Crash recovery: the unsaved labels of each scan, autosaved under ``<cache>/recovery/``.

One file per scan, ``<cache>/recovery/<image digest>.npz``, keyed by the content digest of
the scan (:func:`napari_medsam.engine.cache_keys.array_digest`), so re-opening the same
scan from any path finds it. :class:`RecoveryStore` writes, finds, loads and discards them;
what a file holds, and how it is read back and verified, is in
:mod:`napari_medsam.io.recovery_file`.

Files are written atomically: a temporary file in the same folder, fsync, read back and
compared with what was meant to be written, then :func:`os.replace`; a failed or short
write never replaces the previous good file. A damaged file reads as "no recovery" with
one log warning.

The label maps are counted and compared a few rows at a time
(:mod:`napari_medsam.io.labels_mirror`, which also holds :class:`LabelsMirror`: the private
copy of a label map that the autosave snapshots).

No napari or Qt imports here.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from napari_medsam.paths import cache_dir

from .labels_mirror import LabelsMirror, count_objects, same_arrays
from .recovery_file import (
    UNREADABLE,
    RecoveredLabels,
    RecoveryInfo,
    RecoverySnapshot,
    encode_meta,
    file_meta,
    info_from,
    read_file,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AUTOSAVE_EDITS",
    "AUTOSAVE_SECONDS",
    "LabelsMirror",  # re-exported from labels_mirror
    "RecoveredLabels",  # re-exported from recovery_file, like the two below
    "RecoveryInfo",
    "RecoverySnapshot",
    "RecoveryError",
    "RecoveryStore",
    "count_objects",
    "recovery_dir",
    "write_payload",
]

#: Autosave a changed labels layer after this many accepted edits...
AUTOSAVE_EDITS = 5
#: ...or this many seconds after its first unsaved change, whichever comes first.
AUTOSAVE_SECONDS = 60.0

SUFFIX = ".npz"
_DIGEST = re.compile(r"[0-9a-f]{8,128}")


class RecoveryError(OSError):
    """A recovery file could not be written (the previous one, if any, is untouched)."""


def recovery_dir() -> Path:
    """Folder of the recovery files: ``<cache>/recovery``."""
    return cache_dir() / "recovery"


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a scan digest: {digest!r}")
    return digest


def _int_keys(mapping: Mapping[Any, Any] | None) -> dict[int, Any]:
    """``{"5": v}`` (JSON) -> ``{5: v}``; keys that are not integers are dropped."""
    out: dict[int, Any] = {}
    for key, value in (mapping or {}).items():
        try:
            out[int(key)] = value
        except (TypeError, ValueError):
            continue
    return out


def write_payload(file: IO[bytes], labels: np.ndarray, meta_json: str) -> None:
    """Write the ``.npz`` payload (labels and the JSON metadata) into an open binary file."""
    np.savez_compressed(file, labels=labels, meta=np.array(meta_json))


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


def _write_checked(path: Path, labels: np.ndarray, meta: Mapping[str, Any], text: str) -> None:
    """Write a recovery file (``text``: ``meta`` as JSON) to ``path``, fsync it and read it back.

    Raises :class:`RecoveryError` when it does not read back, or reads back other labels;
    OSError or ValueError when it cannot be written.
    """
    with open(path, "wb") as file:
        write_payload(file, labels, text)
        file.flush()
        os.fsync(file.fileno())
    try:
        written, back = read_file(path, with_labels=True)
    except UNREADABLE as exc:
        raise RecoveryError(f"it does not read back ({exc})") from exc
    if (
        written["labels_digest"] != meta["labels_digest"]
        or back is None
        or not same_arrays(back, labels)
    ):
        raise RecoveryError("it reads back different labels")


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
        meta = file_meta(snapshot, labels)
        text = encode_meta(meta)
        tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:10]}.tmp")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries(target.stem)
            _write_checked(tmp, labels, meta, text)
            os.replace(tmp, target)
            _fsync_folder(self.root)
        except (OSError, ValueError) as exc:
            raise RecoveryError(f"could not write the recovery file {target}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        logger.info(
            "autosaved %d objects (%s %s) of scan %s to %s",
            meta["object_count"],
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
            meta, _ = read_file(path, with_labels=False)
            if meta["image_digest"] != image_digest:
                raise ValueError(f"it belongs to scan {meta['image_digest']}")
            return info_from(path, meta)
        except UNREADABLE as exc:
            self._warn(path, exc)
            return None

    def load(self, image_digest: str) -> RecoveredLabels | None:
        """The labels and layer attributes of the scan's recovery file, or None when there
        is none or it is damaged (one log warning)."""
        path = self.path_for(image_digest)
        if not path.is_file():
            return None
        try:
            meta, labels = read_file(path, with_labels=True)
            if meta["image_digest"] != image_digest:
                raise ValueError(f"it belongs to scan {meta['image_digest']}")
            info = info_from(path, meta)
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
        except UNREADABLE as exc:
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

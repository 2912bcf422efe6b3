"""Slice embeddings kept on disk (float16), so that re-opening a scan embeds nothing again.

Layout: ``<cache>/embeddings/<key>/`` per (image content, axis, intensity mapping, model,
precision), holding ``meta.json`` and one ``<index>.npz`` per embedded slice. This module
holds the store of one volume (:class:`DiskEmbeddingStore`) and the work on the whole cache
(:func:`cache_entries`, :func:`cache_size`, :func:`clear_cache`, :func:`prune`); its parts
live beside it and are re-exported here:

- :mod:`.cache_keys`: the folder key (:class:`VolumeKey`, :func:`volume_key`) and the content
  digest :func:`array_digest`;
- :mod:`.slice_files`: the self-verifying slice files (:func:`write_slice_file`,
  :func:`read_slice_file`);
- :mod:`.cache_lock`: the lock that keeps writers and clearing apart (:class:`CacheLock`,
  :class:`CacheBusyError`).

Every read (:meth:`DiskEmbeddingStore.get`, :meth:`DiskEmbeddingStore.verified_indices`)
verifies the slice file; a file that fails (unreadable, another slice's or another volume's
file, damaged values, NaN/inf) is logged as one warning naming the slice and the reason,
deleted, and reads as a miss, so that the slice is computed again. Non-finite embeddings are
never written.

Concurrency
-----------
Files are written atomically, so readers see whole files only, and two processes embedding
the same volume replace each other's slices with whole files. Writers hold the root's
:class:`CacheLock` shared (:meth:`~DiskEmbeddingStore.put` while it writes one slice;
:class:`~.volume_embedding.VolumeEmbedder` for a whole run); :func:`clear_cache` and
:func:`prune` take it exclusively without waiting for a run: :func:`clear_cache` raises
:class:`CacheBusyError`, :func:`prune` skips (no lock without ``fcntl``: see
:mod:`.cache_lock`). Either way :meth:`~DiskEmbeddingStore.put` re-creates a removed folder
and its ``meta.json`` before writing a slice.

:func:`prune` keeps the whole cache under a size limit, removing the least recently used
volumes first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medsam.paths import cache_dir

from .cache_keys import VolumeKey, array_digest, model_digest, model_precision, volume_key
from .cache_lock import LOCK, CacheBusyError, CacheLock
from .preprocess import resized_shape
from .protocol import Embedding, PromptModel
from .slice_files import (
    FORMAT_VERSION,
    SUFFIX,
    all_finite_float16,
    read_slice_file,
    slice_checksum,
    write_slice_file,
)

logger = logging.getLogger(__name__)

__all__ = [  # the cache's parts are re-exported from here
    "CLEAR_LOCK_WAIT", "DEFAULT_DISK_BYTES", "FORMAT_VERSION", "LOCK", "META", "SUFFIX",
    "CacheBusyError", "CacheEntry", "CacheLock", "DiskEmbeddingStore", "VolumeKey",
    "all_finite_float16", "array_digest", "cache_entries", "cache_size", "clear_cache",
    "embeddings_dir", "format_bytes", "model_digest", "model_precision", "prune",
    "read_slice_file", "slice_checksum", "volume_key", "write_slice_file"
]

META = "meta.json"
#: Default size limit of the on-disk cache (all volumes together).
DEFAULT_DISK_BYTES = 4 * 1024**3
#: Seconds :func:`clear_cache` waits for writers to finish (a single slice takes ~10 ms;
#: a whole-volume run holds the lock throughout, so clearing fails rather than waits).
CLEAR_LOCK_WAIT = 2.0


def embeddings_dir() -> Path:
    """Root of the on-disk embedding cache: ``<cache>/embeddings``."""
    return cache_dir() / "embeddings"


@dataclass
class DiskEmbeddingStore:
    """The on-disk embeddings of one volume along one axis.

    ``get(index)`` / ``put(index, embedding)`` mirror :class:`~.cache.EmbeddingCache`; the
    slice index along :attr:`key.axis <VolumeKey.axis>` is the key. Every read verifies the
    slice file (see :mod:`.slice_files`); a bad file is deleted with a warning and reads as
    a miss.

    Parameters
    ----------
    key
        What the embeddings depend on (see :func:`volume_key`).
    input_size
        The model's input side (to rebuild :class:`~.protocol.Embedding`).
    root
        Cache root (default :func:`embeddings_dir`).
    """

    key: VolumeKey
    input_size: int
    root: Path | None = None
    hits: int = field(default=0, init=False)
    misses: int = field(default=0, init=False)
    discarded: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root) if self.root is not None else embeddings_dir()
        self.directory = self.root / self.key.digest
        shape = list(self.key.shape)
        shape.pop(self.key.axis)
        self.original_size = (int(shape[0]), int(shape[1]))
        self.resized_size = resized_shape(*self.original_size, self.input_size)
        if (self.directory / META).is_file():
            self._touch()

    @classmethod
    def for_volume(cls, volume: np.ndarray, axis: int, mapping_key: str,
                   model: PromptModel, *,
                   root: Path | None = None, image_digest: str | None = None
                   ) -> DiskEmbeddingStore:
        """The store of ``volume`` along ``axis`` as ``model`` sees it through a mapping."""
        return cls(volume_key(volume, axis, mapping_key, model, image_digest=image_digest),
                   model.spec.input_size, root)

    @property
    def size(self) -> int:
        """Number of slices along the axis."""
        return int(self.key.shape[self.key.axis])

    def slice_path(self, index: int) -> Path:
        """The file of slice ``index`` (present or not)."""
        return self.directory / f"{int(index):05d}{SUFFIX}"

    def _touch(self) -> None:
        try:
            os.utime(self.directory / META)
        except OSError:
            pass

    def __contains__(self, index: int) -> bool:
        """Whether slice ``index`` is stored and verifies (reads it; see :meth:`get`)."""
        return self._read(int(index)) is not None

    def indices(self) -> list[int]:
        """Slice indices with a file (not verified: see :meth:`verified_indices`)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem) for p in self.directory.glob(f"*{SUFFIX}")
                      if p.stem.isdigit())

    def verified_indices(self) -> list[int]:
        """Slice indices whose file verifies (bad files are deleted, with a warning).

        Reads every file: ~5 ms per LiteMedSAM slice.
        """
        return [i for i in self.indices() if self._read(i) is not None]

    def _read(self, index: int) -> np.ndarray | None:
        """The verified features of slice ``index``; None if absent or bad (deleted)."""
        path = self.slice_path(index)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("Cached embedding of slice %d (%s) is unreadable: %s", index, path,
                           exc)
            return None
        with fh:
            stat = os.fstat(fh.fileno())
            features, reason = read_slice_file(fh, index, self.key.digest)
        if reason is not None:
            self._discard(path, stat, index, reason)
        return features

    def _discard(self, path: Path, stat: os.stat_result, index: int, reason: str) -> None:
        """Log and delete a bad slice file (unless another writer replaced it meanwhile)."""
        self.discarded += 1
        logger.warning("Discarding the cached embedding of slice %d (%s): %s; it will be "
                       "computed again", index, path, reason)
        try:
            now = os.stat(path)
            if (os.path.samestat(stat, now) and now.st_mtime_ns == stat.st_mtime_ns
                    and now.st_size == stat.st_size):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.debug("could not delete %s: %s", path, exc)

    def get(self, index: int) -> Embedding | None:
        """The stored embedding of slice ``index`` (float16, verified), or None."""
        features = self._read(int(index))
        if features is None:
            self.misses += 1
            return None
        self.hits += 1
        return Embedding(features=features, original_size=self.original_size,
                         resized_size=self.resized_size, input_size=self.input_size,
                         model=self.key.model)

    def put(self, index: int, embedding: Embedding | np.ndarray) -> bool:
        """Store slice ``index``'s embedding as float16 (atomic write).

        Holds the root's shared :class:`CacheLock` while writing (waiting up to
        :data:`~.cache_lock.WRITE_LOCK_TIMEOUT` s for a clear by another process, then
        raising :class:`CacheBusyError`), and re-creates the volume folder and its ``meta.json``
        when they were removed meanwhile.

        Returns
        -------
        bool
            False (with a warning) when the embedding has NaN or inf values in float16:
            it is not stored.
        """
        if not 0 <= index < self.size:
            raise IndexError(f"slice {index} is outside 0..{self.size - 1}")
        features = embedding.features if isinstance(embedding, Embedding) else embedding
        if isinstance(embedding, Embedding) and embedding.model != self.key.model:
            raise ValueError(f"embedding was made by {embedding.model!r}, not "
                             f"{self.key.model!r}")
        features = np.ascontiguousarray(features, dtype=np.float16)
        if features.ndim != 4 or features.shape[0] != 1 or features.size == 0:
            raise ValueError(f"expected features of shape [1, C, H, W], got "
                             f"{list(features.shape)}")
        if not all_finite_float16(features):
            logger.warning("Not caching the embedding of slice %d: it has NaN or inf values "
                           "in float16", index)
            return False
        with CacheLock(self.root):
            self.directory.mkdir(parents=True, exist_ok=True)
            if not (self.directory / META).is_file():
                self._write_meta()
            write_slice_file(self.slice_path(index), features, index, self.key.digest)
        return True

    def _write_meta(self) -> None:
        meta = {"format": FORMAT_VERSION, "shape": list(self.key.shape),
                "axis": self.key.axis, "mapping": self.key.mapping, "model": self.key.model,
                "model_sha256": self.key.model_sha256, "precision": self.key.precision,
                "image_blake2b": self.key.image, "original_size": list(self.original_size),
                "resized_size": list(self.resized_size), "input_size": self.input_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        fd, tmp = tempfile.mkstemp(prefix=f".{META}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(meta, indent=1))
            os.replace(tmp, self.directory / META)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @property
    def nbytes(self) -> int:
        """Bytes on disk for this volume."""
        return _dir_bytes(self.directory)

    def clear(self, wait: float = CLEAR_LOCK_WAIT) -> None:
        """Remove this volume's embeddings (exclusive lock; see :func:`clear_cache`)."""
        if not self.directory.is_dir():
            return
        with CacheLock(self.root, exclusive=True, timeout=wait):
            shutil.rmtree(self.directory, ignore_errors=True)


def _dir_bytes(path: Path) -> int:
    total = 0
    if path.is_dir():
        for entry in path.iterdir():
            try:
                total += entry.stat().st_size
            except OSError:
                pass
    return total


@dataclass(frozen=True)
class CacheEntry:
    """One volume in the on-disk cache (see :func:`cache_info`)."""

    path: Path
    slices: int
    nbytes: int
    last_used: float
    meta: dict


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """The volumes in the on-disk cache, most recently used first."""
    root = Path(root) if root is not None else embeddings_dir()
    if not root.is_dir():
        return []
    entries = []
    for folder in root.iterdir():
        try:
            if not folder.is_dir():
                continue
            meta_path = folder / META
            try:
                meta = json.loads(meta_path.read_text())
                last = meta_path.stat().st_mtime
            except (OSError, ValueError):
                meta, last = {}, folder.stat().st_mtime
            slices = sum(1 for p in folder.glob(f"*{SUFFIX}") if p.stem.isdigit())
        except FileNotFoundError:  # removed meanwhile
            continue
        entries.append(CacheEntry(folder, slices, _dir_bytes(folder), last, meta))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def cache_size(root: Path | None = None) -> int:
    """Total bytes of the on-disk embedding cache."""
    return sum(e.nbytes for e in cache_entries(root))


def clear_cache(root: Path | None = None, wait: float = CLEAR_LOCK_WAIT) -> int:
    """Delete every stored embedding; returns the bytes freed.

    Takes the root's exclusive :class:`CacheLock` (waiting up to ``wait`` s for writers);
    the lock file itself stays.

    Raises
    ------
    CacheBusyError
        Another process (or a volume embedding of this one) is writing embeddings;
        nothing is deleted.
    """
    root = Path(root) if root is not None else embeddings_dir()
    if not root.is_dir():
        return 0
    with CacheLock(root, exclusive=True, timeout=wait):
        before = cache_size(root)
        for entry in root.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return before - cache_size(root)


def prune(max_bytes: int = DEFAULT_DISK_BYTES, root: Path | None = None,
          keep: Path | None = None, wait: float = 0.5) -> int:
    """Remove least recently used volumes until the cache fits ``max_bytes``.

    ``keep`` (a volume folder, e.g. the one being filled) is never removed. Takes the root's
    exclusive :class:`CacheLock`; when another process writes (no lock within ``wait`` s)
    nothing is removed. Returns the bytes freed.
    """
    root = Path(root) if root is not None else embeddings_dir()
    if not root.is_dir():
        return 0
    try:
        lock = CacheLock(root, exclusive=True, timeout=wait).acquire()
    except CacheBusyError:
        logger.info("Not pruning %s: another napari-medsam process is writing embeddings",
                    root)
        return 0
    with lock:
        entries = cache_entries(root)
        total = sum(e.nbytes for e in entries)
        freed = 0
        for entry in reversed(entries):  # oldest first
            if total <= max_bytes:
                break
            if keep is not None and entry.path == Path(keep):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            total -= entry.nbytes
            freed += entry.nbytes
            logger.info("Removed cached embeddings %s (%.1f MiB)", entry.path.name,
                        entry.nbytes / 1024**2)
    return freed


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"

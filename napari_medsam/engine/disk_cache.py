"""Slice embeddings kept on disk (float16), so that re-opening a scan embeds nothing again.

Layout: ``<cache>/embeddings/<key>/`` per (image content, axis, intensity mapping, model,
precision), holding ``meta.json`` and one ``<index>.npz`` per embedded slice. The key is a
blake2b digest of

- the image's raw bytes, dtype and shape (:func:`array_digest`, ~1 GB/s, no copy of a
  C-contiguous array);
- the axis the slices cut across;
- the intensity mapping's ``key`` (what the model sees);
- the encoder file's sha256 (:func:`model_digest`) and the encoder's numeric precision;
- :data:`FORMAT_VERSION` (a new format starts new folders: old caches simply miss; their
  folders stay until pruned or cleared).

Slice files
-----------
Each ``<index>.npz`` is an uncompressed NumPy archive that describes itself:

- ``features``: the embedding, float16, ``[1, C, H, W]`` (``[1, 256, 64, 64]``, 2 MiB for
  LiteMedSAM);
- ``header``: a 0-d string array holding JSON ``{"format", "index", "volume", "shape",
  "dtype", "blake2b"}``: the slice index, the volume folder's key digest and a blake2b
  (128 bit) of those fields followed by the float16 bytes.

Every read (:meth:`DiskEmbeddingStore.get`, :meth:`DiskEmbeddingStore.verified_indices`)
checks all of it, and that the values are finite; a file that fails (unreadable, another
slice's or another volume's file, damaged values, NaN/inf) is logged as one warning naming
the slice and the reason, deleted, and reads as a miss, so that the slice is computed again.
Non-finite embeddings are never written. Reading and verifying a LiteMedSAM slice takes
~5 ms on 2 cores (the blake2b ~2.5 ms of it, the archive ~1 ms), against ~0.5 ms for the
unchecked ``.npy`` of format 1; a decoder call takes ~100 ms there.

Concurrency
-----------
Files are written atomically (a unique temporary name, then ``os.replace``), so readers see
whole files only, and two processes embedding the same volume replace each other's slices
with whole files. A lock file ``<cache>/embeddings/.lock`` keeps writing and deleting apart
(:class:`CacheLock`, ``fcntl.flock``): writers hold it shared (:meth:`~DiskEmbeddingStore.put`
while it writes one slice; :class:`~.volume_embedding.VolumeEmbedder` for a whole run), and
:func:`clear_cache` and :func:`prune` take it exclusively without waiting for a run:
:func:`clear_cache` raises :class:`CacheBusyError`, :func:`prune` skips. Where ``fcntl`` does
not exist (Windows) there is no lock: a clear while another process writes may remove slices
that process has just written (they are embedded again when next needed). Either way
:meth:`~DiskEmbeddingStore.put` re-creates a removed folder and its ``meta.json`` before
writing a slice.

:func:`prune` keeps the whole cache under a size limit, removing the least recently used
volumes first.
"""

from __future__ import annotations

import contextlib
import hashlib
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

from .preprocess import resized_shape
from .protocol import Embedding

try:  # POSIX
    import fcntl
except ImportError:  # Windows: no lock (see the module docstring)
    fcntl = None

logger = logging.getLogger(__name__)

#: Version of the folder key and slice file format (2: self-verifying ``.npz`` slices).
FORMAT_VERSION = 2
META = "meta.json"
#: The lock file in the embeddings root (see :class:`CacheLock`).
LOCK = ".lock"
SUFFIX = ".npz"
#: Default size limit of the on-disk cache (all volumes together).
DEFAULT_DISK_BYTES = 4 * 1024**3
#: Seconds a writer waits for a clear or prune by another process to finish.
WRITE_LOCK_TIMEOUT = 30.0
#: Seconds :func:`clear_cache` waits for writers to finish (a single slice takes ~10 ms;
#: a whole-volume run holds the lock throughout, so clearing fails rather than waits).
CLEAR_LOCK_WAIT = 2.0
_HASH_CHUNK = 64 * 1024**2
_FLOAT16_EXPONENT = 0x7C00  # all exponent bits set: inf or NaN


class CacheBusyError(OSError):
    """The embedding cache is locked by another process (see :class:`CacheLock`)."""


def embeddings_dir() -> Path:
    """Root of the on-disk embedding cache: ``<cache>/embeddings``."""
    return cache_dir() / "embeddings"


class CacheLock:
    """A shared (writer) or exclusive (clear, prune) lock on an embeddings root.

    ``fcntl.flock`` on ``<root>/.lock``; any number of shared holders, or one exclusive
    holder. Locks belong to an open file, so two threads of one process exclude each other
    like two processes. Without ``fcntl`` (Windows) acquiring always succeeds and locks
    nothing; on a file system without ``flock`` support it does the same (with a debug log).

    Parameters
    ----------
    root
        The embeddings root (created when missing).
    exclusive
        Exclusive (clearing, pruning) rather than shared (writing).
    timeout
        Seconds to keep trying before :meth:`acquire` raises :class:`CacheBusyError`
        (0: one try; None: :data:`WRITE_LOCK_TIMEOUT`).
    """

    def __init__(self, root: Path, *, exclusive: bool = False,
                 timeout: float | None = None) -> None:
        self.root = Path(root)
        self.exclusive = exclusive
        self.timeout = float(WRITE_LOCK_TIMEOUT if timeout is None else timeout)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (always False without ``fcntl``)."""
        return self._fd is not None

    def busy_message(self) -> str:
        if self.exclusive:
            return (f"another napari-medsam process is writing embeddings in {self.root}; "
                    "try again when it has finished")
        return (f"another napari-medsam process is clearing the embeddings in {self.root}; "
                f"gave up after {self.timeout:g} s")

    def acquire(self) -> CacheLock:
        """Take the lock (see the class docstring); raises :class:`CacheBusyError`."""
        if fcntl is None or self._fd is not None:
            return self
        path = self.root / LOCK
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.timeout
        while True:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise CacheBusyError(self.busy_message()) from None
                time.sleep(0.02)
                continue
            except OSError as exc:  # e.g. a network file system without flock
                os.close(fd)
                logger.debug("no lock on %s: %s", path, exc)
                return self
            try:  # the file locked must still be the lock file (not one removed meanwhile)
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        """Let the lock go (closing the file releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def array_digest(array: np.ndarray) -> str:
    """blake2b (128 bit) of an array's raw bytes, dtype and shape.

    A C-contiguous array is hashed in place (memoryview, no copy); other arrays are hashed
    one sub-array along the first axis at a time, so no full copy is ever made.
    """
    arr = np.asarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{arr.dtype.str}|{arr.shape}|".encode())
    if arr.flags.c_contiguous:
        flat = memoryview(arr.reshape(-1).view(np.uint8))
        for start in range(0, len(flat), _HASH_CHUNK):
            digest.update(flat[start:start + _HASH_CHUNK])
    else:
        for part in arr:
            digest.update(memoryview(np.ascontiguousarray(part).reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def model_digest(model) -> str:
    """sha256 of the model's encoder file (the registry's value when the file is absent)."""
    from .model_files import file_digest

    spec = model.spec
    path = spec.path("encoder")
    if path.is_file():
        return file_digest(path)
    return str(spec.files["encoder"].sha256)


def model_precision(model) -> str:
    """The encoder's numeric precision (``"f32"`` for ONNX Runtime, OpenVINO's otherwise)."""
    return str(getattr(model, "precision", "f32"))


@dataclass(frozen=True)
class VolumeKey:
    """What an embedding of a slice depends on, besides the slice index."""

    image: str
    shape: tuple[int, ...]
    axis: int
    mapping: str
    model: str
    model_sha256: str
    precision: str = "f32"

    @property
    def digest(self) -> str:
        text = json.dumps([FORMAT_VERSION, self.image, list(self.shape), self.axis,
                           self.mapping, self.model, self.model_sha256, self.precision])
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def volume_key(volume: np.ndarray, axis: int, mapping_key: str, model, *,
               image_digest: str | None = None) -> VolumeKey:
    """The :class:`VolumeKey` of ``volume`` sliced along ``axis`` for ``model``.

    Parameters
    ----------
    volume
        The raw image array (before the intensity mapping).
    axis
        Axis the slices cut across.
    mapping_key
        ``IntensityMapping.key`` of the mapping the model sees.
    model
        A prompt model with ``name`` and ``spec`` (and ``precision`` for OpenVINO).
    image_digest
        :func:`array_digest` of ``volume`` if already known (it is the slow part).
    """
    if not 0 <= axis < np.ndim(volume):
        raise ValueError(f"axis {axis} is outside a {np.ndim(volume)}D volume")
    return VolumeKey(image=image_digest or array_digest(volume),
                     shape=tuple(int(v) for v in np.shape(volume)), axis=int(axis),
                     mapping=str(mapping_key), model=model.name,
                     model_sha256=model_digest(model), precision=model_precision(model))


# -- slice files -------------------------------------------------------------------------------

def slice_checksum(features: np.ndarray, index: int, volume: str) -> str:
    """blake2b (128 bit) of a slice file's fields and its features' bytes (C order)."""
    arr = np.ascontiguousarray(features)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{FORMAT_VERSION}|{volume}|{int(index)}|{arr.dtype.str}|"
                  f"{list(arr.shape)}|".encode())
    digest.update(memoryview(arr.reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def all_finite_float16(features: np.ndarray) -> bool:
    """Whether a float16 array holds no NaN or inf (a bit test, ~4x faster than isfinite)."""
    bits = np.ascontiguousarray(features).reshape(-1).view(np.uint16)
    return bits.size == 0 or int((bits & _FLOAT16_EXPONENT).max()) < _FLOAT16_EXPONENT


def write_slice_file(path: Path, features: np.ndarray, index: int, volume: str) -> None:
    """Write one slice file (see the module docstring) atomically.

    A uniquely named temporary file in the same folder is written, then renamed over
    ``path``, so readers (and writers of the same slice) only ever see whole files.
    """
    arr = np.ascontiguousarray(features, dtype=np.float16)
    header = {"format": FORMAT_VERSION, "index": int(index), "volume": volume,
              "shape": list(arr.shape), "dtype": arr.dtype.str,
              "blake2b": slice_checksum(arr, index, volume)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + SUFFIX,
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, features=arr, header=np.array(json.dumps(header)))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unreadable(exc: Exception) -> str:
    text = " ".join(str(exc).split())  # one line
    return f"damaged or not a slice file ({type(exc).__name__}{': ' + text if text else ''})"


def read_slice_file(fh, index: int, volume: str) -> tuple[np.ndarray | None, str | None]:
    """Read and verify one slice file: ``(features, None)`` or ``(None, reason)``.

    Parameters
    ----------
    fh
        The file, open for binary reading.
    index, volume
        The slice index and the volume folder's key digest the file must carry.
    """
    try:
        archive = np.load(fh, allow_pickle=False)
    except Exception as exc:  # any failure to parse makes it unusable
        return None, _unreadable(exc)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        return None, "not a slice archive (.npz)"
    with archive:
        try:
            if not {"features", "header"} <= set(archive.files):
                return None, f"not a slice archive (it holds {sorted(archive.files)})"
            header = json.loads(str(archive["header"][()]))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            if header.get("format") != FORMAT_VERSION:
                return None, (f"format {header.get('format')!r}, not {FORMAT_VERSION}")
            if header.get("index") != index:
                return None, f"it holds slice {header.get('index')!r}"
            if header.get("volume") != volume:
                return None, f"it belongs to another volume ({str(header.get('volume'))[:12]})"
            features = archive["features"]
        except Exception as exc:
            return None, _unreadable(exc)
    if (features.dtype != np.float16 or features.ndim != 4 or features.shape[0] != 1
            or features.size == 0 or list(features.shape) != header.get("shape")):
        return None, f"unexpected features {features.dtype} {list(features.shape)}"
    if slice_checksum(features, index, volume) != header.get("blake2b"):
        return None, "checksum mismatch (damaged or overwritten)"
    if not all_finite_float16(features):
        return None, "non-finite values (NaN or inf)"
    return features, None


@dataclass
class DiskEmbeddingStore:
    """The on-disk embeddings of one volume along one axis.

    ``get(index)`` / ``put(index, embedding)`` mirror :class:`~.cache.EmbeddingCache`; the
    slice index along :attr:`key.axis <VolumeKey.axis>` is the key. Every read verifies the
    slice file (see the module docstring); a bad file is deleted with a warning and reads as
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
    def for_volume(cls, volume: np.ndarray, axis: int, mapping_key: str, model, *,
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
        :data:`WRITE_LOCK_TIMEOUT` s for a clear by another process, then raising
        :class:`CacheBusyError`), and re-creates the volume folder and its ``meta.json``
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

"""Slice embeddings kept on disk (float16), so that re-opening a scan embeds nothing again.

Layout: ``<cache>/embeddings/<key>/`` per (image content, axis, intensity mapping, model,
precision), holding ``meta.json`` and one ``<index>.npy`` per embedded slice (float16,
[1, 256, 64, 64], 2 MiB for LiteMedSAM). The key is a blake2b digest of

- the image's raw bytes, dtype and shape (:func:`array_digest`, ~1 GB/s, no copy of a
  C-contiguous array);
- the axis the slices cut across;
- the intensity mapping's ``key`` (what the model sees);
- the encoder file's sha256 (:func:`model_digest`) and the encoder's numeric precision.

Files are written atomically (temporary name, then ``os.replace``); a damaged or foreign
file reads as a miss. :func:`prune` keeps the whole cache under a size limit, removing the
least recently used volumes first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medsam.paths import cache_dir

from .preprocess import resized_shape
from .protocol import Embedding

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META = "meta.json"
#: Default size limit of the on-disk cache (all volumes together).
DEFAULT_DISK_BYTES = 4 * 1024**3
_HASH_CHUNK = 64 * 1024**2


def embeddings_dir() -> Path:
    """Root of the on-disk embedding cache: ``<cache>/embeddings``."""
    return cache_dir() / "embeddings"


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


@dataclass
class DiskEmbeddingStore:
    """The on-disk embeddings of one volume along one axis.

    ``get(index)`` / ``put(index, embedding)`` mirror :class:`~.cache.EmbeddingCache`; the
    slice index along :attr:`key.axis <VolumeKey.axis>` is the key.

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

    def __post_init__(self) -> None:
        self.root = Path(self.root) if self.root is not None else embeddings_dir()
        self.directory = self.root / self.key.digest
        shape = list(self.key.shape)
        shape.pop(self.key.axis)
        self.original_size = (int(shape[0]), int(shape[1]))
        self.resized_size = resized_shape(*self.original_size, self.input_size)
        self._meta_written = (self.directory / META).is_file()
        if self._meta_written:
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

    def _path(self, index: int) -> Path:
        return self.directory / f"{int(index):05d}.npy"

    def _touch(self) -> None:
        try:
            os.utime(self.directory / META)
        except OSError:
            pass

    def __contains__(self, index: int) -> bool:
        return self._path(index).is_file()

    def indices(self) -> list[int]:
        """Slice indices stored so far."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem) for p in self.directory.glob("*.npy") if p.stem.isdigit())

    def get(self, index: int) -> Embedding | None:
        """The stored embedding of slice ``index`` (float16), or None."""
        path = self._path(index)
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        if features.ndim != 4 or features.shape[0] != 1:
            logger.warning("Ignoring %s: unexpected shape %s", path, features.shape)
            self.misses += 1
            return None
        self.hits += 1
        return Embedding(features=features, original_size=self.original_size,
                         resized_size=self.resized_size, input_size=self.input_size,
                         model=self.key.model)

    def put(self, index: int, embedding: Embedding | np.ndarray) -> None:
        """Store slice ``index``'s embedding as float16 (atomic write)."""
        if not 0 <= index < self.size:
            raise IndexError(f"slice {index} is outside 0..{self.size - 1}")
        features = embedding.features if isinstance(embedding, Embedding) else embedding
        if isinstance(embedding, Embedding) and embedding.model != self.key.model:
            raise ValueError(f"embedding was made by {embedding.model!r}, not "
                             f"{self.key.model!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._meta_written:
            self._write_meta()
        path = self._path(index)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.asarray(features, dtype=np.float16), allow_pickle=False)
        os.replace(tmp, path)

    def _write_meta(self) -> None:
        meta = {"format": FORMAT_VERSION, "shape": list(self.key.shape),
                "axis": self.key.axis, "mapping": self.key.mapping, "model": self.key.model,
                "model_sha256": self.key.model_sha256, "precision": self.key.precision,
                "image_blake2b": self.key.image, "original_size": list(self.original_size),
                "resized_size": list(self.resized_size), "input_size": self.input_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = self.directory / f".{META}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.directory / META)
        self._meta_written = True

    @property
    def nbytes(self) -> int:
        """Bytes on disk for this volume."""
        return _dir_bytes(self.directory)

    def clear(self) -> None:
        """Remove this volume's embeddings."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self._meta_written = False


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
        if not folder.is_dir():
            continue
        meta_path = folder / META
        try:
            meta = json.loads(meta_path.read_text())
            last = meta_path.stat().st_mtime
        except (OSError, ValueError):
            meta, last = {}, folder.stat().st_mtime
        slices = sum(1 for p in folder.glob("*.npy") if p.stem.isdigit())
        entries.append(CacheEntry(folder, slices, _dir_bytes(folder), last, meta))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def cache_size(root: Path | None = None) -> int:
    """Total bytes of the on-disk embedding cache."""
    return sum(e.nbytes for e in cache_entries(root))


def clear_cache(root: Path | None = None) -> int:
    """Delete every stored embedding; returns the bytes freed."""
    root = Path(root) if root is not None else embeddings_dir()
    freed = cache_size(root)
    if root.is_dir():
        shutil.rmtree(root, ignore_errors=True)
    return freed


def prune(max_bytes: int = DEFAULT_DISK_BYTES, root: Path | None = None,
          keep: Path | None = None) -> int:
    """Remove least recently used volumes until the cache fits ``max_bytes``.

    ``keep`` (a volume folder, e.g. the one being filled) is never removed. Returns the
    bytes freed.
    """
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

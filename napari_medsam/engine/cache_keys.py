"""What an on-disk embedding depends on: content digests and the :class:`VolumeKey`.

The folder of a volume in :mod:`.disk_cache` is named by :attr:`VolumeKey.digest`, a blake2b
digest of

- the image's raw bytes, dtype and shape (:func:`array_digest`, ~1 GB/s, no copy of a
  C-contiguous array; crash recovery keys its files by it too);
- the axis the slices cut across;
- the intensity mapping's ``key`` (what the model sees);
- the encoder file's sha256 (:func:`model_digest`) and the encoder's numeric precision
  (:func:`model_precision`);
- :data:`~.slice_files.FORMAT_VERSION` (a new format starts new folders: old caches simply
  miss; their folders stay until pruned or cleared).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .protocol import PromptModel
from .slice_files import FORMAT_VERSION

_HASH_CHUNK = 64 * 1024**2


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


def model_digest(model: PromptModel) -> str:
    """sha256 of the model's encoder file (the registry's value when the file is absent)."""
    from .model_files import file_digest

    spec = model.spec
    path = spec.path("encoder")
    if path.is_file():
        return file_digest(path)
    return str(spec.files["encoder"].sha256)


def model_precision(model: PromptModel) -> str:
    """The encoder's numeric precision (``"f32"`` for ONNX Runtime, OpenVINO's otherwise)."""
    return str(model.precision)


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


def volume_key(volume: np.ndarray, axis: int, mapping_key: str, model: PromptModel, *,
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
                     mapping=str(mapping_key), model=model.spec.encoder_model,
                     model_sha256=model_digest(model), precision=model_precision(model))

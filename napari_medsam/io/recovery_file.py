"""One crash-recovery file: what it holds, and reading it back verified.

A recovery file (where they live and how they are written: :mod:`napari_medsam.io.recovery`)
is a NumPy ``.npz`` (deflate) holding

- ``labels``: the label map, in its own dtype and shape (label maps compress ~100-700x);
- ``meta``: a JSON string (:func:`file_meta`, :func:`encode_meta`) with the scan digest, the
  labels layer name, the time, the object and voxel counts, the layer metadata (scan
  geometry: ``spacing``, ``origin``, ``direction``, ``shape``; ``label_names``), label
  colours, the layer's scale and translate, and a digest of the labels.

:class:`RecoverySnapshot` is what one autosave writes; :func:`read_file` reads a file back
and checks every field, the labels' shape and dtype and their digest, raising one of
:data:`UNREADABLE` when the file is damaged; :class:`RecoveryInfo` and
:class:`RecoveredLabels` are what the store reports.

No napari or Qt imports here.
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsam.engine.cache_keys import array_digest

from .labels_mirror import count_objects

__all__ = [
    "FORMAT_VERSION",
    "UNREADABLE",
    "RecoveredLabels",
    "RecoveryInfo",
    "RecoverySnapshot",
    "file_meta",
    "info_from",
    "encode_meta",
    "read_file",
]

FORMAT_VERSION = 1
#: What reading a damaged recovery file raises.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class RecoverySnapshot:
    """What one autosave writes.

    Attributes
    ----------
    image_digest : str
        Content digest of the scan (the recovery file's key).
    labels : numpy.ndarray
        The label map; :meth:`~napari_medsam.io.recovery.RecoveryStore.save` reads it while
        writing, so it must not be modified until ``save`` returns.
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


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback for numpy values, paths and other metadata oddities."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def file_meta(snapshot: RecoverySnapshot, labels: np.ndarray) -> dict[str, Any]:
    """The JSON part of the recovery file of ``snapshot`` (``labels``: its label map)."""
    objects, voxels = count_objects(labels)
    colors = {
        ("default" if key is None else str(int(key))): [float(c) for c in value]
        for key, value in (snapshot.colors or {}).items()
    }
    return {
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


def encode_meta(meta: Mapping[str, Any]) -> str:
    """``meta`` (see :func:`file_meta`) as JSON; numpy values and the like are converted."""
    return json.dumps(meta, default=_jsonable)


def _read_meta(npz: Any) -> dict[str, Any]:
    meta = json.loads(str(npz["meta"][()]))
    if not isinstance(meta, dict):
        raise ValueError("its metadata is not a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unknown recovery format {meta.get('format')!r}")
    return meta


def info_from(path: Path, meta: Mapping[str, Any]) -> RecoveryInfo:
    """The :class:`RecoveryInfo` of the file ``path`` whose JSON part is ``meta``."""
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


def read_file(path: Path, with_labels: bool) -> tuple[dict[str, Any], np.ndarray | None]:
    """(meta, labels or None) of a recovery file; raises one of :data:`UNREADABLE` if damaged."""
    with np.load(path, allow_pickle=False) as npz:
        meta = _read_meta(npz)
        info_from(path, meta)  # every field present and well typed
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

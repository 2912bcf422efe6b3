"""Training examples for adaptation: what the model sees, and the masks it should answer.

An example is one object on one slice, as inference meets it: the slice's embedding from the
product's own engine and preprocessing (the session's intensity mapping, its disk cache), the
object's mask in that image's pixels, and the target in the decoder's low-resolution space.
With ``zoom == "auto"`` an object whose box gets a region of interest in the session
(:meth:`~napari_medsam.segmentation.SegmentationSession.crop_for`) also gives a second
example: the ROI's embedding and the mask on the ROI's canvas, the view a small box is
segmented in at inference.

Embeddings are kept as float16 (2 MiB per LiteMedSAM slice); beyond a memory budget they go
to a temporary folder and are read back when needed. No torch and no Qt here.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_medsam.engine.preprocess import resized_shape
from napari_medsam.engine.resize import resize_area_uint8
from napari_medsam.segmentation.session import SegmentationSession, SliceRef

logger = logging.getLogger(__name__)

#: An object's mask on a slice must have at least this many pixels to train on.
MIN_PIXELS = 10
#: Float16 embeddings kept in memory before they go to a temporary folder.
DEFAULT_MEMORY_BYTES = 1024**3


class EmbeddingBank:
    """Float16 embeddings by key: in memory up to ``memory_bytes``, then on disk."""

    def __init__(self, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.memory_bytes = int(memory_bytes)
        self._memory: dict[tuple, np.ndarray] = {}
        self._files: dict[tuple, Path] = {}
        self._bytes = 0
        self._folder: tempfile.TemporaryDirectory | None = None

    def __contains__(self, key: tuple) -> bool:
        return key in self._memory or key in self._files

    def __len__(self) -> int:
        return len(self._memory) + len(self._files)

    def put(self, key: tuple, features: np.ndarray) -> None:
        half = np.ascontiguousarray(features, dtype=np.float16)
        if self._bytes + half.nbytes <= self.memory_bytes:
            self._memory[key] = half
            self._bytes += half.nbytes
            return
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="napari-medsam-adapt-")
        path = Path(self._folder.name) / f"{len(self._files):06d}.npy"
        np.save(path, half)
        self._files[key] = path

    def get(self, key: tuple) -> np.ndarray:
        """The float16 features stored under ``key``."""
        if key in self._memory:
            return self._memory[key]
        return np.load(self._files[key])

    def close(self) -> None:
        """Remove the temporary folder (if any)."""
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


@dataclass(frozen=True)
class Example:
    """One object on one slice (or on the slice's region of interest).

    Attributes
    ----------
    scan
        Index of the scan (pair) it comes from.
    label
        The label value in that scan's label map.
    index
        Slice index along the axis.
    view
        ``"slice"`` or ``"roi"``.
    key
        Key of its embedding in the :class:`EmbeddingBank`.
    size
        (rows, cols) of the image that was embedded (the slice, or the ROI's canvas).
    mask
        The object's mask in that image's pixels.
    target
        The mask in the decoder's low-resolution space (float32 0/1, padded like the input).
    """

    scan: int
    label: int
    index: int
    view: str
    key: tuple
    size: tuple[int, int]
    mask: np.ndarray = field(repr=False)
    target: np.ndarray = field(repr=False)

    @property
    def group(self) -> tuple[int, int, int]:
        """(scan, label, slice): the examples of one object on one slice."""
        return (self.scan, self.label, self.index)


def low_res_target(mask: np.ndarray, input_size: int, low_res_size: int) -> np.ndarray:
    """``mask`` resized and padded as the model's input, at the decoder's low resolution."""
    rows, cols = resized_shape(*mask.shape, input_size)
    resized = resize_area_uint8(np.asarray(mask, dtype=np.uint8) * 255, rows, cols) >= 128
    padded = np.zeros((input_size, input_size), dtype=np.uint8)
    padded[:rows, :cols] = resized * 255
    if low_res_size != input_size:
        padded = resize_area_uint8(padded, low_res_size, low_res_size)
    return (padded >= 128).astype(np.float32)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) around a 2D mask, at least two pixels wide and high."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    height, width = mask.shape
    if x1 == x0:
        x0, x1 = (x0, x0 + 1) if x0 + 1 < width else (x0 - 1, x0)
    if y1 == y0:
        y0, y1 = (y0, y0 + 1) if y0 + 1 < height else (y0 - 1, y0)
    return x0, y0, x1, y1


def innermost_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) farthest from the border in the largest piece of ``mask``."""
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    distance = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def object_slices(labels: np.ndarray, values: Sequence[int], axis: int = 0,
                  min_pixels: int = MIN_PIXELS) -> list[tuple[int, int]]:
    """(label, slice index) of every object slice with at least ``min_pixels`` pixels."""
    other = tuple(a for a in range(3) if a != axis)
    found = []
    for value in values:
        counts = (labels == value).sum(axis=other)
        found += [(int(value), int(i)) for i in np.flatnonzero(counts >= min_pixels)]
    return found


def collect_examples(session: SegmentationSession, labels: np.ndarray, values: Sequence[int],
                     scan: int, bank: EmbeddingBank, *, axis: int = 0,
                     min_pixels: int = MIN_PIXELS,
                     progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> list[Example]:
    """The examples of one scan: every labelled object slice, and its ROI view.

    Parameters
    ----------
    session
        A session on the scan with the model, mapping and zoom that inference uses.
    labels
        The label map on the scan's voxel grid.
    values
        Label values to train on.
    scan
        Index of the scan (stored in the examples).
    bank
        Where the embeddings go (float16).
    progress
        Called with (done, total) object slices.
    cancel
        Polled between slices; a cancelled collection returns what it has.
    """
    spec = session.model.spec
    input_size, low_res = spec.input_size, spec.low_res_size
    todo = object_slices(labels, values, axis, min_pixels)
    examples: list[Example] = []
    for done, (value, index) in enumerate(todo, start=1):
        if cancel is not None and cancel():
            break
        ref = SliceRef(axis, index)
        mask = np.take(labels, index, axis=axis) == value
        key = (scan, axis, index, "slice")
        if key not in bank:
            bank.put(key, session.embedding(ref).features)
        examples.append(Example(scan, value, index, "slice", key, mask.shape, mask,
                                low_res_target(mask, input_size, low_res)))
        crop = session.crop_for(ref, tight_box(mask))
        if crop is not None:
            roi_key = (scan, axis, index, "roi", crop.key)
            if roi_key not in bank:
                bank.put(roi_key, session.crop_embedding(ref, crop).features)
            canvas = np.zeros((crop.canvas, crop.canvas), dtype=bool)  # padding: no object
            canvas[: crop.rows, : crop.cols] = crop.extract(mask)
            examples.append(Example(scan, value, index, "roi", roi_key, canvas.shape, canvas,
                                    low_res_target(canvas, input_size, low_res)))
        if progress is not None:
            progress(done, len(todo))
    return examples

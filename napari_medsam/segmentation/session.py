"""The segmentation session: one model, one volume, an embedding cache, the current preview.

This is the model behind the widget (and the CLI): it knows nothing about Qt or napari.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_medsam.engine.cache import DEFAULT_BUDGET_BYTES, EmbeddingCache
from napari_medsam.engine.protocol import Box, Embedding, Point, Prediction, PromptModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceRef:
    """A 2D slice of the volume: the array ``axis`` it cuts across and its ``index``."""

    axis: int
    index: int


class SegmentationSession:
    """Embeds slices on demand (cached) and turns prompts into masks.

    Parameters
    ----------
    model
        Any :class:`~napari_medsam.engine.protocol.PromptModel`.
    volume
        The image array in (z, y, x) order (any numeric type).
    mapping
        The intensity mapping (``apply(array) -> uint8`` and a ``key``) that the model sees;
        the same mapping sets the layer's contrast limits.
    data_id
        Identifies the volume's contents in cache keys (e.g. ``id`` of the layer data).
    cache_bytes
        Memory budget of the embedding cache.
    disk_cache
        Also keep embeddings on disk (fp16, keyed by the image's contents, axis, mapping
        and model; see :mod:`napari_medsam.engine.disk_cache`), so that re-opening the same
        scan needs no encoder run.
    """

    def __init__(self, model: PromptModel, volume: np.ndarray, mapping, *,
                 data_id: object | None = None, cache_bytes: int = DEFAULT_BUDGET_BYTES,
                 cache: EmbeddingCache | None = None, disk_cache: bool = False) -> None:
        if np.ndim(volume) != 3:
            raise ValueError(f"expected a 3D volume, got shape {np.shape(volume)}")
        self.model = model
        self.volume = volume
        self.mapping = mapping
        self.data_id = id(volume) if data_id is None else data_id
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self._model_lock = threading.Lock()
        self.encoder_calls = 0
        self.disk_cache = disk_cache
        self._stores: dict[tuple[int, str], object] = {}
        self._digest: str | None = None
        self._store_lock = threading.Lock()

    def slice_image(self, ref: SliceRef) -> np.ndarray:
        """The slice as the model sees it (uint8 after the intensity mapping)."""
        if not 0 <= ref.axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2, got {ref.axis}")
        size = self.volume.shape[ref.axis]
        if not 0 <= ref.index < size:
            raise IndexError(f"slice {ref.index} is outside 0..{size - 1} along axis {ref.axis}")
        return self.mapping.apply(np.take(self.volume, ref.index, axis=ref.axis))

    def cache_key(self, ref: SliceRef) -> tuple:
        return (self.data_id, ref.axis, ref.index, self.mapping.key, self.model.name)

    def embedding(self, ref: SliceRef) -> Embedding:
        """The slice's embedding, computed once and then taken from the cache."""

        def compute() -> Embedding:
            store = self._store(ref.axis)
            if store is not None:
                stored = store.get(ref.index)
                if stored is not None:
                    return stored
            image = self.slice_image(ref)
            with self._model_lock:
                self.encoder_calls += 1
                embedding = self.model.embed(image)
            if store is not None:
                try:
                    store.put(ref.index, embedding)
                except OSError as exc:  # a full disk must not stop segmentation
                    logger.warning("embedding not written to the disk cache: %s", exc)
            return embedding

        return self.cache.get_or_compute(self.cache_key(ref), compute)

    def _store(self, axis: int):
        """The disk store of ``axis`` under the current mapping (None when disabled)."""
        if not self.disk_cache or not hasattr(self.model, "spec"):
            return None
        from napari_medsam.engine.disk_cache import DiskEmbeddingStore, array_digest

        key = (axis, str(self.mapping.key))
        with self._store_lock:
            if key not in self._stores:
                if self._digest is None:
                    self._digest = array_digest(np.asarray(self.volume))
                self._stores[key] = DiskEmbeddingStore.for_volume(
                    self.volume, axis, str(self.mapping.key), self.model,
                    image_digest=self._digest)
            return self._stores[key]

    def is_embedded(self, ref: SliceRef) -> bool:
        return self.cache_key(ref) in self.cache

    def predict(self, ref: SliceRef, *, box: Box | None = None,
                points: Sequence[Point] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        """A mask on slice ``ref`` for a box (x_min, y_min, x_max, y_max) and/or clicks."""
        embedding = self.embedding(ref)
        with self._model_lock:
            return self.model.predict(embedding, box=box, points=points, mask_input=mask_input)

    def predict_prompts(self, ref: SliceRef, boxes: Sequence[Box] = (),
                        positives: Sequence[tuple[float, float]] = (),
                        negatives: Sequence[tuple[float, float]] = ()) -> np.ndarray | None:
        """The mask for all prompts on a slice (None when there is nothing to segment).

        Boxes alone: the union of their masks. With clicks, the clicks are turned into a box
        by :func:`~napari_medsam.segmentation.clicks.segment_clicks` (LiteMedSAM answers
        boxes only), refined inside the last drawn box if there is one; other boxes add
        their own masks.
        """
        boxes = list(boxes)
        if not boxes and not positives:
            return None
        mask = None
        if positives or negatives:
            from .clicks import segment_clicks

            embedding = self.embedding(ref)
            with self._model_lock:
                result = segment_clicks(self.model, embedding, list(positives),
                                        list(negatives), box=boxes.pop() if boxes else None,
                                        image=self.slice_image(ref))
            mask = np.asarray(result.mask, dtype=bool)
        for box in boxes:
            box_mask = self.predict(ref, box=box).mask
            mask = box_mask if mask is None else (mask | box_mask)
        return mask

    def prefetch(self, ref: SliceRef, radius: int = 2):
        """Embed the slices next to ``ref`` (nearest first); yields each index done.

        A generator, so that a worker can stop it between slices when the user acts.
        """
        size = self.volume.shape[ref.axis]
        for step in range(1, radius + 1):
            for index in (ref.index + step, ref.index - step):
                neighbour = SliceRef(ref.axis, index)
                if 0 <= index < size and not self.is_embedded(neighbour):
                    self.embedding(neighbour)
                    yield index

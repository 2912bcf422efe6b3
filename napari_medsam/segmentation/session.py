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
    """

    def __init__(self, model: PromptModel, volume: np.ndarray, mapping, *,
                 data_id: object | None = None, cache_bytes: int = DEFAULT_BUDGET_BYTES,
                 cache: EmbeddingCache | None = None) -> None:
        if np.ndim(volume) != 3:
            raise ValueError(f"expected a 3D volume, got shape {np.shape(volume)}")
        self.model = model
        self.volume = volume
        self.mapping = mapping
        self.data_id = id(volume) if data_id is None else data_id
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self._model_lock = threading.Lock()
        self.encoder_calls = 0

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
            image = self.slice_image(ref)
            with self._model_lock:
                self.encoder_calls += 1
                return self.model.embed(image)

        return self.cache.get_or_compute(self.cache_key(ref), compute)

    def is_embedded(self, ref: SliceRef) -> bool:
        return self.cache_key(ref) in self.cache

    def predict(self, ref: SliceRef, *, box: Box | None = None,
                points: Sequence[Point] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        """A mask on slice ``ref`` for a box (x_min, y_min, x_max, y_max) and/or clicks."""
        embedding = self.embedding(ref)
        with self._model_lock:
            return self.model.predict(embedding, box=box, points=points, mask_input=mask_input)

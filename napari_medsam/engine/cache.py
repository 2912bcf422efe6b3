"""A memory-bounded LRU cache of slice embeddings (stored as float16)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import replace

import numpy as np

from .protocol import Embedding

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 512 * 1024**2


class EmbeddingCache:
    """Least-recently-used embeddings up to ``max_bytes`` (float16 copies, thread-safe).

    A LiteMedSAM embedding is 256x64x64 values: 2 MiB in float16, so the default budget
    holds about 256 slices.
    """

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._items: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> Embedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: Hashable, embedding: Embedding) -> Embedding:
        """Store a float16 copy of ``embedding``; evict the oldest entries past the budget."""
        stored = replace(embedding, features=embedding.features.astype(np.float16))
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key).nbytes
            self._items[key] = stored
            self._bytes += stored.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return stored

    def get_or_compute(self, key: Hashable, compute: Callable[[], Embedding]) -> Embedding:
        found = self.get(key)
        if found is not None:
            return found
        return self.put(key, compute())

    def resize(self, max_bytes: int) -> None:
        """Change the budget, evicting at once if needed."""
        with self._lock:
            self.max_bytes = int(max_bytes)
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

"""Embed every slice of a volume along an axis in the background, into the disk cache.

Order: the current slice first, then outward (``start, start+1, start-1, start+2, ...``), so
the slices the user is about to visit are ready first. Slices already in the disk cache are
never encoded again. The work is cancellable between slices (a ``cancel`` callable, or simply
closing the generator of :meth:`VolumeEmbedder.iter_embed`, which is what napari's
``worker.quit()`` does), and reports progress with a rate and an ETA.

How slices reach the encoder is decided by :func:`~.volume_encode_plan.encode_plan` (see
:mod:`.volume_encode_plan`); the progress records live in :mod:`.volume_progress`. Their
names are re-exported here, so ``from napari_medsam.engine.volume_embedding import ...``
keeps working for all of them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .disk_cache import CacheLock, DiskEmbeddingStore, prune
from .preprocess import to_uint8
from .protocol import AsyncEncoder, BatchEncoder, Embedding, PromptModel
from .volume_encode_plan import (
    OPENVINO_PARALLEL,
    PARALLEL_MIN_FREE,
    EncodePlan,
    encode_plan,
    plan_for_providers,
    slice_order,
)
from .volume_progress import EmbedProgress, EmbedSummary

__all__ = [
    "OPENVINO_PARALLEL",
    "PARALLEL_MIN_FREE",
    "EmbedProgress",
    "EmbedSummary",
    "EncodePlan",
    "VolumeEmbedder",
    "embed_volume",
    "encode_plan",
    "plan_for_providers",
    "slice_order",
]

logger = logging.getLogger(__name__)


class VolumeEmbedder:
    """Embeds every slice of a volume along one axis (see the module docstring).

    Parameters
    ----------
    model
        A prompt model (ONNX Runtime or OpenVINO).
    volume
        The raw image array (3D); slices are taken one at a time (no full-volume copy).
    mapping
        The intensity mapping the model sees (``apply(slice) -> uint8`` and ``key``); None
        when the volume is already 0..255.
    axis
        Axis the slices cut across.
    store
        Where the embeddings go: a :class:`~.disk_cache.DiskEmbeddingStore`, ``"auto"``
        (the store for this volume/axis/mapping/model in the user cache) or None (memory
        only).
    cache, cache_key
        Optionally also fill an in-memory :class:`~.cache.EmbeddingCache`, with
        ``cache_key(index)`` as key (e.g. the session's ``cache_key(SliceRef(axis, i))``).
        Slices are added only while the cache has room, so the ones nearest the start stay
        in memory and the rest is read back from disk when visited.
    parallel
        See :func:`encode_plan`.
    disk_limit
        Prune the disk cache to this many bytes before starting (None: no pruning); the
        volume being filled is kept.
    image_digest
        :func:`~.disk_cache.array_digest` of ``volume`` when already known.
    release_after
        Free OpenVINO's THROUGHPUT encoder when done (its per-stream buffers, ~150 MiB
        each; recompiling takes ~0.5 s from the compile cache). Freeing it holds the GIL
        for ~110 ms on 2 cores, so a GUI keeps it (``False``) to avoid a UI stall.
    """

    def __init__(self, model: PromptModel, volume: np.ndarray, mapping=None, axis: int = 0, *,
                 store: DiskEmbeddingStore | str | None = "auto", cache=None,
                 cache_key: Callable[[int], Hashable] | None = None,
                 parallel: bool | None = None, disk_limit: int | None = None,
                 image_digest: str | None = None, release_after: bool = True) -> None:
        if np.ndim(volume) != 3:
            raise ValueError(f"expected a 3D volume, got shape {np.shape(volume)}")
        if not 0 <= axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if cache is not None and cache_key is None:
            raise ValueError("cache_key is needed to fill an in-memory cache")
        self.model = model
        self.volume = volume
        self.mapping = mapping
        self.axis = int(axis)
        self.size = int(np.shape(volume)[axis])
        mapping_key = str(mapping.key) if mapping is not None else "none"
        if store == "auto":
            store = DiskEmbeddingStore.for_volume(volume, axis, mapping_key, model,
                                                  image_digest=image_digest)
        self.store: DiskEmbeddingStore | None = store
        self.cache = cache
        self.cache_key = cache_key
        self.plan = encode_plan(model, parallel)
        #: The model's volume-encoding capabilities (declared by its class, read once).
        self._async_encoder: AsyncEncoder | None = model.async_encoder
        self._batch_encoder: BatchEncoder | None = model.batch_encoder
        self.disk_limit = disk_limit
        self.release_after = release_after
        self.encoder_calls = 0
        shape = list(np.shape(volume))
        shape.pop(self.axis)
        self.original_size = (int(shape[0]), int(shape[1]))
        self._resized: tuple[int, int] | None = None
        self._running = threading.Event()
        self._running.set()

    # -- sharing the CPU with interactive work ---------------------------------------------

    def pause(self) -> None:
        """Feed no new slice to the encoder until :meth:`resume` (slices in flight finish).

        Call it while the user draws or a prompt is decoded, so that the interactive calls
        get the cores; thread-safe.
        """
        self._running.clear()

    def resume(self) -> None:
        """Continue after :meth:`pause`."""
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def _wait_while_paused(self, cancel: Callable[[], bool] | None) -> bool:
        """Block while paused; False when cancelled meanwhile."""
        while not self._running.wait(0.05):
            if cancel is not None and cancel():
                return False
        return True

    # -- one slice ---------------------------------------------------------------------------

    def slice_image(self, index: int) -> np.ndarray:
        """Slice ``index`` as the model sees it (uint8)."""
        raw = np.take(self.volume, index, axis=self.axis)
        return self.mapping.apply(raw) if self.mapping is not None else to_uint8(raw)

    def _prepare(self, index: int) -> tuple[int, np.ndarray]:
        tensor, resized = self.model.preprocess(self.slice_image(index))
        self._resized = tuple(resized)
        return index, tensor

    def _embedding(self, features: np.ndarray) -> Embedding:
        return Embedding(features=features, original_size=self.original_size,
                         resized_size=self._resized, input_size=self.model.spec.input_size,
                         model=self.model.spec.encoder_model)

    def _keep(self, index: int, embedding: Embedding) -> None:
        if self.cache is None:
            return
        if self.cache.nbytes + embedding.features.size * 2 <= self.cache.max_bytes:
            self.cache.put(self.cache_key(index), embedding)

    def _in_memory(self, index: int) -> Embedding | None:
        if self.cache is None:
            return None
        key = self.cache_key(index)
        return self.cache.get(key) if key in self.cache else None

    # -- the whole axis ----------------------------------------------------------------------

    def missing(self) -> list[int]:
        """Slices not yet in the disk store (all of them without a store).

        Only stored slices whose file verifies count (each file is read: ~5 ms per
        LiteMedSAM slice); bad files are deleted with a warning, so they are encoded again.
        """
        if self.store is None:
            return list(range(self.size))
        have = set(self.store.verified_indices())
        return [i for i in range(self.size) if i not in have]

    def iter_embed(self, start: int | None = None, *,
                   cancel: Callable[[], bool] | None = None) -> Iterator[EmbedProgress]:
        """Embed the axis (``start`` first, then outward), yielding progress per slice.

        Parameters
        ----------
        start
            The current slice (default: the middle one).
        cancel
            Called between slices; embedding stops when it returns True (slices already in
            flight are finished and stored). Closing the generator stops it too (slices in
            flight are finished but dropped).

        Notes
        -----
        With a disk store, the cache root's shared :class:`~.disk_cache.CacheLock` is held
        from the first slice until the generator ends, so that no other process clears or
        prunes the cache meanwhile (:func:`~.disk_cache.clear_cache` then raises
        :class:`~.disk_cache.CacheBusyError`). Stored slices count as done only when their
        file verifies (see :meth:`missing`).
        """
        begin = time.perf_counter()
        order = slice_order(self.size, self.size // 2 if start is None else start)
        if self.store is None:
            yield from self._embed_order(order, begin, cancel)
            return
        if self.disk_limit is not None:
            prune(self.disk_limit, self.store.root, keep=self.store.directory)
        # a writer for the whole run: no other process clears or prunes the cache meanwhile
        with CacheLock(self.store.root):
            yield from self._embed_order(order, begin, cancel)

    def _embed_order(self, order: list[int], begin: float,
                     cancel: Callable[[], bool] | None) -> Iterator[EmbedProgress]:
        done = from_disk = 0
        encoded_at_start = self.encoder_calls
        todo: list[int] = []
        # slices with a file; each is read and verified before it counts as done (a bad
        # file is deleted with a warning and the slice is encoded again)
        stored = set(self.store.indices()) if self.store is not None else set()
        for index in order:
            found = self.store.get(index) if index in stored else None
            if found is not None:
                from_disk += 1
                done += 1
                self._keep(index, found)
                yield EmbedProgress(index, done, self.size, 0, from_disk,
                                    time.perf_counter() - begin, 0.0, None)
            elif (held := self._in_memory(index)) is not None:
                if self.store is not None:  # embedded interactively: save it, don't encode
                    self.store.put(index, held)
                done += 1
                yield EmbedProgress(index, done, self.size, 0, from_disk,
                                    time.perf_counter() - begin, 0.0, None)
            else:
                todo.append(index)
        if not todo:
            return
        encode_begin = time.perf_counter()

        def inputs() -> Iterator[tuple[int, np.ndarray]]:
            for index in todo:
                if not self._wait_while_paused(cancel) or (cancel is not None and cancel()):
                    logger.info("Volume embedding cancelled")
                    return
                yield self._prepare(index)

        encoder = self._encode(inputs())
        try:
            yield from self._store_all(encoder, todo, begin, encode_begin, done, from_disk,
                                       encoded_at_start)
        finally:
            encoder.close()
            if self.plan.kind == "openvino-async" and self.release_after:
                self._async_encoder.release_throughput()  # its buffers are only needed meanwhile

    def _store_all(self, encoder, todo, begin, encode_begin, done, from_disk,
                   encoded_at_start) -> Iterator[EmbedProgress]:
        for index, features in encoder:
            self.encoder_calls += 1
            embedding = self._embedding(features)
            if self.store is not None:
                self.store.put(index, embedding)
            self._keep(index, embedding)
            done += 1
            encoded = self.encoder_calls - encoded_at_start
            spent = time.perf_counter() - encode_begin
            rate = encoded / spent if spent > 0 else 0.0
            left = len(todo) - encoded
            yield EmbedProgress(index, done, self.size, encoded, from_disk,
                                time.perf_counter() - begin, rate,
                                left / rate if rate > 0 else None)

    def _encode(self, inputs: Iterator[tuple[int, np.ndarray]]
                ) -> Iterator[tuple[int, np.ndarray]]:
        """(index, features) for each prepared input, by the model's :class:`EncodePlan`."""
        size = self.original_size
        if self.plan.kind == "openvino-async":
            # the current slice alone on the LATENCY request (all cores: ready soonest), then
            # the rest with several requests in flight (finishing roughly in order)
            first = next(inputs, None)
            if first is None:
                return
            index, tensor = first
            yield index, self.model.embed_preprocessed(tensor, size, self._resized).features
            yield from self._async_encoder.iter_encode(inputs)
            return
        if self.plan.kind == "batched":
            yield from self._encode_batches(inputs)
            return
        if self.plan.kind == "pipelined-loop":
            with ThreadPoolExecutor(1, thread_name_prefix="medsam-prep") as pool:
                pending = pool.submit(next, inputs, None)
                while True:
                    item = pending.result()
                    if item is None:
                        return
                    pending = pool.submit(next, inputs, None)
                    index, tensor = item
                    emb = self.model.embed_preprocessed(tensor, size, self._resized)
                    yield index, emb.features
        for index, tensor in inputs:
            yield index, self.model.embed_preprocessed(tensor, size, self._resized).features

    def _encode_batches(self, inputs: Iterator[tuple[int, np.ndarray]]
                        ) -> Iterator[tuple[int, np.ndarray]]:
        """The ``"batched"`` plan: up to ``plan.in_flight`` slices per encoder call.

        The next batch is prepared on a helper thread while the current one runs. The model
        falls back to batch-1 calls by itself when its batched encoder is missing or fails
        (same results); the plan then says ``"pipelined-loop"``.
        """
        batch = self.plan.in_flight

        def take() -> list[tuple[int, np.ndarray]]:
            return list(itertools.islice(inputs, batch))

        with ThreadPoolExecutor(1, thread_name_prefix="medsam-prep") as pool:
            pending = pool.submit(take)
            while True:
                items = pending.result()
                if not items:
                    return
                pending = pool.submit(take)
                features = self._batch_encoder.encode_batch(
                    np.concatenate([t for _, t in items]))
                if self.plan.kind == "batched" and not self._batch_encoder.batching:
                    size = int(self.model.spec.input_size)
                    self.plan = EncodePlan("pipelined-loop", 1, (1, 3, size, size))
                    logger.info("Volume embedding goes on one slice per encoder call")
                for k, (index, _) in enumerate(items):
                    yield index, features[k:k + 1].copy()

    def run(self, start: int | None = None, *,
            progress: Callable[[EmbedProgress], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> EmbedSummary:
        """Embed the whole axis; ``progress`` is called after every slice."""
        begin = time.perf_counter()
        calls = self.encoder_calls
        last = None
        for last in self.iter_embed(start, cancel=cancel):
            if progress is not None:
                progress(last)
        done = last.done if last is not None else self.size - len(self.missing())
        from_disk = last.from_disk if last is not None else 0
        store_dir = self.store.directory if self.store is not None else None
        return EmbedSummary(total=self.size, done=done, encoded=self.encoder_calls - calls,
                            from_disk=from_disk, cancelled=done < self.size,
                            wall_s=time.perf_counter() - begin, plan=self.plan,
                            store_dir=store_dir,
                            store_bytes=self.store.nbytes if self.store is not None else 0)


def embed_volume(model: PromptModel, volume: np.ndarray, mapping=None, axis: int = 0, *,
                 start: int | None = None,
                 progress: Callable[[EmbedProgress], None] | None = None,
                 cancel: Callable[[], bool] | None = None, **kwargs) -> EmbedSummary:
    """Embed every slice of ``volume`` along ``axis`` into the disk cache.

    A shortcut for ``VolumeEmbedder(model, volume, mapping, axis, **kwargs).run(...)``.
    """
    embedder = VolumeEmbedder(model, volume, mapping, axis, **kwargs)
    return embedder.run(start, progress=progress, cancel=cancel)

"""The tests' one fake prompt model: it implements the engine's declared interfaces.

:class:`FakeModel` satisfies :class:`~napari_medsam.engine.protocol.PromptModel` (and, with
``batch_size``, :class:`~napari_medsam.engine.protocol.BatchEncoder`) with LiteMedSAM's
registry entry and shapes, but no network: its "encoder" is a cheap function of its input
(or a fixed embedding) and its "decoder" answers a box with exactly that box. Tests of
geometry, bookkeeping, caches and encode plans use it where the real model would be slow or
blur the check; ``src_tests/test_engine_protocol.py`` checks it against the Protocols, like
the real models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_medsam.engine.preprocess import preprocess_slice
from napari_medsam.engine.protocol import Box, Click, Embedding, Prediction
from napari_medsam.models.registry import ModelSpec, get_spec

#: The embedding shape of LiteMedSAM.
FEATURES_SHAPE = (1, 256, 64, 64)


class FakeModel:
    """LiteMedSAM's spec and shapes; a cheap encoder and a box-filling decoder.

    Parameters
    ----------
    providers
        What it reports as running (e.g. ``[providers.CPU]``, or a fake GPU's list: the
        encode plan follows it).
    precision
        The encoder precision it reports (a part of disk cache keys).
    batch_size
        Offer the batched encoder with this batch size (None: no batched encoder).
    fail_after
        After this many :meth:`encode_batch` calls, batching turns off as
        ``OnnxPromptModel`` does when its batched call fails (results stay the same).
    features
        A fixed embedding every encoder call returns (e.g. a real stored one); default: the
        input tensor's mean everywhere, in ``features_shape``.
    features_shape
        Shape of the made-up embeddings (``(1, 1, 1, 1)`` keeps box-filling tests light).
    spec
        The registry entry (default ``litemedsam``).

    Attributes
    ----------
    shapes
        The shape of every encoder input, in call order (batched calls included).
    encoder_calls
        Encoder calls so far (one per batch for :meth:`encode_batch`).
    """

    def __init__(self, providers: Sequence[str] = ("CPUExecutionProvider",), *,
                 precision: str = "f32", batch_size: int | None = None,
                 fail_after: int | None = None, features: np.ndarray | None = None,
                 features_shape: tuple[int, ...] = FEATURES_SHAPE,
                 spec: ModelSpec | None = None) -> None:
        self.spec = spec if spec is not None else get_spec("litemedsam")
        self.name = self.spec.name
        self.precision = precision
        self.providers = list(providers)
        self.device_name = "fake " + ", ".join(self.providers)
        self.batch_size = int(batch_size) if batch_size is not None else 1
        self.batching = batch_size is not None
        #: The capabilities, as a real model's class declares them (settable here).
        self.batch_encoder: FakeModel | None = self if batch_size is not None else None
        self.async_encoder: FakeAsyncEncoder | None = None
        self.fail_after = fail_after
        self.features = features
        self.features_shape = tuple(features_shape)
        self.shapes: list[tuple[int, ...]] = []
        self.encoder_calls = 0

    def with_decoder(self, path: str | Path) -> FakeModel:
        return self

    # -- encoder ---------------------------------------------------------------------------

    def _features(self, tensor: np.ndarray) -> np.ndarray:
        if self.features is not None:
            return np.asarray(self.features, np.float32).reshape(FEATURES_SHAPE)
        return np.full(self.features_shape, float(tensor.mean()), np.float32)

    def preprocess(self, image2d: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        return preprocess_slice(image2d, self.spec.input_size)

    def embed_preprocessed(self, tensor: np.ndarray, original_size: tuple[int, int],
                           resized_size: tuple[int, int]) -> Embedding:
        self.shapes.append(tuple(tensor.shape))
        self.encoder_calls += 1
        return Embedding(self._features(tensor), tuple(original_size), tuple(resized_size),
                         self.spec.input_size, self.spec.encoder_model)

    def embed(self, image2d: np.ndarray) -> Embedding:
        tensor, resized = self.preprocess(image2d)
        return self.embed_preprocessed(tensor, np.shape(image2d), resized)

    def encode_batch(self, tensor: np.ndarray) -> np.ndarray:
        """The batched encoder: one call for N slices."""
        self.shapes.append(tuple(tensor.shape))
        self.encoder_calls += 1
        if self.fail_after is not None and len(self.shapes) > self.fail_after:
            self.batching = False  # what OnnxPromptModel does when its batched call fails
        return np.concatenate([self._features(t) for t in tensor])

    # -- decoder ---------------------------------------------------------------------------

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Click] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        """Exactly the box (both ends included), or the positive clicks' pixels alone."""
        mask = np.zeros(embedding.original_size, bool)
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0:y1 + 1, x0:x1 + 1] = True
        elif points:
            for click in map(Click.of, points):
                if click.positive:
                    mask[int(round(click.y)), int(round(click.x))] = True
        logits = np.where(mask, 10.0, -10.0).astype(np.float32)  # model-like logits
        return Prediction(logits, mask, 1.0, np.zeros((1, 1, 4, 4), np.float32))


def box_fill_model() -> FakeModel:
    """A fake whose mask is exactly the box it is given, with tiny embeddings: for tests
    of geometry and bookkeeping, where the real model's masks would blur the check."""
    return FakeModel(features_shape=(1, 1, 1, 1))


class FakeAsyncEncoder:
    """An :class:`~napari_medsam.engine.protocol.AsyncEncoder` around a model's batch-1
    encoder (results in input order), for plans with requests in flight."""

    def __init__(self, model: FakeModel, parallel_requests: int = 2) -> None:
        self.model = model
        self.parallel_requests = parallel_requests
        self.released = 0

    def iter_encode(self, items):
        for key, tensor in items:
            yield key, self.model.embed_preprocessed(tensor, (1, 1), (1, 1)).features

    def release_throughput(self) -> None:
        self.released += 1


class CountingModel:
    """A real model that counts every encoder call (interactive, batched or in flight);
    everything else is the wrapped model's."""

    def __init__(self, model) -> None:
        self._model = model
        self.calls = 0
        self.name, self.spec, self.precision = model.name, model.spec, model.precision

    @property
    def providers(self) -> list[str]:
        return self._model.providers

    @property
    def device_name(self) -> str:
        return self._model.device_name

    @property
    def batch_encoder(self):
        return None if self._model.batch_encoder is None else self

    @property
    def async_encoder(self):
        return None if self._model.async_encoder is None else self

    @property
    def batch_size(self) -> int:
        return self._model.batch_encoder.batch_size

    @property
    def batching(self) -> bool:
        return self._model.batch_encoder.batching

    @property
    def parallel_requests(self) -> int:
        return self._model.async_encoder.parallel_requests

    def with_decoder(self, path):
        return CountingModel(self._model.with_decoder(path))

    def preprocess(self, image2d):
        return self._model.preprocess(image2d)

    def embed(self, image2d):
        tensor, resized = self.preprocess(image2d)
        return self.embed_preprocessed(tensor, np.shape(image2d), resized)

    def embed_preprocessed(self, tensor: np.ndarray, original_size: tuple[int, int],
                           resized_size: tuple[int, int]) -> Embedding:
        self.calls += 1
        return self._model.embed_preprocessed(tensor, original_size, resized_size)

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Click] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        return self._model.predict(embedding, box=box, points=points, mask_input=mask_input)

    def encode_batch(self, tensor):
        self.calls += len(tensor)
        return self._model.batch_encoder.encode_batch(tensor)

    def iter_encode(self, items):
        for key, features in self._model.async_encoder.iter_encode(items):
            self.calls += 1
            yield key, features

    def release_throughput(self) -> None:
        self._model.async_encoder.release_throughput()

"""What every prompt model offers: the engine's declared interfaces (no napari, no Qt).

- :class:`PromptModel`: embed a slice once, then answer many prompts on it. ONNX Runtime
  (:class:`~.onnx_model.OnnxPromptModel`) and OpenVINO
  (:class:`~.openvino_model.OpenVINOPromptModel`) implement it, and so does the tests' fake
  (``src_tests/fakes.py``).
- :class:`BatchEncoder` and :class:`AsyncEncoder`: optional ways to encode a whole volume
  faster. A model declares which it offers once, in its class, through its
  ``batch_encoder`` and ``async_encoder`` attributes (the capability, or None); the core
  reads those instead of probing the model for methods.
- :class:`Box` and :class:`Click`: the prompts, as typed values. Both are tuples, so the old
  ``(x_min, y_min, x_max, y_max)`` and ``(x, y, label)`` forms stay valid where they are
  converted (:meth:`Box.of`, :meth:`Click.of`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np

from .preprocess import PromptError

if TYPE_CHECKING:
    from napari_medsam.models.registry import ModelSpec


class Box(NamedTuple):
    """A box on a slice in pixel indices: x = column, y = row (both ends included)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @classmethod
    def of(cls, value: Sequence[float]) -> Box:
        """A :class:`Box` from ``(x_min, y_min, x_max, y_max)`` (any sequence or array of
        4 numbers; the values are kept as given, the model checks them).

        Raises
        ------
        PromptError
            When ``value`` does not hold 4 numbers.
        """
        if isinstance(value, Box):
            return value
        values = tuple(value)
        if len(values) != 4:  # e.g. [[x0, y0], [x1, y1]], as the model accepts it
            flat = np.asarray(value, dtype=np.float64).reshape(-1)
            if flat.size != 4:
                raise PromptError("a box needs 4 finite numbers (x_min, y_min, x_max, "
                                  f"y_max), got {value}")
            values = tuple(float(v) for v in flat)
        return cls(*values)


class Click(NamedTuple):
    """A click on a slice: x = column, y = row; ``label`` 1 = positive, 0 = negative."""

    x: float
    y: float
    label: int = 1

    @property
    def positive(self) -> bool:
        return self.label == 1

    @property
    def xy(self) -> tuple[float, float]:
        return (self.x, self.y)

    @classmethod
    def of(cls, value: Sequence[float]) -> Click:
        """A :class:`Click` from ``(x, y, label)`` (see :func:`clicks_from` for (x, y)
        lists).

        Raises
        ------
        PromptError
            When ``value`` is not 3 numbers.
        """
        if isinstance(value, Click):
            return value
        values = tuple(value)
        if len(values) != 3:
            raise PromptError(f"a click needs (x, y, label), got {value}")
        return cls(values[0], values[1], values[2])  # kept as given (the model casts)


def clicks_from(positives: Iterable[Sequence[float]] = (),
                negatives: Iterable[Sequence[float]] = ()) -> list[Click]:
    """Positive and negative ``(x, y)`` lists as one list of clicks (positives first)."""
    return ([Click(p[0], p[1], 1) for p in positives]
            + [Click(n[0], n[1], 0) for n in negatives])


def split_clicks(clicks: Iterable[Click]) -> tuple[list[tuple[float, float]],
                                                    list[tuple[float, float]]]:
    """The ``(x, y)`` of the positive and of the negative clicks."""
    clicks = list(clicks)
    return ([c.xy for c in clicks if c.positive], [c.xy for c in clicks if not c.positive])


@dataclass(frozen=True)
class Embedding:
    """The encoder's output for one 2D slice, with what is needed to map prompts onto it.

    Attributes
    ----------
    features
        Image embeddings, shape (1, 256, 64, 64); float32 or float16 (cached copies).
    original_size
        (rows, cols) of the slice that was embedded.
    resized_size
        (rows, cols) of the slice after resizing its longest side to the model input.
    input_size
        Side of the square model input (256 for LiteMedSAM).
    model
        Registry name of the model that made it (an embedding is only valid for it).
    """

    features: np.ndarray
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    input_size: int
    model: str

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


@dataclass(frozen=True)
class Prediction:
    """A mask for one prompt on one slice.

    Attributes
    ----------
    logits
        Mask logits at the slice's own size (rows, cols), float32.
    mask
        ``logits > 0`` (boolean, the slice's size).
    iou
        The model's predicted IoU of the mask.
    low_res_logits
        The decoder's low-resolution logits (e.g. 256x256), usable as the next
        ``mask_input``.
    """

    logits: np.ndarray
    mask: np.ndarray
    iou: float
    low_res_logits: np.ndarray


@runtime_checkable
class BatchEncoder(Protocol):
    """Several preprocessed slices per encoder call (ONNX Runtime on a GPU)."""

    #: Slices per call of the batched encoder.
    batch_size: int

    @property
    def batching(self) -> bool:
        """Whether the batched encoder can run now (it turns off after a failure)."""

    def encode_batch(self, tensor: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, C, E, E]`` of N preprocessed slices ``[N, 3, S, S]``."""


@runtime_checkable
class AsyncEncoder(Protocol):
    """Several encoder requests in flight (OpenVINO's throughput encoder)."""

    @property
    def parallel_requests(self) -> int:
        """Requests :meth:`iter_encode` keeps in flight (may compile the encoder)."""

    def iter_encode(self, items: Iterable[tuple[Hashable, np.ndarray]]
                    ) -> Iterator[tuple[Hashable, np.ndarray]]:
        """``(key, features)`` of ``(key, tensor)`` pairs, in order of completion."""

    def release_throughput(self) -> None:
        """Free what :meth:`iter_encode` needed (called after a volume)."""


@runtime_checkable
class Predictor(Protocol):
    """What answers prompts on an embedded slice (a :class:`PromptModel`, or the session's
    per-slice predictor that the click search uses)."""

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Click] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        """Decode a mask for a box and/or clicks (and optionally previous logits)."""


@runtime_checkable
class PromptModel(Predictor, Protocol):
    """A SAM-style model: embed a slice once, then answer many prompts on it."""

    #: Registry name of the model.
    name: str
    #: The registry entry (input size, preprocessing, files, what prompts it answers).
    spec: ModelSpec
    #: The encoder's numeric precision (``"f32"``, or OpenVINO's ``"bf16"``).
    precision: str

    @property
    def providers(self) -> list[str]:
        """What really runs (e.g. ``["CPUExecutionProvider"]``)."""

    @property
    def device_name(self) -> str:
        """What runs, for people (e.g. ``"CPU"``, ``"CPU (OpenVINO f32)"``)."""

    @property
    def batch_encoder(self) -> BatchEncoder | None:
        """The model's batched encoder capability, or None (decided by its class)."""

    @property
    def async_encoder(self) -> AsyncEncoder | None:
        """The model's in-flight encoder capability, or None (decided by its class)."""

    def preprocess(self, image2d: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The encoder input ``[1, 3, S, S]`` of a slice and its resized (rows, cols)."""

    def embed_preprocessed(self, tensor: np.ndarray, original_size: tuple[int, int],
                           resized_size: tuple[int, int]) -> Embedding:
        """Run the encoder on a preprocessed ``[1, 3, S, S]`` tensor."""

    def embed(self, image2d: np.ndarray) -> Embedding:
        """Run the image encoder on a 2D slice already mapped to 0..255."""

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Click] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        """Decode a mask for a box and/or clicks (and optionally previous logits)."""

    def with_decoder(self, path: str | Path) -> PromptModel:
        """This model with another decoder file (the encoder and embeddings shared)."""

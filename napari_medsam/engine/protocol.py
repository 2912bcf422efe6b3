"""What every prompt model offers: the engine's small interface (no napari, no Qt)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

#: A box on a slice: (x_min, y_min, x_max, y_max) in pixel indices, x = column, y = row.
Box = Sequence[float]
#: A click on a slice: (x, y, label) with label 1 = positive, 0 = negative.
Point = Sequence[float]


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
class PromptModel(Protocol):
    """A SAM-style model: embed a slice once, then answer many prompts on it."""

    name: str

    @property
    def providers(self) -> list[str]:
        """What really runs (e.g. ``["CPUExecutionProvider"]``)."""

    def embed(self, image2d: np.ndarray) -> Embedding:
        """Run the image encoder on a 2D slice already mapped to 0..255."""

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Point] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        """Decode a mask for a box and/or clicks (and optionally previous logits)."""

"""Adaptation within one scan: learn an object from its accepted slices, then propagate.

:func:`adapt_to_anchors` trains the decoder on the slices of one object that the user has
accepted (or painted), with the same examples and prompts as cohort adaptation, for a fixed
number of passes (there is nothing to hold out), and returns a model that shares the base
model's encoder and embeddings: a session on it reuses every slice already embedded. Nothing
is written to the registry; the decoder lives in a temporary ONNX file that the returned
model holds open.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medsam.segmentation.session import SegmentationSession

from .adapted_model import _export_decoder, _onnx_parity, _smoke_run, load_decoder
from .examples import EmbeddingBank, collect_examples
from .training import DecoderTrainer, TrainingConfig

logger = logging.getLogger(__name__)

#: Passes over the anchor examples (a few slices: quick, and enough to move the decoder).
ANCHOR_EPOCHS = 12


@dataclass
class AnchorAdaptation:
    """The adapted model and what it cost."""

    model: object
    examples: int
    seconds: float
    folder: tempfile.TemporaryDirectory


def adapt_to_anchors(session: SegmentationSession, axis: int,
                     anchors: Mapping[int, np.ndarray], *, epochs: int = ANCHOR_EPOCHS,
                     seed: int = 0, threads: int | None = None,
                     cancel: Callable[[], bool] | None = None) -> AnchorAdaptation:
    """Train the decoder on one object's anchor masks; a model for this scan's session.

    Parameters
    ----------
    session
        The session propagation runs in (its model, mapping, zoom and embeddings).
    axis
        The axis the anchors are slices of.
    anchors
        Slice index -> 2D mask of the object (at least one non-empty).
    epochs
        Passes over the anchor examples.
    """
    start = time.perf_counter()
    labels = np.zeros(session.volume.shape, dtype=np.uint8)
    view = np.moveaxis(labels, axis, 0)
    for index, mask in anchors.items():
        view[int(index)] = np.asarray(mask, dtype=bool)
    if not labels.any():
        raise ValueError("every anchor mask is empty: nothing to adapt to")
    bank = EmbeddingBank()
    try:
        examples = collect_examples(session, labels, [1], 0, bank, axis=axis, min_pixels=1,
                                    cancel=cancel)
        image_encoder, decoder = load_decoder(session.model.spec)
        config = TrainingConfig(prompts=("box",), epochs=epochs, seed=seed, threads=threads)
        trainer = DecoderTrainer(decoder, bank, session.model.spec.input_size, config)
        result = trainer.fit(examples, [], cancel=cancel)
        trainer.module.eval()
        folder = tempfile.TemporaryDirectory(prefix="napari-medsam-anchors-")
        path = Path(folder.name) / "decoder.onnx"
        _, args, masks, _ = _smoke_run(image_encoder, trainer.module, session.model.spec)
        _export_decoder(trainer.module, args, path)
        diff = _onnx_parity(path, args, masks)
        if diff > 1e-3:
            folder.cleanup()
            raise RuntimeError(f"the adapted decoder's export differs by {diff:.1e}")
    finally:
        bank.close()
    model = session.model.with_decoder(path)
    seconds = time.perf_counter() - start
    logger.info("adapted to %d anchor example(s) in %.1f s (%d steps)", len(examples), seconds,
                result.steps)
    return AnchorAdaptation(model, len(examples), seconds, folder)

"""Adaptation within one scan: learn an object from its accepted slices, then propagate.

:func:`adapt_to_anchors` trains the decoder on the slices of one object that the user has
accepted (or painted), with the same examples and box prompts as cohort adaptation. One
accepted slice (the middle one) is held out: it chooses the epoch, and the adapted decoder
is used only if it does better than the base model there, both from a box and when the
slice is reached by propagating from the other anchors (one slice alone cannot check
itself, so at least two are needed). The returned model shares the base model's
encoder and embeddings: a session on it reuses every slice already embedded. Nothing is
written to the registry; the decoder lives in a temporary ONNX file that the returned model
holds open.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medsam.adaptation.adapted_model import (
    _export_decoder,
    _onnx_parity,
    _smoke_run,
    load_decoder,
)
from napari_medsam.adaptation.examples import EmbeddingBank, collect_examples
from napari_medsam.adaptation.training import DecoderTrainer, TrainingConfig
from napari_medsam.segmentation.session import SegmentationSession

logger = logging.getLogger(__name__)

#: At most this many passes over the anchor examples (a few slices: quick); the held-out
#: anchor stops it earlier.
ANCHOR_EPOCHS = 12
#: Epochs without a better held-out anchor before training stops.
ANCHOR_PATIENCE = 3


@dataclass
class AnchorAdaptation:
    """The outcome: an adapted model, or None with the reason, and what it cost.

    Attributes
    ----------
    model
        The adapted model (shares the session model's encoder), or None: propagate with the
        base model.
    reason
        Why there is no model (empty when there is one).
    heldout
        The held-out anchor's slice index, and its Dice with the base and adapted decoder.
    """

    model: object | None
    examples: int
    seconds: float
    folder: tempfile.TemporaryDirectory | None = None
    reason: str = ""
    heldout: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        """Remove the temporary decoder file."""
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None


def adapt_to_anchors(session: SegmentationSession, axis: int,
                     anchors: Mapping[int, np.ndarray], *, epochs: int | None = None,
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
        Slice index -> 2D mask of the object (at least two non-empty to adapt).
    epochs
        A fixed number of passes (default: up to :data:`ANCHOR_EPOCHS`, stopping when the
        held-out anchor has not improved for :data:`ANCHOR_PATIENCE`).
    """
    start = time.perf_counter()
    filled = sorted(int(i) for i, mask in anchors.items() if np.any(mask))
    if not filled:
        raise ValueError("every anchor mask is empty: nothing to adapt to")
    if len(filled) < 2:
        return AnchorAdaptation(None, 0, time.perf_counter() - start,
                                reason="adapting needs two accepted slices or more (one is "
                                       "held out to check the result)")
    labels = np.zeros(session.volume.shape, dtype=np.uint8)
    view = np.moveaxis(labels, axis, 0)
    for index in filled:
        view[index] = np.asarray(anchors[index], dtype=bool)
    held = filled[len(filled) // 2]
    bank = EmbeddingBank()
    try:
        examples = collect_examples(session, labels, [1], 0, bank, axis=axis, min_pixels=1,
                                    cancel=cancel)
        train = [e for e in examples if e.index != held]
        heldout = [e for e in examples if e.index == held]
        image_encoder, decoder = load_decoder(session.model.spec)
        # the recipe of this study (the product's before 2026-12-06): decoder only, AdamW
        # 1e-4 constant, up to ANCHOR_EPOCHS with early stop
        config = TrainingConfig(prompts=("box",), epochs=epochs, max_epochs=ANCHOR_EPOCHS,
                                min_epochs=ANCHOR_EPOCHS, patience=ANCHOR_PATIENCE, lr=1e-4,
                                schedule="constant", train_prompt_encoder=False, seed=seed,
                                threads=threads)
        trainer = DecoderTrainer(decoder, bank, session.model.spec.input_size, config)
        result = trainer.fit(train, heldout, cancel=cancel)
        scores = {"slice": held, "base": round(result.base.box, 4),
                  "adapted": round(result.best.box, 4)}
        if result.cancelled or not result.improved:
            why = ("cancelled" if result.cancelled else
                   f"the adapted decoder did not beat the base model on the held-out slice "
                   f"{held} (box Dice {scores['base']:.3f} -> {scores['adapted']:.3f})")
            return AnchorAdaptation(None, len(examples), time.perf_counter() - start,
                                    reason=why, heldout=scores)
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
    # The box on the held-out slice is not what propagation asks of the decoder: it prompts
    # each slice from its neighbour's mask, far from the anchors. So the held-out slice is
    # also reached by propagating from the other anchors, with each decoder.
    others = {i: anchors[i] for i in filled if i != held}
    reached = {"base": _propagated_dice(session, axis, others, held, anchors[held])}
    adapted_session = SegmentationSession(model, session.volume, session.mapping,
                                          zoom=session.zoom, cache=session.cache,
                                          data_id=session.data_id)
    reached["adapted"] = _propagated_dice(adapted_session, axis, others, held, anchors[held])
    scores.update({f"propagated_{k}": round(v, 4) for k, v in reached.items()})
    seconds = time.perf_counter() - start
    if reached["adapted"] <= reached["base"]:
        folder.cleanup()
        return AnchorAdaptation(None, len(examples), seconds, heldout=scores, reason=(
            f"propagating to the held-out slice {held} went no better with the adapted "
            f"decoder (Dice {reached['base']:.3f} -> {reached['adapted']:.3f})"))
    logger.info("adapted to %d anchor example(s) in %.1f s (%d steps); held-out slice %d: "
                "box %.3f -> %.3f, propagated %.3f -> %.3f", len(examples), seconds,
                result.steps, held, scores["base"], scores["adapted"], reached["base"],
                reached["adapted"])
    return AnchorAdaptation(model, len(examples), seconds, folder, heldout=scores)


def _propagated_dice(session: SegmentationSession, axis: int,
                     anchors: Mapping[int, np.ndarray], index: int,
                     truth: np.ndarray) -> float:
    """Dice on slice ``index`` of a propagation from ``anchors`` (which exclude it)."""
    from napari_medsam.evaluation import dice
    from napari_medsam.segmentation.propagation import propagate_volume

    mask = np.take(propagate_volume(session, axis, anchors), index, axis=axis)
    return dice(mask, np.asarray(truth, dtype=bool))

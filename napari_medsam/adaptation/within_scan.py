"""Within one scan: learn an object from its accepted slices, then propagate between them.

Before *Propagate*, the decoder may be fine-tuned on the slices of the object the user has
accepted (or painted) along the propagation axis. The adapted decoder then answers only on
the slices between the outermost accepted ones; beyond them the session's own decoder goes
on as before (:meth:`~napari_medsam.segmentation.SegmentationSession.with_decoder_between`).

Why only between: trained on three slices, the decoder segments the slices between them far
better (hippocampus: 0.69-0.84 -> 0.81-0.92 Dice there), but beyond them it lost 0.18-0.34
Dice on three of five MRI objects (``research/adaptation_within_scan``, second round).

How it trains: boxes only (propagation prompts every slice with a box), the recipe of
:class:`~napari_medsam.adaptation.training.TrainingConfig` otherwise. First the middle
accepted slice is held out: the decoder trained on the others must segment it better from
a box than the base model does, else nothing is adapted (trained on two slices of a brain
tumour, the decoder cost 0.19 Dice between them). Then it is trained again on every
accepted slice. At least :data:`MIN_SLICES` accepted slices are needed (two to learn from,
one to check).

Torch is imported only here (through :mod:`.adapted_model`); the adapted decoder runs on
ONNX Runtime, from a temporary file (exported and checked against PyTorch like a saved
adapted model's, :func:`~.adapted_model.export_checked`) that :meth:`SliceAdaptation.close`
removes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_medsam.segmentation.propagation_steps import DEFAULT_PARAMS, PropagationParams

from .adapted_model import AdaptError, export_checked, load_decoder
from .examples import EmbeddingBank, collect_examples
from .training import DecoderTrainer, TrainingConfig

if TYPE_CHECKING:
    from napari_medsam.engine.protocol import PromptModel

logger = logging.getLogger(__name__)

__all__ = ["MIN_SLICES", "SliceAdaptation", "adapt_to_slices", "learn_and_propagate_job"]

#: Accepted slices needed: two to learn from and one held out to check the gain.
MIN_SLICES = 3
#: The recipe: boxes only, as propagation prompts.
CONFIG = TrainingConfig(prompts=("box",))


@dataclass
class SliceAdaptation:
    """A decoder adapted to one object's accepted slices, or None and why not.

    Attributes
    ----------
    model
        The session's model with the adapted decoder (same encoder), or None.
    axis, first, last
        The slices it answers on: ``first..last`` across ``axis`` (the outermost accepted
        slices).
    slices
        How many accepted slices it learned from; ``examples``: the training examples
        (each slice, and its zoomed view where zoom applies).
    seconds
        Wall time of the whole adaptation (embedding, check, training, export).
    reason
        Why there is no model (empty when there is one).
    check
        The held-out slice and its box Dice with the base and the adapted decoder.
    """

    model: PromptModel | None
    axis: int
    first: int
    last: int
    slices: int = 0
    examples: int = 0
    seconds: float = 0.0
    reason: str = ""
    check: dict[str, float] = field(default_factory=dict)
    folder: tempfile.TemporaryDirectory | None = None

    def session_for(self, session):
        """``session`` with the adapted decoder between :attr:`first` and :attr:`last`
        (``session`` itself when nothing was adapted)."""
        if self.model is None:
            return session
        return session.with_decoder_between(self.model, self.axis, self.first, self.last)

    def describe(self) -> str:
        """One line for the user."""
        if self.model is None:
            return f"Not adapted: {self.reason}"
        return (f"Learned the object from {self.slices} accepted slices in "
                f"{self.seconds:.0f} s (held-out slice {self.check['slice']}: box Dice "
                f"{self.check['base']:.2f} -> {self.check['adapted']:.2f}); it answers on "
                f"slices {self.first}-{self.last}")

    def close(self) -> None:
        """Remove the temporary decoder file."""
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None


def adapt_to_slices(session, axis: int, slices: Mapping[int, np.ndarray], *,
                    config: TrainingConfig | None = None,
                    progress: Callable[[str], None] | None = None,
                    cancel: Callable[[], bool] | None = None) -> SliceAdaptation:
    """Adapt ``session``'s decoder to one object from its accepted slices.

    Parameters
    ----------
    session
        The :class:`~napari_medsam.segmentation.SegmentationSession` propagation runs in:
        its model, mapping, zoom and embeddings are what training sees.
    axis
        The axis the slices are slices of.
    slices
        Slice index -> 2D mask of the object (empty masks are ignored).
    config
        The training recipe (default :data:`CONFIG`: boxes only).
    progress
        Called with one line of text per stage and training step.
    cancel
        Polled between slices and steps; a cancelled run adapts nothing.

    Returns
    -------
    SliceAdaptation
        With a model, or with ``model=None`` and the reason (too few slices, an adapted
        session model, no gain on the held-out slice, cancelled). Call its ``close``
        when the propagation is done.
    """
    start = time.perf_counter()
    filled = sorted(int(i) for i, mask in slices.items() if np.any(mask))
    first, last = (filled[0], filled[-1]) if filled else (0, 0)

    def nothing(reason: str, **extra) -> SliceAdaptation:
        logger.info("not adapted to the accepted slices: %s", reason)
        return SliceAdaptation(None, axis, first, last, len(filled),
                               seconds=time.perf_counter() - start, reason=reason, **extra)

    if len(filled) < MIN_SLICES:
        return nothing(f"learning needs {MIN_SLICES} accepted slices of the object along "
                       f"this axis (two to learn from, one to check); it has {len(filled)}")
    base = session.model.spec.source.get("adapted_from")
    if base:
        return nothing(f"{session.model.spec.name} is itself adapted; learn on {base}")
    say = progress or (lambda _text: None)
    config = config or CONFIG
    labels = np.zeros(session.volume.shape, dtype=np.uint8)
    view = np.moveaxis(labels, axis, 0)
    for index in filled:
        view[index] = np.asarray(slices[index], dtype=bool)
    held = filled[len(filled) // 2]
    bank = EmbeddingBank()
    try:
        examples = collect_examples(
            session, labels, [1], 0, bank, axis=axis, min_pixels=1, cancel=cancel,
            progress=lambda done, total: say(f"embedding accepted slices: {done}/{total}"))
        if cancel is not None and cancel():
            return nothing("cancelled")
        try:
            image_encoder, decoder = load_decoder(session.model.spec)
        except AdaptError as exc:
            return nothing(str(exc))

        def step(stage: str):
            def report(epoch: int, done: int, total: int, left: float | None) -> None:
                eta = f", about {left:.0f} s left" if left is not None else ""
                say(f"{stage}, epoch {epoch}: {done}/{total}{eta}")
            return report

        # the trainer trains a copy: ``decoder`` stays the base one for the second run
        trainer = DecoderTrainer(decoder, bank, session.model.spec.input_size, config)
        checked = trainer.fit([e for e in examples if e.index != held],
                              [e for e in examples if e.index == held],
                              progress=step(f"1/2 checking on slice {held}"), cancel=cancel)
        check = {"slice": held, "base": round(checked.base.box, 4),
                 "adapted": round(checked.best.box, 4)}
        if checked.cancelled:
            return nothing("cancelled", check=check)
        if not checked.improved:
            return nothing(f"learning from the other accepted slices did not segment slice "
                           f"{held} better (box Dice {check['base']:.3f} -> "
                           f"{check['adapted']:.3f})", check=check)
        trainer = DecoderTrainer(decoder, bank, session.model.spec.input_size, config)
        trained = trainer.fit(examples, [], progress=step("2/2 learning from all"),
                              cancel=cancel)
        if trained.cancelled:
            return nothing("cancelled", check=check)
    finally:
        bank.close()
    trainer.module.eval()
    folder = tempfile.TemporaryDirectory(prefix="napari-medsam-slices-")
    path = Path(folder.name) / "decoder.onnx"
    try:
        export_checked(image_encoder, trainer.module, session.model.spec, path)
    except AdaptError:
        folder.cleanup()
        raise
    model = session.model.with_decoder(path)
    adaptation = SliceAdaptation(model, axis, first, last, len(filled), len(examples),
                                 time.perf_counter() - start, check=check, folder=folder)
    logger.info("%s", adaptation.describe())
    return adaptation


def learn_and_propagate_job(session, ref, anchors: Mapping[int, np.ndarray], label: int,
                            cancel: Callable[[], bool],
                            stop_at: tuple[int, int] | None = None,
                            progress: Callable[[str], None] | None = None,
                            config: TrainingConfig | None = None,
                            params: PropagationParams = DEFAULT_PARAMS):
    """:func:`~napari_medsam.segmentation.annotation_jobs.propagate_job`, after adapting the
    decoder to the object's ``anchors`` (:func:`adapt_to_slices`): the same slices and
    progress into the preview; the pending result's lines end with what was learned (or
    why nothing was, in which case the run is the plain propagation). ``progress`` and
    ``config`` go to :func:`adapt_to_slices`, ``params`` to the propagation."""
    from dataclasses import replace

    from napari_medsam.segmentation.annotation_jobs import propagate_job

    adaptation = adapt_to_slices(session, ref.axis, anchors, config=config, progress=progress,
                                 cancel=cancel)
    try:
        pending = yield from propagate_job(adaptation.session_for(session), ref, anchors,
                                           label, cancel, stop_at, params)
    finally:
        adaptation.close()
    return replace(pending, lines=(*pending.lines, adaptation.describe()))

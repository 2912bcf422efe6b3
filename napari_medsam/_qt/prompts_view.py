"""The prompt part of the Segment widget: boxes and clicks on a slice -> the 2D preview.

:class:`PromptsView` follows the MedSAM boxes and clicks layers, predicts the mask of the
prompts on the displayed slice on a worker thread (a newer prompt supersedes an older run),
draws it into the preview layer and stores it in the annotation model, and embeds the
neighbouring slices meanwhile. It owns the *Negative clicks* switch. It reports upward
through Qt signals (:attr:`status`, :attr:`decoding`, :attr:`decoded`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QCheckBox

from napari_medsam._prompt_layers import (
    BOXES_LAYER,
    CLICKS_LAYER,
    PREVIEW_LAYER,
    boxes_on_slice,
    clicks_on_slice,
    color_clicks,
    draw_preview,
    prompts_off_slice,
)
from napari_medsam._qt.connections import Connections
from napari_medsam._qt.slices import current_slice
from napari_medsam.segmentation import SliceRef

if TYPE_CHECKING:
    from napari_medsam.segmentation.annotation import AnnotationModel

logger = logging.getLogger(__name__)


class PromptsView(QObject):
    """Prompts -> preview for one annotation model.

    Parameters
    ----------
    annotation
        The annotation model: its image, session and preview.
    viewer
        The napari viewer with the prompt and preview layers.
    busy
        Whether a whole-volume embedding runs (then no neighbours are prefetched).
    """

    #: A line for the widget's status.
    status = Signal(str)
    #: A prompt is being decoded on a worker (the volume embedding pauses meanwhile)...
    decoding = Signal()
    #: ...and is done.
    decoded = Signal()

    def __init__(self, annotation: AnnotationModel, viewer, busy: Callable[[], bool],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.annotation = annotation
        self.viewer = viewer
        self._busy = busy
        self._connections = Connections()
        self.destroyed.connect(self._connections.disconnect_all)
        self._watched: set[int] = set()
        self._generation = 0
        self._waiting = False  # a prompt came before the model: predict once it is there
        self._prefetch_worker = None
        self._predict_worker = None
        self.negative_check = QCheckBox("Negative clicks")
        self.negative_check.setToolTip("New clicks cut instead of add (T toggles)")
        self.negative_check.toggled.connect(self._on_click_sign)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(0)  # coalesces the events of one loop pass, adds no delay
        self._debounce.timeout.connect(self.update_preview)

    def watch(self, boxes, clicks) -> None:
        """Follow the prompt layers (once per layer)."""
        for layer, hook in ((boxes, self.schedule), (clicks, self._on_clicks_changed)):
            if id(layer) in self._watched:
                continue
            self._watched.add(id(layer))
            self._connections.connect(layer.events.data, hook)
            if layer is clicks:
                self._connections.connect(layer.events.feature_defaults,
                                          self._on_click_default)

    def schedule(self, *_args) -> None:
        """Predict again at the end of this event-loop pass."""
        self._debounce.start()

    def model_ready(self) -> None:
        """The session exists now: answer a prompt that came before it."""
        if self._waiting:
            self.update_preview()

    # ------------------------------------------------------------------ clicks
    def _on_click_sign(self, negative: bool) -> None:
        if CLICKS_LAYER in self.viewer.layers:
            self.viewer.layers[CLICKS_LAYER].feature_defaults = {"sign": 0 if negative else 1}

    def _on_click_default(self, *_args) -> None:
        """Keep *Negative clicks* showing the sign the next click gets.

        napari copies a selected point's features into the layer's defaults, so selecting a
        negative click by hand makes the next click negative: the check box follows.
        """
        if CLICKS_LAYER not in self.viewer.layers:
            return
        defaults = self.viewer.layers[CLICKS_LAYER].feature_defaults
        if "sign" not in defaults or len(defaults) == 0:
            return
        negative = int(defaults["sign"].iloc[0]) == 0
        if negative != self.negative_check.isChecked():
            self.negative_check.setChecked(negative)

    def _on_clicks_changed(self, *_args) -> None:
        color_clicks(self.viewer.layers[CLICKS_LAYER])
        self.schedule()

    # ------------------------------------------------------------------ preview
    def update_preview(self) -> None:
        """Predict the mask for the prompts on the displayed slice, on a worker thread.

        A newer prompt supersedes an older run: its result is dropped when it arrives.
        """
        ref = current_slice(self.viewer, self.annotation.image)
        if ref is None or BOXES_LAYER not in self.viewer.layers:
            return
        session = self.annotation.session
        if session is None:
            self._waiting = True
            self.status.emit("Waiting for the model...")
            return
        self._waiting = False
        boxes = boxes_on_slice(self.viewer.layers[BOXES_LAYER], ref)
        positives, negatives = clicks_on_slice(self.viewer.layers[CLICKS_LAYER], ref)
        self._generation += 1
        self.stop_prefetch()
        if not boxes and not positives:
            self._show_preview((self._generation, ref, None))
            return
        embedded = session.is_embedded(ref)
        self.status.emit(f"Segmenting slice {ref.index} (axis {ref.axis})"
                         + ("..." if embedded else ", embedding it first..."))
        self.decoding.emit()  # a running "Embed volume" leaves the cores to this prompt
        worker = create_worker(self._predict_job, self._generation, ref, boxes, positives,
                               negatives, session, _start_thread=False,
                               _connect={"returned": self._show_preview,
                                         "errored": self._on_error,
                                         "finished": self._on_decoded})
        self._predict_worker = worker
        worker.start()

    @staticmethod
    def _predict_job(generation, ref, boxes, positives, negatives, session):
        return generation, ref, session.predict_prompts(ref, boxes, positives, negatives)

    def _on_decoded(self) -> None:
        # a method, not ``self.decoded.emit``: PyQt drops a connection to a method when its
        # object is deleted, but a late worker signal forwarded to a deleted object's signal
        # crashes the process (napari closed while a preview is computed)
        self.decoded.emit()

    def _on_error(self, exc: Exception) -> None:
        show_error(f"MedSAM: {exc}")
        self.status.emit(f"Error: {exc}")

    def _show_preview(self, result) -> None:
        generation, ref, mask = result
        if generation != self._generation or PREVIEW_LAYER not in self.viewer.layers:
            return  # superseded by a newer prompt
        draw_preview(self.viewer.layers[PREVIEW_LAYER], self.annotation.preview_ref, ref, mask)
        self.annotation.set_preview(ref, mask)
        if mask is not None:
            self.status.emit(f"Preview on slice {ref.index}: {int(mask.sum())} pixels. "
                             "Enter to accept.")
            self._start_prefetch(ref)

    def _start_prefetch(self, ref: SliceRef) -> None:
        """Embed the neighbouring slices while the user looks at the preview."""
        session = self.annotation.session
        if session is None or self._busy():
            return
        self._prefetch_worker = create_worker(session.prefetch, ref, 2,
                                              _connect={"errored": lambda exc: logger.warning(
                                                  "prefetch failed: %s", exc)},
                                              _start_thread=False)
        self._prefetch_worker.start()

    def stop_prefetch(self) -> None:
        if self._prefetch_worker is not None:
            self._prefetch_worker.quit()
            self._prefetch_worker = None

    def clear(self, ref: SliceRef | None = None) -> None:
        """Drop the prompts of slice ``ref`` (default: the displayed one) and the preview."""
        ref = ref or current_slice(self.viewer, self.annotation.image)
        if ref is not None:
            negative = self.negative_check.isChecked()
            for name in (BOXES_LAYER, CLICKS_LAYER):
                if name not in self.viewer.layers:
                    continue
                layer = self.viewer.layers[name]
                keep = prompts_off_slice(layer, ref)
                if len(keep) != len(layer.data):
                    layer.selected_data = set(range(len(layer.data))) - set(keep)
                    layer.remove_selected()
            # selecting points makes napari copy their features into the defaults (and the
            # check box follows them): the sign chosen before the removal comes back
            self.negative_check.setChecked(negative)
            self._on_click_sign(negative)
        self._generation += 1
        self._show_preview((self._generation, ref, None))

    def close(self) -> None:
        """Stop following the prompt layers (the widget closes)."""
        self._debounce.stop()
        self.stop_prefetch()
        self._connections.disconnect_all()

"""The "Speed" part of the Segment widget: backend, server, memory budget, "Embed volume".

Thin Qt glue over :class:`napari_medsam.engine.volume_embedding.VolumeEmbedder`: the slices
of the displayed axis are embedded on a worker thread (the current slice first, then
outward) into the session's own in-memory cache and disk store, so that prompts on those
slices later need no encoder call. Progress (slices done/total, rate, ETA) arrives through a
Qt signal; Cancel stops between slices and keeps what is done. While the widget decodes a
prompt the embedding is paused (:meth:`EmbedPanel.hold` / :meth:`EmbedPanel.release`), so
that the interactive call gets the cores.

The panel holds the annotation model (its session) and the viewer; it reports upward through
Qt signals: :attr:`EmbedPanel.backend_chosen`, :attr:`EmbedPanel.server_chosen`,
:attr:`EmbedPanel.session_reset`, :attr:`EmbedPanel.status`.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import TYPE_CHECKING

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from napari_medsam._qt.server_view import ServerView
from napari_medsam._qt.slices import current_slice
from napari_medsam.engine.backends import (
    AUTO,
    BACKENDS,
    OPENVINO,
    OPENVINO_HINT,
    REMOTE,
    default_cache_bytes,
    openvino_available,
)
from napari_medsam.engine.disk_cache import cache_size, clear_cache, embeddings_dir, format_bytes
from napari_medsam.segmentation import SliceRef

if TYPE_CHECKING:
    from napari_medsam.engine.volume_embedding import EmbedProgress, EmbedSummary
    from napari_medsam.segmentation.annotation import AnnotationModel

logger = logging.getLogger(__name__)

MIB = 1024**2


def backend_choices() -> list[str]:
    """Backends run here offered in the widget: OpenVINO only when it is installed (a
    server is chosen with the *Server* field instead)."""
    return [name for name in BACKENDS
            if name != REMOTE and (name != OPENVINO or openvino_available())]


class EmbedPanel(QGroupBox):
    """Backend choice, embedding-cache budget and whole-volume embedding of one widget.

    Parameters
    ----------
    annotation
        The annotation model whose session is embedded.
    viewer
        The napari viewer (the displayed slice and axis).
    backend
        The backend the combo shows first.
    """

    #: An :class:`~napari_medsam.engine.volume_embedding.EmbedProgress` from the worker
    #: thread, delivered on the GUI thread.
    progress_changed = Signal(object)
    #: Emitted on the GUI thread when a run ends: its ``EmbedSummary`` (None after an error).
    embedding_done = Signal(object)
    #: The user chose a backend (its name): the model is to be reloaded on it.
    backend_chosen = Signal(str)
    #: The user chose a server address (``""``: this computer): the model is to be reloaded.
    server_chosen = Signal(str)
    #: The disk cache was cleared: the session is to be made anew (its disk stores too).
    session_reset = Signal()
    #: A line for the widget's status.
    status = Signal(str)

    # Long on purpose: it only builds the panel, a short block per control, then the grid.
    def __init__(self, annotation: AnnotationModel, viewer, backend: str = AUTO) -> None:
        super().__init__("Speed")
        self.annotation = annotation
        self.viewer = viewer
        self._worker = None
        self._cancel = threading.Event()
        self._embedder = None  # the running VolumeEmbedder (set from the worker thread)
        self._holds = 0  # prompts being decoded: the embedding pauses meanwhile
        self.last_summary: EmbedSummary | None = None

        self.backend_combo = QComboBox()
        self.backend_combo.addItems(backend_choices())
        self.backend_combo.setCurrentText(backend if backend in BACKENDS else AUTO)
        tip = ("Inference backend: auto = ONNX Runtime on a CUDA GPU, else OpenVINO when "
               "installed, else ONNX Runtime on the CPU. Changing it reloads the model.")
        if not openvino_available():
            tip += f" OpenVINO (faster on CPUs) is not installed: {OPENVINO_HINT}"
        self.backend_combo.setToolTip(tip)
        self.backend_combo.currentTextChanged.connect(self.backend_chosen.emit)
        self.cache_spin = QSpinBox()
        self.cache_spin.setRange(16, 65536)
        self.cache_spin.setSingleStep(64)
        self.cache_spin.setSuffix(" MiB")
        self.cache_spin.setValue(max(16, default_cache_bytes() // MIB))
        self.cache_spin.setToolTip("Memory for slice embeddings kept in RAM (2 MiB per "
                                   "slice); the rest stays in the disk cache. Default: a "
                                   "quarter of the available memory, 256 MiB .. 2 GiB")
        self.cache_spin.valueChanged.connect(self._on_cache_budget)
        self.embed_button = QPushButton("Embed volume")
        self.embed_button.setToolTip("Embed every slice along the displayed axis in the "
                                     "background (this slice first, then outward), so that "
                                     "prompts on them are instant; kept on disk for next time")
        self.embed_button.clicked.connect(self.embed_volume)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop embedding; the slices done so far are kept")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress_changed.connect(self._show_progress)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.disk_label = QLabel("")
        self.disk_label.setToolTip(f"Embeddings kept on disk for re-opened scans, in "
                                   f"{embeddings_dir()}")
        self.clear_button = QPushButton("Clear disk cache")
        self.clear_button.setToolTip("Delete every embedding stored on disk (all scans); "
                                     "they are recomputed when needed")
        self.clear_button.clicked.connect(self.clear_disk_cache)
        self.server_view = ServerView(parent=self)
        self.server_view.server_chosen.connect(self.server_chosen)

        grid = QGridLayout(self)
        grid.addWidget(QLabel("Backend"), 0, 0)
        grid.addWidget(self.backend_combo, 0, 1)
        grid.addWidget(QLabel("Cache"), 0, 2)
        grid.addWidget(self.cache_spin, 0, 3)
        grid.addWidget(self.embed_button, 1, 0, 1, 2)
        grid.addWidget(self.progress, 1, 2)
        grid.addWidget(self.cancel_button, 1, 3)
        grid.addWidget(self.disk_label, 2, 0, 1, 2)
        grid.addWidget(self.clear_button, 2, 2, 1, 2)
        grid.addWidget(QLabel("Server"), 3, 0)
        grid.addWidget(self.server_view.edit, 3, 1, 1, 2)
        grid.addWidget(self.server_view.local_button, 3, 3)
        grid.addWidget(self.info, 4, 0, 1, 4)
        self._set_running(False)
        self.refresh_disk_size()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """Whether an embedding run is in progress."""
        return self._worker is not None

    @property
    def cache_bytes(self) -> int:
        """The in-memory embedding cache budget chosen in the spin box."""
        return self.cache_spin.value() * MIB

    def _set_running(self, running: bool) -> None:
        self.embed_button.setEnabled(not running)
        self.backend_combo.setEnabled(not running)
        self.server_view.set_enabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_cache_budget(self, value: int) -> None:
        session = self.annotation.session
        if session is not None:
            session.cache.resize(value * MIB)

    # ------------------------------------------------------------------ sharing the CPU
    def hold(self) -> None:
        """A prompt is being decoded: feed no new slice to the encoder until released."""
        self._holds += 1
        embedder = self._embedder
        if embedder is not None:
            embedder.pause()

    def release(self) -> None:
        """The prompt of a :meth:`hold` is done; resume when no other one is running."""
        self._holds = max(0, self._holds - 1)
        embedder = self._embedder
        if embedder is not None and self._holds == 0:
            embedder.resume()

    # ------------------------------------------------------------------ embedding
    def embed_volume(self) -> None:
        """Embed every slice along the displayed axis on a worker thread."""
        ref = current_slice(self.viewer, self.annotation.image)
        if self.annotation.session is None or ref is None:
            show_warning("MedSAM: load a model and show a 2D slice first")
            return
        if self.running:
            show_warning("MedSAM: the volume is already being embedded")
            return
        # a frozen view of the session: a window change meanwhile must not file these
        # embeddings under the new mapping's keys (it also cancels the run)
        session = copy.copy(self.annotation.session)
        axis, start = ref.axis, ref.index
        cancel = self._cancel.is_set
        self._cancel.clear()
        self.last_summary = None
        self.progress.setRange(0, max(1, session.volume.shape[axis]))
        self.progress.setValue(0)
        self.progress.setFormat("starting...")
        self.info.setText(f"Embedding the slices along axis {axis} from slice {start}...")
        self._set_running(True)

        def job() -> EmbedSummary:
            from napari_medsam.engine.volume_embedding import VolumeEmbedder

            store = session.disk_store(axis)  # the disk store the session reads (or None)
            # release_after=False: freeing OpenVINO's THROUGHPUT encoder holds the GIL for
            # ~110 ms (measured), a visible UI stall; it is kept for the next run instead and
            # goes with the model (reload, backend switch, close)
            embedder = VolumeEmbedder(session.model, session.volume, session.mapping, axis,
                                      store=store, cache=session.cache,
                                      cache_key=lambda i: session.cache_key(SliceRef(axis, i)),
                                      release_after=False)
            self._embedder = embedder
            if self._holds:
                embedder.pause()
            logger.info("embedding %d slices along axis %d (%s, %d in flight)", embedder.size,
                        axis, embedder.plan.kind, embedder.plan.in_flight)
            try:
                return embedder.run(start, progress=self.progress_changed.emit, cancel=cancel)
            finally:
                self._embedder = None

        worker = create_worker(job, _connect={"returned": self._on_returned,
                                              "errored": self._on_error,
                                              "finished": self._on_finished},
                               _start_thread=False)
        self._worker = worker
        worker.start()

    def _show_progress(self, progress: EmbedProgress) -> None:
        self.progress.setRange(0, max(1, progress.total))
        self.progress.setValue(progress.done)
        self.progress.setFormat(progress.describe())

    def refresh_disk_size(self) -> int:
        """Show (and return) the size of the on-disk embedding cache."""
        size = cache_size()
        self.disk_label.setText(f"Disk cache: {format_bytes(size)}")
        return size

    def clear_disk_cache(self) -> None:
        """Delete the stored embeddings of every scan (not while embedding).

        While another napari-medsam process writes embeddings (e.g. ``napari-medsam
        embed``), nothing is deleted and a notification says so.
        """
        if self.running:
            show_warning("MedSAM: cancel the volume embedding before clearing the disk cache")
            return
        from napari_medsam.engine.disk_cache import CacheBusyError

        try:
            freed = clear_cache()
        except CacheBusyError as exc:
            logger.info("disk cache not cleared: %s", exc)
            self.info.setText("Disk cache not cleared: another process is writing to it.")
            show_warning(f"MedSAM: disk cache not cleared: {exc}")
            self.refresh_disk_size()
            return
        logger.info("cleared the embedding disk cache (%s)", format_bytes(freed))
        self.session_reset.emit()  # a fresh session: its disk stores start over
        self.info.setText(f"Disk cache cleared ({format_bytes(freed)} freed).")
        self.refresh_disk_size()

    def _on_returned(self, summary: EmbedSummary) -> None:
        self.last_summary = summary
        self.refresh_disk_size()
        rate = f", {summary.slices_per_s:.1f} slices/s" if summary.encoded else ""
        disk = f", {summary.from_disk} from the disk cache" if summary.from_disk else ""
        if summary.cancelled:
            text = (f"Cancelled: {summary.done}/{summary.total} slices embedded (kept)"
                    f"{disk}.")
        else:
            text = (f"All {summary.total} slices embedded in {summary.wall_s:.1f} s "
                    f"({summary.encoded} encoded{rate}{disk}).")
        self.progress.setFormat(f"{summary.done}/{summary.total} slices")
        self.info.setText(text)
        self.status.emit(text)
        self.embedding_done.emit(summary)

    def _on_error(self, exc: Exception) -> None:
        logger.warning("volume embedding failed: %s", exc)
        show_error(f"MedSAM: embedding the volume failed: {exc}")
        self.info.setText(f"Error: {exc}")
        self.embedding_done.emit(None)

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)

    def cancel(self) -> None:
        """Stop embedding between slices; what is done stays in the caches."""
        self._cancel.set()  # a paused run sees it too (it polls while paused)

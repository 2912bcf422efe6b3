"""Crash recovery in the Segment widget: the offer to restore a scan's unsaved labels when
it is opened again, and the autosave that writes them.

:class:`RecoveryBar` is the small non-modal bar of the widget: when a scan is opened it
computes the scan's digest on a worker, and if a recovery file exists it offers *Restore*
(the labels come back as a Labels layer on the scan's geometry, with their names and
colours) or *Discard*. It owns the widget's :class:`~napari_medsam._qt.autosave.Autosaver`
(re-exported here, like
:func:`~napari_medsam.segmentation.annotation_paint.rows_of_edit`), which autosaves the
target labels; autosave waits until the user chooses, so the offered file is never
overwritten by new work.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_medsam._qt.autosave import Autosaver
from napari_medsam.engine.cache_keys import array_digest
from napari_medsam.io.recovery import RecoveredLabels, RecoveryInfo, RecoveryStore
from napari_medsam.segmentation.annotation_paint import rows_of_edit

logger = logging.getLogger(__name__)

__all__ = ["Autosaver", "RecoveryBar", "rows_of_edit"]


class RecoveryBar(QFrame):
    """The widget's recovery offer (hidden unless a scan has a recovery file) and autosave.

    Parameters
    ----------
    viewer : napari.Viewer
        Where a restored Labels layer is added.
    store : RecoveryStore, optional
        Recovery files (default: ``<cache>/recovery``).
    """

    #: A Labels layer was restored (the new layer).
    restored = Signal(object)

    def __init__(self, viewer, store: RecoveryStore | None = None, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.store = store if store is not None else RecoveryStore()
        self.autosaver = Autosaver(self.store, parent=self)
        self.image: Image | None = None
        self.info: RecoveryInfo | None = None
        self._request = 0
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Add the autosaved labels as a Labels layer")
        self.restore_button.clicked.connect(self.restore)
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Delete the autosaved labels of this scan")
        self.discard_button.clicked.connect(self.discard)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.restore_button)
        buttons.addWidget(self.discard_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(self.text)
        layout.addLayout(buttons)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setVisible(False)

    @property
    def offered(self) -> bool:
        """A recovery file of the current scan is on offer."""
        return self.info is not None

    def set_image(self, image: Image | None) -> None:
        """The widget's scan changed: look for its recovery file on a worker."""
        if image is self.image:
            return
        self.autosaver.release()  # the old scan's labels go into the old scan's file
        self.image = image
        self._close_offer()
        self.autosaver.set_digest(None)
        self._request += 1
        if image is None:
            return
        worker = create_worker(self._digest_and_find, self.store, image.data,
                               _start_thread=False,
                               _connect={"returned": partial(self._on_found, self._request),
                                         "errored": self._on_error})
        worker.start()

    @staticmethod
    def _digest_and_find(store: RecoveryStore, data) -> tuple[str, RecoveryInfo | None]:
        digest = array_digest(np.asarray(data))
        return digest, store.find(digest)

    def _on_found(self, request: int, result: tuple[str, RecoveryInfo | None]) -> None:
        if request != self._request:
            return  # another scan was opened meanwhile
        digest, info = result
        if info is not None:
            self.info = info
            self.autosaver.paused = True  # never overwrite what is on offer
            self.text.setText(f"Unsaved labels of this scan were found: {info.describe()}. "
                              "Autosave waits until you restore or discard them.")
            self.restore_button.setEnabled(True)
            self.discard_button.setEnabled(True)
            self.setVisible(True)
        self.autosaver.set_digest(digest)

    def _on_error(self, exc: Exception) -> None:
        logger.warning("crash recovery: %s", exc)
        self.text.setText(f"Recovery: {exc}")
        self.restore_button.setEnabled(self.offered)  # the user may try again or discard
        self.discard_button.setEnabled(self.offered)

    def set_target(self, labels: Labels | None) -> None:
        """The widget's target labels changed (None: none yet)."""
        self.autosaver.track(labels, self.image)

    def restore(self) -> None:
        """Read the offered labels on a worker, then add them as a Labels layer."""
        if self.info is None or self.autosaver.digest is None:
            return
        self.restore_button.setEnabled(False)
        self.discard_button.setEnabled(False)
        self.text.setText("Restoring the autosaved labels...")
        worker = create_worker(self.store.load, self.autosaver.digest, _start_thread=False,
                               _connect={"returned": partial(self._on_loaded, self._request),
                                         "errored": self._on_error})
        worker.start()

    def _on_loaded(self, request: int, recovered: RecoveredLabels | None) -> None:
        if request != self._request or self.image is None:
            return
        if recovered is None:
            show_warning("MedSAM: the autosaved labels could not be read (see the log)")
            self._close_offer()
            return
        layer = self.add_layer(recovered, self.image)
        self.restored.emit(layer)  # the widget makes it its target before autosave resumes
        self._close_offer()

    def add_layer(self, recovered: RecoveredLabels, image: Image) -> Labels:
        """Add ``recovered`` as a Labels layer placed like ``image``."""
        kwargs: dict[str, Any] = {"name": recovered.info.layer_name,
                                  "metadata": recovered.metadata,
                                  "scale": image.scale, "translate": image.translate}
        if recovered.colors:
            kwargs["colormap"] = DirectLabelColormap(color_dict=recovered.colors)
        layer = self.viewer.add_labels(recovered.labels, **kwargs)
        logger.info("restored %s from %s", recovered.info.describe(), recovered.info.path)
        return layer

    def discard(self) -> None:
        """Delete the offered recovery file."""
        if self.info is not None and self.autosaver.digest is not None:
            self.store.discard(self.autosaver.digest)
        self._close_offer()

    def _close_offer(self) -> None:
        self.info = None
        self.setVisible(False)
        self.autosaver.paused = False

    def labels_saved(self, labels: Labels) -> None:
        """The user saved ``labels``: the recovery file of the scan is no longer needed
        (unless one from another session is still on offer)."""
        if not self.offered:
            self.autosaver.forget(labels)

    def shutdown(self) -> None:
        """Closing: last autosave if the labels changed since the last one."""
        self._request += 1
        self.autosaver.flush()


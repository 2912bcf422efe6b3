"""The *Window* part of the Segment widget: the intensity mapping the model sees.

What the user sees is what the model sees: a CT window or MRI normalisation chosen in the
combo box sets the image layer's contrast limits, and any change of the contrast limits
(the combo, napari's own slider) becomes the session's mapping. :class:`WindowView` reports a
new mapping through :attr:`WindowView.mapping_changed`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox

from napari_medsam._qt.connections import Connections
from napari_medsam._qt.slices import mapping_for_layer
from napari_medsam.io.intensity import mapping_from_name, mapping_names

if TYPE_CHECKING:
    from napari_medsam.segmentation.annotation import AnnotationModel

logger = logging.getLogger(__name__)


class WindowView(QObject):
    """Window combo and the image's contrast limits -> the session's intensity mapping.

    Parameters
    ----------
    annotation
        The annotation model: its ``image`` and ``session``.
    """

    #: The session's mapping changed; True when its key did (embeddings made under the old
    #: mapping no longer apply).
    mapping_changed = Signal(bool)

    def __init__(self, annotation: AnnotationModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.annotation = annotation
        self._connections = Connections()
        self.destroyed.connect(self._connections.disconnect_all)
        self._watched: set[int] = set()
        self.window_combo = QComboBox()
        self.window_combo.addItems(["(as displayed)", *mapping_names()])
        self.window_combo.setToolTip("Intensity window the model sees; it also sets the "
                                     "image's contrast limits, so what you see is what the "
                                     "model sees")
        self.window_combo.currentTextChanged.connect(self.set_window)

    def watch(self, image) -> None:
        """Follow the contrast limits of ``image`` (once per layer)."""
        if id(image) not in self._watched:
            self._watched.add(id(image))
            self._connections.connect(image.events.contrast_limits, self._on_contrast_change)

    def set_window(self, name: str) -> None:
        """Apply a CT window preset or MRI normalisation by name to the image layer."""
        layer = self.annotation.image
        if layer is None or not name or name.startswith("("):
            return
        try:
            mapping = mapping_from_name(name, np.asarray(layer.data))
        except ValueError as exc:
            show_error(f"MedSAM: {exc}")
            return
        layer.contrast_limits_range = (min(layer.contrast_limits_range[0], mapping.low),
                                       max(layer.contrast_limits_range[1], mapping.high))
        layer.contrast_limits = mapping.contrast_limits  # triggers _on_contrast_change

    def _on_contrast_change(self, *_args) -> None:
        layer, session = self.annotation.image, self.annotation.session
        if layer is not None and session is not None:
            mapping = mapping_for_layer(layer)
            new_key = mapping.key != session.mapping.key
            session.mapping = mapping
            self.mapping_changed.emit(new_key)

    def close(self) -> None:
        """Stop following the image layers (the widget closes)."""
        self._connections.disconnect_all()

"""The *Image* choice of the Segment widget: which 3D image layer of the viewer is annotated.

:class:`ImageView` lists the viewer's 3D grey-value image layers in a combo box and keeps the
list current as layers come and go; :attr:`ImageView.changed` reports a new choice (or that
the chosen layer went), :attr:`ImageView.listed` that the list was refreshed.
"""

from __future__ import annotations

from napari.layers import Image
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox

from napari_medsam._qt.connections import Connections

__all__ = ["ImageView"]


class ImageView(QObject):
    """Combo box of the viewer's 3D image layers (RGB and 2D layers are not offered).

    Parameters
    ----------
    viewer
        The napari viewer whose layers are offered.
    """

    #: Another image was chosen, or the chosen one was removed.
    changed = Signal()
    #: The list was refreshed (layers were added or removed).
    listed = Signal()

    def __init__(self, viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.combo = QComboBox()
        self.combo.setToolTip("The 3D image to annotate")
        self.combo.currentIndexChanged.connect(lambda _index: self.changed.emit())
        self._connections = Connections()
        self.destroyed.connect(self._connections.disconnect_all)
        self._connections.connect(viewer.layers.events.inserted, self.refresh)
        self._connections.connect(viewer.layers.events.removed, self.refresh)

    @property
    def layer(self) -> Image | None:
        """The chosen image layer (None when there is none)."""
        name = self.combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def refresh(self, *_args) -> None:
        """List the viewer's 3D image layers again, keeping the choice where it is still
        there (else :attr:`changed` is emitted)."""
        current = self.combo.currentText()
        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb]
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(names)
        if current in names:
            self.combo.setCurrentText(current)
        self.combo.blockSignals(False)
        if current not in names:
            self.changed.emit()
        self.listed.emit()

    def close(self) -> None:
        """Stop following the viewer's layers (the widget closes)."""
        self._connections.disconnect_all()

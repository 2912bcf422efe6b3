"""The rule check boxes of the Segment widget: *Overwrite other objects* and *Zoom small
objects*.

Each sets a rule of the annotation model (``overwrite``, ``zoom``);
:attr:`OptionsView.zoom_changed` tells the widget to redo the preview under the new rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QCheckBox

if TYPE_CHECKING:
    from napari_medsam.segmentation.annotation import AnnotationModel

__all__ = ["OptionsView"]

ZOOM_TIP = ("On (auto): a small box is also segmented in a 64-pixel region of interest "
            "seen at 4x (one more encoder run per new region, cached), which raises Dice on "
            "small and faint structures (hippocampus, adrenals, ribs). Off: the whole slice "
            "only. Same as --zoom auto|off on the command line; see "
            "docs/howto/small_structures.md")


class OptionsView(QObject):
    """Two check boxes -> the annotation model's ``overwrite`` and ``zoom`` rules.

    Parameters
    ----------
    annotation
        The annotation model whose rules the boxes set.
    """

    #: The zoom rule changed: ``"auto"`` or ``"off"``.
    zoom_changed = Signal(str)

    def __init__(self, annotation: AnnotationModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.annotation = annotation
        self.overwrite_check = QCheckBox("Overwrite other objects")
        self.overwrite_check.setToolTip("Off: voxels of other objects are kept")
        self.overwrite_check.toggled.connect(self._on_overwrite_toggled)
        self.zoom_check = QCheckBox("Zoom small objects")
        self.zoom_check.setChecked(True)
        self.zoom_check.setToolTip(ZOOM_TIP)
        self.zoom_check.toggled.connect(self._on_zoom_toggled)

    @property
    def zoom(self) -> str:
        """``"auto"`` or ``"off"``: the session's region-of-interest rule (the check box)."""
        return "auto" if self.zoom_check.isChecked() else "off"

    def _on_zoom_toggled(self, _checked: bool) -> None:
        self.annotation.zoom = self.zoom
        self.zoom_changed.emit(self.zoom)

    def _on_overwrite_toggled(self, checked: bool) -> None:
        self.annotation.overwrite = checked

"""Where the Segment widget's parts sit (the form on top, the panels below)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

if TYPE_CHECKING:
    from napari_medsam._qt.widget import SegmentWidget

__all__ = ["lay_out"]


def lay_out(widget: SegmentWidget, clear_button: QPushButton, save_button: QPushButton) -> None:
    """Lay out the parts ``widget`` built: image, model, window, labels and object id in a
    form; the check boxes and buttons in rows; then the panels, the objects and the status."""
    form = QFormLayout()
    form.addRow("Image", widget.image_combo)
    form.addRow("Model", widget.models.model_combo)
    form.addRow("", widget.model_label)
    form.addRow("Window", widget.window_combo)
    form.addRow("Labels", widget.labels_combo)
    row = QHBoxLayout()
    for part in (widget.label_spin, widget.label_swatch, widget.label_name,
                 widget.objects_view.new_button):
        row.addWidget(part)
    form.addRow("Object id", row)
    layout = QVBoxLayout(widget)
    layout.addWidget(widget.recovery)
    layout.addLayout(form)
    checks = QHBoxLayout()
    for check in (widget.negative_check, widget.overwrite_check, widget.zoom_check):
        checks.addWidget(check)
    layout.addLayout(checks)
    buttons = QHBoxLayout()
    for button in (widget.accept_button, clear_button, save_button):
        buttons.addWidget(button)
    layout.addLayout(buttons)
    for part in (widget.embed_panel, widget.volume_panel, widget.adapt_button,
                 widget.adapt_panel):
        layout.addWidget(part)
    layout.addWidget(QLabel("Objects"))
    layout.addWidget(widget.objects)
    layout.addWidget(widget.status)
    layout.addStretch(1)

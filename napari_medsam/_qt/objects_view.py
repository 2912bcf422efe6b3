"""The labels part of the Segment widget: the target Labels layer, the current object and
the list of objects.

:class:`ObjectsView` makes the controls (the main widget lays them out) and keeps the
annotation model's target labels and current label id in step with them. Painting on the
target labels makes the painted slice a propagation anchor of the painted object; painting,
undo and redo recount the object list once they pause.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QLabel, QListWidget, QPushButton, QSpinBox

from napari_medsam._prompt_layers import PREVIEW_LAYER
from napari_medsam._qt.connections import Connections
from napari_medsam._qt.slices import current_slice
from napari_medsam.segmentation.annotation_edits import label_counts, label_name

if TYPE_CHECKING:
    from napari_medsam.segmentation.annotation import AnnotationModel

logger = logging.getLogger(__name__)

NEW_LABELS = "(new labels layer)"


class ObjectsView(QObject):
    """Labels layer choice, object id (name, colour, *New object*) and the object list.

    Parameters
    ----------
    annotation
        The annotation model: its ``image``, ``target`` and ``label``.
    viewer
        The napari viewer whose Labels layers are offered.
    """

    #: The target labels were read again from the choice (the layer, or None).
    target_changed = Signal(object)

    def __init__(self, annotation: AnnotationModel, viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.annotation = annotation
        self.viewer = viewer
        self._connections = Connections()
        self.destroyed.connect(self._connections.disconnect_all)
        self._watched: set[int] = set()
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("Labels layer that accepted masks go into: an existing "
                                     "layer of the image's shape, or a new one")
        self.labels_combo.currentIndexChanged.connect(self._on_labels_picked)
        self._labels_picked = False  # the user chose in the box (a new layer included)
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 2**31 - 1)
        self.label_spin.setValue(annotation.label)
        self.label_spin.valueChanged.connect(self._on_spin)
        self.label_name = QLabel("")
        self.label_swatch = QLabel()
        self.label_swatch.setFixedSize(16, 16)
        self.label_swatch.setToolTip("Colour of the current object in the labels layer")
        self.new_button = QPushButton("New object")
        self.new_button.setToolTip("Pick the next free label id (N)")
        self.new_button.clicked.connect(self.new_object)
        self.objects = QListWidget()
        self.objects.setMaximumHeight(140)
        self.objects.itemClicked.connect(self._on_object_clicked)
        self._objects_timer = QTimer(self)
        self._objects_timer.setSingleShot(True)
        self._objects_timer.setInterval(250)  # recount once painting or undoing pauses
        self._objects_timer.timeout.connect(self.refresh_objects)
        annotation.events.label.connect(self._on_model_label)
        annotation.create_target = self._create_target

    # ----------------------------------------------------------------- target labels
    def _candidates(self) -> list[str]:
        """Labels layers that fit the image (same shape), the preview excluded."""
        image = self.annotation.image
        if image is None:
            return []
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name != PREVIEW_LAYER
                and tuple(layer.data.shape) == tuple(image.data.shape)]

    def refresh_choices(self, select: str | None = None) -> None:
        """Fill the Labels box: keep the user's choice, else "<image> labels" if it exists,
        else a new layer (other layers only when the user picks them)."""
        names = self._candidates()
        current = select or self.labels_combo.currentText()
        if current not in names and (current != NEW_LABELS or not self._labels_picked):
            # never pick someone's layer (a reference, say) unasked: only our own default
            image = self.annotation.image
            default = f"{image.name} labels" if image is not None else ""
            current = default if default in names else NEW_LABELS
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        self.labels_combo.addItems([*names, NEW_LABELS])
        self.labels_combo.setCurrentText(current)
        self.labels_combo.blockSignals(False)
        self._on_labels_change()

    def _on_labels_picked(self, *_args) -> None:
        self._labels_picked = True
        self._on_labels_change()

    def _on_labels_change(self, *_args) -> None:
        labels = self.target_labels(create=False)
        self.annotation.target = labels
        self.target_changed.emit(labels)
        if labels is not None and id(labels) not in self._watched:
            self._watched.add(id(labels))
            # paint: brush/fill; set_data: undo/redo (and slicing); data: replaced array
            for event in (labels.events.paint, labels.events.set_data, labels.events.data):
                self._connections.connect(event, self._objects_changed)
            self._connections.connect(labels.events.paint, self._on_paint)
        self.update_label_name()
        self.refresh_objects()

    def _objects_changed(self, *_args) -> None:
        self._objects_timer.start()

    def _on_paint(self, *_args) -> None:
        """A slice the user painted on is an anchor that propagation never overwrites (the
        widget's own writes are not painting: an Accept 3D must not make the displayed slice
        an anchor)."""
        if self.annotation.writing:
            return
        labels = self.target_labels(create=False)
        ref = current_slice(self.viewer, self.annotation.image)
        if labels is not None and ref is not None and labels.selected_label > 0:
            self.annotation.add_anchor(int(labels.selected_label), ref.axis, ref.index)

    def target_labels(self, create: bool = True) -> Labels | None:
        """The Labels layer that accepted masks go into.

        The layer chosen in the Labels box; with "New labels layer" and ``create``, a new
        layer with the image's shape, scale, translate and metadata.
        """
        image = self.annotation.image
        if image is None:
            return None
        name = self.labels_combo.currentText()
        if name != NEW_LABELS and name in self.viewer.layers:
            return self.viewer.layers[name]
        if not create:
            return None
        name = f"{image.name} labels"
        suffix = 2
        while name in self.viewer.layers:
            name, suffix = f"{image.name} labels {suffix}", suffix + 1
        labels = self.viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint16), name=name,
                                        metadata=dict(image.metadata), scale=image.scale,
                                        translate=image.translate)
        self.refresh_choices(select=name)
        return labels

    def _create_target(self) -> Labels | None:
        return self.target_labels(create=True)

    # ----------------------------------------------------------------- objects
    def _on_spin(self, value: int) -> None:
        self.annotation.label = value
        self.update_label_name()

    def _on_model_label(self, value: int) -> None:
        if self.label_spin.value() != value:
            self.label_spin.setValue(value)

    def update_label_name(self, *_args) -> None:
        """Show the current object's name and colour; make it the layer's paint label."""
        labels = self.target_labels(create=False)
        value = self.annotation.label
        self.label_name.setText(label_name(labels.metadata if labels is not None else None,
                                           value))
        color = None
        if labels is not None:
            labels.selected_label = value
            color = np.asarray(labels.get_color(value), dtype=float)
        style = ("" if color is None else
                 "background-color: rgba({}, {}, {}, {});".format(
                     *(int(round(255 * c)) for c in color[:3]), float(color[3])))
        self.label_swatch.setStyleSheet(style + "border: 1px solid gray;")

    def refresh_objects(self) -> None:
        """List the objects of the target labels with their voxel counts."""
        self.objects.clear()
        labels = self.target_labels(create=False)
        if labels is None:
            return
        for label_id, count in label_counts(labels.data).items():
            name = label_name(labels.metadata, label_id)
            self.objects.addItem(f"{label_id}  {name}  {count} voxels".replace("    ", "  "))

    def _on_object_clicked(self, item) -> None:
        self.annotation.label = int(item.text().split()[0])

    def new_object(self) -> int:
        """Switch to the next free label id."""
        labels = self.target_labels(create=False)
        return self.annotation.new_object(labels.data if labels is not None else None)

    def close(self) -> None:
        """Stop following the labels layers (the widget closes)."""
        self._objects_timer.stop()
        self._connections.disconnect_all()
        self.annotation.events.label.disconnect(self._on_model_label)

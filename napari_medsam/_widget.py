"""The "Segment (MedSAM)" dock widget: thin napari/Qt glue over SegmentationSession.

Draw a rectangle on any slice (in whichever axis the viewer slices): a preview of the
model's mask appears in the "MedSAM preview" layer; Accept (Enter) writes it into the target
Labels layer as the current object id, through napari's undoable path (Ctrl+Z / Ctrl+Shift+Z).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medsam.io.intensity import (
    CT_WINDOWS,
    IntensityMapping,
    ct_window,
    mapping_from_name,
    mapping_names,
)
from napari_medsam.segmentation import SegmentationSession, SliceRef, merge_mask

logger = logging.getLogger(__name__)

BOXES_LAYER = "MedSAM boxes"
PREVIEW_LAYER = "MedSAM preview"
SHORTCUTS = "Enter: accept preview   Escape: clear prompts on this slice   N: new object"


def mapping_for_layer(layer: Image) -> IntensityMapping:
    """The mapping the user sees: the layer's contrast limits, named after a CT preset if
    they equal one."""
    low, high = (float(v) for v in layer.contrast_limits)
    name = "display"
    for preset in CT_WINDOWS:
        window = ct_window(preset)
        if np.isclose(window.low, low) and np.isclose(window.high, high):
            name = preset
            break
    if high <= low:
        high = low + 1.0
    return IntensityMapping(name, low, high)


def boxes_on_slice(shapes: Shapes, ref: SliceRef) -> list[tuple[float, float, float, float]]:
    """(x_min, y_min, x_max, y_max) of each rectangle drawn on slice ``ref``."""
    rows_axis, cols_axis = (a for a in range(3) if a != ref.axis)
    boxes = []
    for vertices, kind in zip(shapes.data, shapes.shape_type, strict=True):
        vertices = np.asarray(vertices)
        if kind != "rectangle" or vertices.shape[1] != 3:
            continue
        if not np.allclose(vertices[:, ref.axis], ref.index, atol=0.5):
            continue
        ys, xs = vertices[:, rows_axis], vertices[:, cols_axis]
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    return boxes


class SegmentWidget(QWidget):
    """Dock widget: image choice, model/device, object id, preview, accept, save."""

    def __init__(self, napari_viewer, *, model_name: str = "litemedsam", device: str = "auto"):
        super().__init__()
        self.viewer = napari_viewer
        self.model_name = model_name
        self.device = device
        self.model = None
        self.session: SegmentationSession | None = None
        self.preview_ref: SliceRef | None = None
        self.preview_mask: np.ndarray | None = None
        self._generation = 0
        self._pending = None
        self._watched_layers: set[int] = set()
        self._build_ui()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(60)
        self._debounce.timeout.connect(self.update_preview)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.dims.events.current_step.connect(self._on_slice_change)
        self._refresh_images()
        self._load_model()

    # ----------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_change)
        self.model_label = QLabel(f"{self.model_name}: loading...")
        self.window_combo = QComboBox()
        self.window_combo.addItems(["(as displayed)", *mapping_names()])
        self.window_combo.setToolTip("Intensity window the model sees; it also sets the "
                                     "image's contrast limits, so what you see is what the "
                                     "model sees")
        self.window_combo.currentTextChanged.connect(self.set_window)
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 2**31 - 1)
        self.label_spin.setValue(1)
        self.label_name = QLabel("")
        self.label_spin.valueChanged.connect(self._update_label_name)
        new_button = QPushButton("New object")
        new_button.setToolTip("Pick the next free label id (N)")
        new_button.clicked.connect(self.new_object)
        self.overwrite_check = QCheckBox("Overwrite other objects")
        self.overwrite_check.setToolTip("Off: voxels of other objects are kept")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write the preview into the labels (Enter)")
        self.accept_button.clicked.connect(self.accept)
        clear_button = QPushButton("Clear")
        clear_button.setToolTip("Drop the prompts on this slice (Escape)")
        clear_button.clicked.connect(self.clear)
        save_button = QPushButton("Save labels...")
        save_button.clicked.connect(lambda: self.save())
        self.status = QLabel("Draw a box on a slice.")
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(48)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_label)
        form.addRow("Window", self.window_combo)
        row = QHBoxLayout()
        row.addWidget(self.label_spin)
        row.addWidget(self.label_name)
        row.addWidget(new_button)
        form.addRow("Object id", row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.overwrite_check)
        buttons = QHBoxLayout()
        for button in (self.accept_button, clear_button, save_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.setToolTip(SHORTCUTS)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)
        logger.info(text)

    # ----------------------------------------------------------------- model
    def _load_model(self) -> None:
        from napari_medsam.engine import load_model

        # errors connected at creation, so napari does not re-raise them as well
        worker = create_worker(load_model, self.model_name, self.device,
                               _connect={"returned": self._on_model_loaded,
                                         "errored": self._on_error}, _start_thread=False)
        worker.start()
        self._model_worker = worker

    def _on_model_loaded(self, model) -> None:
        self.model = model
        self.model_label.setText(f"{model.spec.display_name} on {model.device_name}")
        self._on_image_change()
        if self._pending:
            self.update_preview()

    def _on_error(self, exc: Exception) -> None:
        show_error(f"MedSAM: {exc}")
        self._set_status(f"Error: {exc}")

    # ----------------------------------------------------------------- layers
    def _refresh_images(self, *_args) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if current not in names:
            self._on_image_change()

    @property
    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_image_change(self, *_args) -> None:
        layer = self.image_layer
        self.session = None
        if layer is None or self.model is None:
            return
        self._ensure_prompt_layers(layer)
        if id(layer) not in self._watched_layers:
            layer.events.contrast_limits.connect(self._on_contrast_change)
            self._watched_layers.add(id(layer))
        self._make_session(layer)

    def _make_session(self, layer: Image) -> None:
        cache = self.session.cache if self.session is not None else None
        self.session = SegmentationSession(self.model, layer.data, mapping_for_layer(layer),
                                           data_id=id(layer.data), cache=cache)

    def _on_contrast_change(self, *_args) -> None:
        layer = self.image_layer
        if layer is not None and self.session is not None:
            self.session.mapping = mapping_for_layer(layer)
            self._schedule()

    def set_window(self, name: str) -> None:
        """Apply a CT window preset or MRI normalisation by name to the image layer."""
        layer = self.image_layer
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

    def _geometry_kwargs(self, layer: Image) -> dict:
        return {"scale": layer.scale, "translate": layer.translate}

    def _ensure_prompt_layers(self, image: Image) -> None:
        if BOXES_LAYER not in self.viewer.layers:
            boxes = self.viewer.add_shapes(
                ndim=3, name=BOXES_LAYER, edge_color="yellow", face_color="transparent",
                edge_width=1.5, **self._geometry_kwargs(image))
            boxes.events.data.connect(self._schedule)
            boxes.bind_key("Enter", lambda _layer: self.accept(), overwrite=True)
            boxes.bind_key("Escape", lambda _layer: self.clear(), overwrite=True)
            boxes.bind_key("n", lambda _layer: self.new_object(), overwrite=True)
        if PREVIEW_LAYER not in self.viewer.layers:
            self.viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint8),
                                   name=PREVIEW_LAYER, opacity=0.5,
                                   **self._geometry_kwargs(image))
        preview = self.viewer.layers[PREVIEW_LAYER]
        if preview.data.shape != image.data.shape:  # another image was chosen
            preview.data = np.zeros(image.data.shape, dtype=np.uint8)
            self.preview_ref, self.preview_mask = None, None
        for name in (BOXES_LAYER, PREVIEW_LAYER):
            self.viewer.layers[name].scale = image.scale
            self.viewer.layers[name].translate = image.translate
        self.viewer.layers.selection.active = self.viewer.layers[BOXES_LAYER]
        self.viewer.layers[BOXES_LAYER].mode = "add_rectangle"

    def target_labels(self, create: bool = True) -> Labels | None:
        """The Labels layer that accepted masks go into (created with the image's geometry)."""
        image = self.image_layer
        if image is None:
            return None
        name = f"{image.name} labels"
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        if not create:
            return None
        return self.viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint16), name=name,
                                      metadata=dict(image.metadata),
                                      **self._geometry_kwargs(image))

    # ----------------------------------------------------------------- slices & prompts
    def current_slice(self) -> SliceRef | None:
        """The slice on display: the array axis napari slices and its index."""
        image = self.image_layer
        if image is None or self.viewer.dims.ndisplay != 2:
            return None
        sliced = [a for a in range(3) if a not in self.viewer.dims.displayed]
        if len(sliced) != 1:
            return None
        axis = sliced[0]
        point = image.world_to_data(self.viewer.dims.point)
        index = int(np.clip(np.round(point[axis]), 0, image.data.shape[axis] - 1))
        return SliceRef(axis, index)

    def _schedule(self, *_args) -> None:
        self._debounce.start()

    def _on_slice_change(self, *_args) -> None:
        ref = self.current_slice()
        if ref is not None and ref != self.preview_ref:
            self._schedule()

    def update_preview(self) -> None:
        """Predict a mask for the boxes on the displayed slice, on a worker thread."""
        ref = self.current_slice()
        if ref is None or BOXES_LAYER not in self.viewer.layers:
            return
        boxes = boxes_on_slice(self.viewer.layers[BOXES_LAYER], ref)
        if self.session is None:
            self._pending = (ref, boxes)
            self._set_status("Waiting for the model...")
            return
        self._pending = None
        self._generation += 1
        generation = self._generation
        if not boxes:
            self._show_preview((generation, ref, None))
            return
        self._set_status(f"Segmenting slice {ref.index} (axis {ref.axis})...")
        worker = create_worker(self._predict_job, generation, ref, boxes, self.session,
                               _connect={"returned": self._show_preview,
                                         "errored": self._on_error}, _start_thread=False)
        worker.start()
        self._predict_worker = worker

    @staticmethod
    def _predict_job(generation, ref, boxes, session):
        mask = None
        for box in boxes:
            prediction = session.predict(ref, box=box)
            mask = prediction.mask if mask is None else (mask | prediction.mask)
        return generation, ref, mask

    def _show_preview(self, result) -> None:
        generation, ref, mask = result
        if generation != self._generation:
            return  # superseded by a newer prompt
        preview = self.viewer.layers[PREVIEW_LAYER] if PREVIEW_LAYER in self.viewer.layers \
            else None
        if preview is None:
            return
        if self.preview_ref is not None:  # clear only the slice drawn last time
            old = [slice(None)] * 3
            old[self.preview_ref.axis] = self.preview_ref.index
            preview.data[tuple(old)] = 0
        if mask is not None:
            index = [slice(None)] * 3
            index[ref.axis] = ref.index
            preview.data[tuple(index)] = mask.astype(np.uint8)
        preview.refresh()
        self.preview_ref, self.preview_mask = ref, mask
        voxels = 0 if mask is None else int(mask.sum())
        self._set_status(f"Preview on slice {ref.index}: {voxels} pixels. Enter to accept.")

    # ----------------------------------------------------------------- objects
    def _update_label_name(self, *_args) -> None:
        labels = self.target_labels(create=False)
        names = (labels.metadata.get("label_names") or {}) if labels is not None else {}
        value = self.label_spin.value()
        self.label_name.setText(str(names.get(value, names.get(str(value), ""))))

    def new_object(self) -> int:
        """Switch to the next free label id."""
        labels = self.target_labels(create=False)
        used = int(labels.data.max()) if labels is not None and labels.data.size else 0
        self.label_spin.setValue(max(used, self.label_spin.value() - 1) + 1)
        return self.label_spin.value()

    def accept(self) -> int:
        """Write the preview into the target labels as one undoable edit; returns voxels."""
        if self.preview_mask is None or self.preview_ref is None or not self.preview_mask.any():
            show_warning("MedSAM: nothing to accept; draw a box first")
            return 0
        labels = self.target_labels()
        ref = self.preview_ref
        try:
            edit = merge_mask(labels.data, self.preview_mask, ref.axis, ref.index,
                              self.label_spin.value(), overwrite=self.overwrite_check.isChecked())
        except ValueError as exc:
            show_error(f"MedSAM: {exc}")
            return 0
        if edit.count:
            labels.data_setitem(edit.indices, edit.value)
        self.clear(ref)
        self._set_status(f"Accepted {edit.count} voxels as object {edit.value}.")
        return edit.count

    def clear(self, ref: SliceRef | None = None) -> None:
        """Drop the boxes of slice ``ref`` (default: the displayed one) and the preview."""
        ref = ref or self.current_slice()
        if BOXES_LAYER in self.viewer.layers and ref is not None:
            shapes = self.viewer.layers[BOXES_LAYER]
            keep = [i for i, v in enumerate(shapes.data)
                    if not np.allclose(np.asarray(v)[:, ref.axis], ref.index, atol=0.5)]
            if len(keep) != len(shapes.data):
                shapes.selected_data = set(range(len(shapes.data))) - set(keep)
                shapes.remove_selected()
        self._generation += 1
        self._show_preview((self._generation, ref, None))

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the target labels with the image's geometry (asks for a path if none)."""
        from napari_medsam._writer import geometry_from_attributes
        from napari_medsam.io import write_labels

        labels = self.target_labels(create=False)
        if labels is None:
            show_warning("MedSAM: no labels to save yet")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save labels", f"{labels.name}.nii.gz",
                                                  "Label maps (*.nii.gz *.nii *.nrrd *.mha)")
            if not path:
                return None
        attributes = {"metadata": self.image_layer.metadata if self.image_layer else {},
                      "scale": labels.scale, "translate": labels.translate}
        try:
            written = write_labels(labels.data, path, geometry_from_attributes(attributes),
                                   label_names=labels.metadata.get("label_names"))
        except (OSError, ValueError) as exc:
            show_error(f"MedSAM: could not save {path}: {exc}")
            return None
        show_info(f"Saved {written}")
        return Path(written)

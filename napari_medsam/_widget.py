"""The "Segment (MedSAM)" dock widget: thin napari/Qt glue over SegmentationSession.

Draw a rectangle (MedSAM boxes layer) or click (MedSAM clicks layer; positive by default,
negative with the toggle or T) on any slice, in whichever axis the viewer slices: a preview of
the model's mask appears in the "MedSAM preview" layer. Accept (Enter) writes it into the
target Labels layer as the current object id through napari's undoable path
(Ctrl+Z / Ctrl+Shift+Z).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
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
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medsam._embed_panel import EmbedPanel
from napari_medsam._orientation import apply_orientation
from napari_medsam._prompt_layers import (
    BOXES_LAYER,
    CLICKS_LAYER,
    PREVIEW_LAYER,
    add_prompt_layers,
    boxes_on_slice,
    clicks_on_slice,
    color_clicks,
    prompts_off_slice,
)
from napari_medsam._recovery_bar import RecoveryBar
from napari_medsam._volume_panel import VolumePanel
from napari_medsam.io.intensity import (
    CT_WINDOWS,
    IntensityMapping,
    ct_window,
    mapping_from_name,
    mapping_names,
)
from napari_medsam.segmentation import SegmentationSession, SliceRef, merge_mask

logger = logging.getLogger(__name__)

__all__ = ["BOXES_LAYER", "CLICKS_LAYER", "PREVIEW_LAYER", "SegmentWidget", "mapping_for_layer"]

NEW_LABELS = "(new labels layer)"
SHORTCUTS = ("Enter: accept preview   Escape: clear prompts on this slice   "
             "N: new object   T: toggle positive/negative clicks   P: propagate the object in 3D")
MB = 1024**2  # the cache budget is set in MiB


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


def label_counts(data: np.ndarray) -> dict[int, int]:
    """Voxels per non-zero label id."""
    flat = np.asarray(data).ravel()
    if flat.dtype.kind == "u" and flat.dtype.itemsize <= 2:
        counts = np.bincount(flat)
        ids = np.nonzero(counts)[0]
        return {int(i): int(counts[i]) for i in ids if i}
    ids, counts = np.unique(flat, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i}


def label_name(labels: Labels | None, label_id: int) -> str:
    """The name of ``label_id`` in the layer's ``metadata["label_names"]`` (int or str keys)."""
    names = (labels.metadata.get("label_names") or {}) if labels is not None else {}
    return str(names.get(label_id, names.get(str(label_id), "")))


class SegmentWidget(QWidget):
    """Dock widget: image, model/device, window, object id and list, preview, accept, save."""

    def __init__(self, napari_viewer, *, model_name: str = "litemedsam", device: str = "auto",
                 backend: str = "auto"):
        super().__init__()
        self.viewer = napari_viewer
        self.model_name = model_name
        self.device = device
        self.backend = backend
        self._model_request = 0  # the latest load: an older one that finishes late is dropped
        self.model = None
        self.session: SegmentationSession | None = None
        self.preview_ref: SliceRef | None = None
        self.preview_mask: np.ndarray | None = None
        self._generation = 0
        self._pending = False
        self._watched: set[int] = set()
        self._prefetch_worker = None
        self._build_ui()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(0)  # coalesces the events of one loop pass, adds no delay
        self._debounce.timeout.connect(self.update_preview)
        self._objects_timer = QTimer(self)
        self._objects_timer.setSingleShot(True)
        self._objects_timer.setInterval(250)  # recount once painting or undoing pauses
        self._objects_timer.timeout.connect(self.refresh_objects)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.dims.events.current_step.connect(self._on_slice_change)
        self.viewer.dims.events.order.connect(self._orient)
        self.viewer.dims.events.ndisplay.connect(self._orient)
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
        self.label_name = QLabel("")
        self.label_swatch = QLabel()
        self.label_swatch.setFixedSize(16, 16)
        self.label_swatch.setToolTip("Colour of the current object in the labels layer")
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("Labels layer that accepted masks go into: an existing "
                                     "layer of the image's shape, or a new one")
        self.labels_combo.currentIndexChanged.connect(self._on_labels_picked)
        self._labels_picked = False  # the user chose in the box (a new layer included)
        self.label_spin.valueChanged.connect(self._update_label_name)
        new_button = QPushButton("New object")
        new_button.setToolTip("Pick the next free label id (N)")
        new_button.clicked.connect(self.new_object)
        self.negative_check = QCheckBox("Negative clicks")
        self.negative_check.setToolTip("New clicks cut instead of add (T toggles)")
        self.negative_check.toggled.connect(self._on_click_sign)
        self.overwrite_check = QCheckBox("Overwrite other objects")
        self.overwrite_check.setToolTip("Off: voxels of other objects are kept")
        self.zoom_check = QCheckBox("Zoom small objects")
        self.zoom_check.setChecked(True)
        self.zoom_check.setToolTip(
            "On (auto): a small box is also segmented in a 64-pixel region of interest "
            "seen at 4x (one more encoder run per new region, cached), which raises Dice on "
            "small and faint structures (hippocampus, adrenals, ribs). Off: the whole slice "
            "only. Same as --zoom auto|off on the command line; see docs/evaluation.md")
        self.zoom_check.toggled.connect(self._on_zoom_toggled)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write the preview into the labels (Enter)")
        self.accept_button.clicked.connect(self.accept)
        clear_button = QPushButton("Clear")
        clear_button.setToolTip("Drop the prompts on this slice (Escape)")
        clear_button.clicked.connect(lambda: self.clear())
        save_button = QPushButton("Save labels...")
        save_button.clicked.connect(lambda: self.save())
        self.embed_panel = EmbedPanel(self)  # backend, cache budget, "Embed volume"
        self.cache_spin = self.embed_panel.cache_spin
        self.objects = QListWidget()
        self.objects.setMaximumHeight(140)
        self.objects.itemClicked.connect(self._on_object_clicked)
        self.status = QLabel("Draw a box or click on a slice.")
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(48)
        self.recovery = RecoveryBar(self.viewer)  # autosave; offers a scan's unsaved labels
        self.recovery.restored.connect(lambda layer: self._refresh_labels_choices(layer.name))

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_label)
        form.addRow("Window", self.window_combo)
        form.addRow("Labels", self.labels_combo)
        row = QHBoxLayout()
        row.addWidget(self.label_spin)
        row.addWidget(self.label_swatch)
        row.addWidget(self.label_name)
        row.addWidget(new_button)
        form.addRow("Object id", row)
        layout = QVBoxLayout(self)
        layout.addWidget(self.recovery)
        layout.addLayout(form)
        checks = QHBoxLayout()
        checks.addWidget(self.negative_check)
        checks.addWidget(self.overwrite_check)
        checks.addWidget(self.zoom_check)
        layout.addLayout(checks)
        buttons = QHBoxLayout()
        for button in (self.accept_button, clear_button, save_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.volume_panel = VolumePanel(self)
        layout.addWidget(self.embed_panel)
        layout.addWidget(self.volume_panel)
        layout.addWidget(QLabel("Objects"))
        layout.addWidget(self.objects)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.setToolTip(SHORTCUTS)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)
        logger.info(text)

    def _start(self, function, *args, returned=None, errored=None, finished=None):
        """Run ``function`` on a worker thread; errors become notifications."""
        connect = {"errored": errored or self._on_error}
        if returned is not None:
            connect["returned"] = returned
        if finished is not None:
            connect["finished"] = finished
        worker = create_worker(function, *args, _connect=connect, _start_thread=False)
        worker.start()
        return worker

    # ----------------------------------------------------------------- model
    def _load_model(self) -> None:
        from napari_medsam.engine import load_model

        self._model_request += 1
        request = self._model_request

        def loaded(model) -> None:
            if request == self._model_request:  # not superseded by another backend choice
                self._on_model_loaded(model)

        self._model_worker = self._start(partial(load_model, backend=self.backend),
                                         self.model_name, self.device, returned=loaded)

    def set_backend(self, backend: str) -> None:
        """Reload the model on ``backend`` (``"auto"``, ``"onnxruntime"`` or ``"openvino"``).

        The session keeps working on the current model until the new one is loaded; the
        in-memory embeddings stay valid (both backends compute the same f32 embeddings).
        """
        if backend == self.backend and self.model is not None:
            return
        self.backend = backend
        self.embed_panel.cancel()
        self._stop_prefetch()
        self.model_label.setText(f"{self.model_name}: loading ({backend})...")
        self._load_model()

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
        self._refresh_labels_choices()

    @property
    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_image_change(self, *_args) -> None:
        self.embed_panel.cancel()  # it embeds the old session's volume
        layer = self.image_layer
        self.recovery.set_image(layer)
        cache = self.session.cache if self.session is not None else None
        self.session = None
        self.preview_ref, self.preview_mask = None, None
        self._refresh_labels_choices()
        if layer is None or self.model is None:
            return
        boxes, clicks = add_prompt_layers(self.viewer, layer)
        self._orient()
        self._watch(boxes, clicks, layer)
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        self.session = SegmentationSession(self.model, layer.data, mapping_for_layer(layer),
                                           data_id=id(layer.data), cache=cache,
                                           cache_bytes=self.cache_spin.value() * MB,
                                           disk_cache=True, zoom=self.zoom)
        self.refresh_objects()

    def _orient(self, *_args) -> None:
        """Superior up when the view shows the slice axis vertically (coronal, sagittal)."""
        apply_orientation(self.viewer, self.image_layer)

    def _watch(self, boxes, clicks, image) -> None:
        """Connect layer events once per layer."""
        for layer, hook in ((boxes, self._schedule), (clicks, self._on_clicks_changed)):
            if id(layer) in self._watched:
                continue
            self._watched.add(id(layer))
            layer.events.data.connect(hook)
            if layer is clicks:
                layer.events.feature_defaults.connect(self._on_click_default)
            layer.bind_key("Enter", lambda _layer: self.accept(), overwrite=True)
            layer.bind_key("Escape", lambda _layer: self.clear(), overwrite=True)
            layer.bind_key("n", lambda _layer: self.new_object(), overwrite=True)
            layer.bind_key("t", lambda _layer: self.negative_check.toggle(), overwrite=True)
            layer.bind_key("p", lambda _layer: self.volume_panel.propagate(), overwrite=True)
        if id(image) not in self._watched:
            self._watched.add(id(image))
            image.events.contrast_limits.connect(self._on_contrast_change)

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

    def _on_contrast_change(self, *_args) -> None:
        layer = self.image_layer
        if layer is not None and self.session is not None:
            mapping = mapping_for_layer(layer)
            if mapping.key != self.session.mapping.key:
                self.embed_panel.cancel()  # its embeddings are for the old window
            self.session.mapping = mapping
            self._schedule()

    @property
    def zoom(self) -> str:
        """``"auto"`` or ``"off"``: the session's region-of-interest rule (the check box)."""
        return "auto" if self.zoom_check.isChecked() else "off"

    def _on_zoom_toggled(self, _checked: bool) -> None:
        if self.session is not None:
            self.session.zoom = self.zoom
            self._schedule()  # the preview follows the new rule
        self._set_status(f"Zoom for small objects: {self.zoom}.")

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
        self._schedule()

    def _labels_candidates(self) -> list[str]:
        """Labels layers that fit the image (same shape), the preview excluded."""
        image = self.image_layer
        if image is None:
            return []
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name != PREVIEW_LAYER
                and tuple(layer.data.shape) == tuple(image.data.shape)]

    def _refresh_labels_choices(self, select: str | None = None) -> None:
        """Fill the Labels box: keep the user's choice, else "<image> labels" if it exists,
        else a new layer (other layers only when the user picks them)."""
        names = self._labels_candidates()
        current = select or self.labels_combo.currentText()
        if current not in names and (current != NEW_LABELS or not self._labels_picked):
            # never pick someone's layer (a reference, say) unasked: only our own default
            image = self.image_layer
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
        self.recovery.set_target(labels)
        if labels is not None and id(labels) not in self._watched:
            self._watched.add(id(labels))
            # paint: brush/fill; set_data: undo/redo (and slicing); data: replaced array
            for event in (labels.events.paint, labels.events.set_data, labels.events.data):
                event.connect(self._objects_changed)
            labels.events.paint.connect(self._on_paint)
        self._update_label_name()
        self.refresh_objects()

    def _objects_changed(self, *_args) -> None:
        self._objects_timer.start()

    def _on_paint(self, *_args) -> None:
        """A slice the user painted on is an anchor that propagation never overwrites."""
        labels = self.target_labels(create=False)
        ref = self.current_slice()
        if labels is not None and ref is not None and labels.selected_label > 0:
            self.volume_panel.add_anchor(int(labels.selected_label), ref.axis, ref.index)

    def target_labels(self, create: bool = True) -> Labels | None:
        """The Labels layer that accepted masks go into.

        The layer chosen in the Labels box; with "New labels layer" and ``create``, a new
        layer with the image's shape, scale, translate and metadata.
        """
        image = self.image_layer
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
        self._refresh_labels_choices(select=name)
        return labels

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
        if ref is not None and self.image_layer is not None:
            self.volume_panel.set_range(self.image_layer.data.shape[ref.axis], ref.index)
        if ref is not None and ref != self.preview_ref:
            self._schedule()

    def update_preview(self) -> None:
        """Predict the mask for the prompts on the displayed slice, on a worker thread.

        A newer prompt supersedes an older run: its result is dropped when it arrives.
        """
        ref = self.current_slice()
        if ref is None or BOXES_LAYER not in self.viewer.layers:
            return
        if self.session is None:
            self._pending = True
            self._set_status("Waiting for the model...")
            return
        self._pending = False
        boxes = boxes_on_slice(self.viewer.layers[BOXES_LAYER], ref)
        positives, negatives = clicks_on_slice(self.viewer.layers[CLICKS_LAYER], ref)
        self._generation += 1
        self._stop_prefetch()
        if not boxes and not positives:
            self._show_preview((self._generation, ref, None))
            return
        embedded = self.session.is_embedded(ref)
        self._set_status(f"Segmenting slice {ref.index} (axis {ref.axis})"
                         + ("..." if embedded else ", embedding it first..."))
        self.embed_panel.hold()  # a running "Embed volume" leaves the cores to this prompt
        self._predict_worker = self._start(self._predict_job, self._generation, ref, boxes,
                                           positives, negatives, self.session,
                                           returned=self._show_preview,
                                           finished=self.embed_panel.release)

    @staticmethod
    def _predict_job(generation, ref, boxes, positives, negatives, session):
        return generation, ref, session.predict_prompts(ref, boxes, positives, negatives)

    def _show_preview(self, result) -> None:
        generation, ref, mask = result
        if generation != self._generation or PREVIEW_LAYER not in self.viewer.layers:
            return  # superseded by a newer prompt
        preview = self.viewer.layers[PREVIEW_LAYER]
        if self.preview_ref is not None:  # clear only the slice drawn last time
            old = [slice(None)] * 3
            old[self.preview_ref.axis] = self.preview_ref.index
            preview.data[tuple(old)] = 0
        if mask is not None and ref is not None:
            index = [slice(None)] * 3
            index[ref.axis] = ref.index
            preview.data[tuple(index)] = mask.astype(np.uint8)
        preview.refresh()
        self.preview_ref, self.preview_mask = ref, mask
        if mask is not None:
            self._set_status(f"Preview on slice {ref.index}: {int(mask.sum())} pixels. "
                             "Enter to accept.")
            self._start_prefetch(ref)

    def _start_prefetch(self, ref: SliceRef) -> None:
        """Embed the neighbouring slices while the user looks at the preview."""
        if self.session is None or self.embed_panel.running:
            return
        self._prefetch_worker = create_worker(self.session.prefetch, ref, 2,
                                              _connect={"errored": lambda exc: logger.warning(
                                                  "prefetch failed: %s", exc)},
                                              _start_thread=False)
        self._prefetch_worker.start()

    def _stop_prefetch(self) -> None:
        if self._prefetch_worker is not None:
            self._prefetch_worker.quit()
            self._prefetch_worker = None

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """Stop background embedding and wait for running workers (before closing)."""
        from qtpy.QtCore import QThreadPool

        self._stop_prefetch()
        self.embed_panel.cancel()
        self.volume_panel.cancel()
        QThreadPool.globalInstance().waitForDone(timeout_ms)
        self.recovery.shutdown()  # a last autosave if the labels changed since the last one

    # ----------------------------------------------------------------- objects
    def _update_label_name(self, *_args) -> None:
        labels = self.target_labels(create=False)
        value = self.label_spin.value()
        self.label_name.setText(label_name(labels, value))
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
            name = label_name(labels, label_id)
            self.objects.addItem(f"{label_id}  {name}  {count} voxels".replace("    ", "  "))

    def _on_object_clicked(self, item) -> None:
        self.label_spin.setValue(int(item.text().split()[0]))

    def new_object(self) -> int:
        """Switch to the next free label id."""
        labels = self.target_labels(create=False)
        used = int(labels.data.max()) if labels is not None and labels.data.size else 0
        self.label_spin.setValue(max(used, self.label_spin.value() - 1) + 1)
        return self.label_spin.value()

    def accept(self) -> int:
        """Write the preview into the target labels as one undoable edit; returns voxels."""
        if self.preview_mask is None or self.preview_ref is None or not self.preview_mask.any():
            show_warning("MedSAM: nothing to accept; draw a box or click first")
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
            labels.visible = True  # napari updates only visible layers' slices in place
            labels.data_setitem(edit.indices, edit.value)
        self.volume_panel.add_anchor(edit.value, ref.axis, ref.index)
        self.clear(ref)
        self.refresh_objects()
        self._set_status(f"Accepted {edit.count} voxels as object {edit.value}.")
        return edit.count

    def clear(self, ref: SliceRef | None = None) -> None:
        """Drop the prompts of slice ``ref`` (default: the displayed one) and the preview."""
        ref = ref or self.current_slice()
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

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the target labels with the image's geometry (asks for a path if none)."""
        from napari_medsam._writer import geometry_from_attributes, label_colors
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
            names = labels.metadata.get("label_names")
            written = write_labels(labels.data, path, geometry_from_attributes(attributes),
                                   label_names=names,
                                   colors=label_colors(labels.colormap, names or ()) or None)
        except (OSError, ValueError) as exc:
            show_error(f"MedSAM: could not save {path}: {exc}")
            return None
        show_info(f"Saved {written}")
        self.recovery.labels_saved(labels)  # safe on disk: its recovery file goes
        return Path(written)

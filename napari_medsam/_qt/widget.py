"""The "Segment (MedSAM)" dock widget: a view of the Qt-free annotation model.

Draw a rectangle (MedSAM boxes layer) or click (MedSAM clicks layer; positive by default,
negative with the toggle or T) on any slice, in whichever axis the viewer slices: a preview of
the model's mask appears in the "MedSAM preview" layer. Accept (Enter) writes it into the
target Labels layer as the current object id through napari's undoable path
(Ctrl+Z / Ctrl+Shift+Z).

The annotation state (session, current object, rules, anchors, preview, pending 3D result)
lives in :class:`~napari_medsam.segmentation.annotation.AnnotationModel`; this widget and its
panels (:mod:`~napari_medsam._qt.objects_view`, :mod:`~napari_medsam._qt.embed_panel`,
:mod:`~napari_medsam._qt.volume_panel`, :mod:`~napari_medsam._qt.recovery_bar`) each hold the
model and the viewer; the panels report upward through Qt signals. Every viewer and layer
event connected here is disconnected when the widget closes or is destroyed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QLabel,
    QPushButton,
    QWidget,
)

from napari_medsam._orientation import apply_orientation
from napari_medsam._prompt_layers import (
    BOXES_LAYER,
    CLICKS_LAYER,
    PREVIEW_LAYER,
    add_prompt_layers,
)
from napari_medsam._qt.adapt_panel import AdaptPanel
from napari_medsam._qt.connections import Connections
from napari_medsam._qt.embed_panel import EmbedPanel
from napari_medsam._qt.image_view import ImageView
from napari_medsam._qt.label_writes import write_change
from napari_medsam._qt.model_view import ModelView
from napari_medsam._qt.objects_view import NEW_LABELS, ObjectsView
from napari_medsam._qt.options_view import OptionsView
from napari_medsam._qt.prompts_view import PromptsView
from napari_medsam._qt.recovery_bar import RecoveryBar
from napari_medsam._qt.save import ask_save_path, save_labels
from napari_medsam._qt.slices import current_slice, mapping_for_layer
from napari_medsam._qt.volume_panel import VolumePanel
from napari_medsam._qt.widget_layout import lay_out
from napari_medsam._qt.window_view import WindowView
from napari_medsam.segmentation import SegmentationSession, SliceRef
from napari_medsam.segmentation.annotation import AnnotationModel
from napari_medsam.segmentation.annotation_edits import label_counts

logger = logging.getLogger(__name__)

__all__ = ["BOXES_LAYER", "CLICKS_LAYER", "NEW_LABELS", "PREVIEW_LAYER", "SegmentWidget",
           "label_counts", "mapping_for_layer"]

SHORTCUTS = ("Enter: accept preview   Escape: clear prompts on this slice   "
             "N: new object   T: toggle positive/negative clicks   P: propagate the object in 3D")
MB = 1024**2  # the cache budget is set in MiB


class SegmentWidget(QWidget):
    """Dock widget: image, model/device, window, object id and list, preview, accept, save."""

    def __init__(self, napari_viewer, *, model_name: str = "litemedsam", device: str = "auto",
                 backend: str = "auto"):
        super().__init__()
        self.viewer = napari_viewer
        self.device = device
        self.models = ModelView(model_name, device, backend, parent=self)
        self.models.loaded.connect(self._on_model_loaded)
        self.models.failed.connect(self._on_error)
        self.annotation = AnnotationModel()
        self._connections = Connections()
        # on deletion (the viewer closed) no method of this widget may run: the callback
        # is a method of the plain Connections object, which outlives the Qt object
        self.destroyed.connect(self._connections.disconnect_all)
        self._closed = False
        self._watched: set[int] = set()
        self._build_ui()
        connect = self._connections.connect
        connect(self.viewer.dims.events.current_step, self._on_slice_change)
        connect(self.viewer.dims.events.order, self._orient)
        connect(self.viewer.dims.events.ndisplay, self._orient)
        self.images.refresh()
        self.models.load()

    # ----------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        self.images = ImageView(self.viewer, parent=self)
        self.images.changed.connect(self._on_image_change)
        self.images.listed.connect(self._on_images_listed)
        self.image_combo = self.images.combo
        self.model_label = self.models.model_label
        self.models.model_combo.currentTextChanged.connect(self._on_model_picked)
        self.window = WindowView(self.annotation, parent=self)
        self.window.mapping_changed.connect(self._on_mapping_changed)
        self.window_combo = self.window.window_combo
        self.objects_view = ObjectsView(self.annotation, self.viewer, parent=self)
        view = self.objects_view
        self.labels_combo, self.label_spin, self.objects = (view.labels_combo, view.label_spin,
                                                            view.objects)
        self.label_name, self.label_swatch = view.label_name, view.label_swatch
        self.prompts = PromptsView(self.annotation, self.viewer,
                                   busy=lambda: self.embed_panel.running, parent=self)
        self.negative_check = self.prompts.negative_check
        self.options = OptionsView(self.annotation, parent=self)
        self.options.zoom_changed.connect(self._on_zoom_changed)
        self.overwrite_check, self.zoom_check = (self.options.overwrite_check,
                                                 self.options.zoom_check)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write the preview into the labels (Enter)")
        self.accept_button.clicked.connect(self.accept)
        clear_button = QPushButton("Clear")
        clear_button.setToolTip("Drop the prompts on this slice (Escape)")
        clear_button.clicked.connect(lambda: self.clear())
        save_button = QPushButton("Save labels...")
        save_button.clicked.connect(lambda: self.save())
        self.status = QLabel("Draw a box or click on a slice.")
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(48)
        self._build_panels()
        lay_out(self, clear_button, save_button)
        self.setToolTip(SHORTCUTS)

    def _build_panels(self) -> None:
        """The panels; each reports upward through its signals, connected here."""
        # backend, cache budget, "Embed volume"
        self.embed_panel = EmbedPanel(self.annotation, self.viewer, self.backend)
        self.embed_panel.backend_chosen.connect(self.set_backend)
        self.embed_panel.server_chosen.connect(self.set_server)
        self.embed_panel.session_reset.connect(self._on_image_change)
        self.embed_panel.status.connect(self._set_status)
        self.prompts.status.connect(self._set_status)
        self.prompts.decoding.connect(self.embed_panel.hold)
        self.prompts.decoded.connect(self.embed_panel.release)
        self.cache_spin = self.embed_panel.cache_spin
        self.recovery = RecoveryBar(self.viewer)  # autosave; offers a scan's unsaved labels
        self.recovery.restored.connect(
            lambda layer: self.objects_view.refresh_choices(layer.name))
        self.objects_view.target_changed.connect(self.recovery.set_target)
        self.volume_panel = VolumePanel(self.annotation, self.viewer)
        self.volume_panel.status.connect(self._set_status)
        self.volume_panel.labels_changed.connect(self.refresh_objects)
        self.adapt_panel = AdaptPanel(self.annotation, self.viewer)
        self.adapt_panel.status.connect(self._set_status)
        self.adapt_panel.adapted.connect(lambda _report: self.models.refresh_models())
        self.adapt_panel.use_model.connect(self.set_model)
        self.adapt_button = self.adapt_panel.show_button

    def _set_status(self, text: str) -> None:
        self.status.setText(text)
        logger.info(text)

    # ----------------------------------------------------------------- model state
    @property
    def session(self) -> SegmentationSession | None:
        """The annotation model's session (None until a model and an image are there)."""
        return self.annotation.session

    @property
    def preview_ref(self) -> SliceRef | None:
        return self.annotation.preview_ref

    @property
    def preview_mask(self) -> np.ndarray | None:
        """The 2D preview on :attr:`preview_ref` (tests and scripts reset it to wait)."""
        return self.annotation.preview_mask

    @preview_mask.setter
    def preview_mask(self, mask: np.ndarray | None) -> None:
        self.annotation.preview_mask = mask

    # ----------------------------------------------------------------- model
    @property
    def model(self):
        """The prompt model (engine) loaded last, or None."""
        return self.models.model

    @property
    def model_name(self) -> str:
        return self.models.model_name

    @property
    def backend(self) -> str:
        return self.models.backend

    def set_backend(self, backend: str) -> None:
        """Reload the model on ``backend`` (``"auto"``, ``"onnxruntime"`` or ``"openvino"``).

        The session keeps working on the current model until the new one is loaded; the
        in-memory embeddings stay valid (both backends compute the same f32 embeddings).
        """
        if backend != self.backend or self.model is None:
            self._stop_encoding()
            self.models.set_backend(backend)

    def set_server(self, server: str) -> None:
        """Embed new slices on a ``napari-medsam serve`` server (``""``: this computer)."""
        self._stop_encoding()
        self.models.set_server(server)

    def set_model(self, name: str) -> None:
        """Answer prompts with registry model ``name`` (an adapted one, or back to a base)."""
        if name != self.model_name or self.model is None:
            self._stop_encoding()
            self.models.set_model(name)

    def _stop_encoding(self) -> None:
        """Stop the volume embedding and the prefetch (they encode with the model going)."""
        self.embed_panel.cancel()
        self.prompts.stop_prefetch()

    def _on_model_picked(self, name: str) -> None:
        if name:
            self.set_model(name)

    def _on_model_loaded(self, model) -> None:
        base = model.spec.source.get("adapted_from") or model.spec.name
        self.adapt_panel.configure(base, self.device, self.backend)
        self._on_image_change()
        self.prompts.model_ready()

    def _on_error(self, exc: Exception) -> None:
        show_error(f"MedSAM: {exc}")
        self._set_status(f"Error: {exc}")

    # ----------------------------------------------------------------- layers
    def _on_images_listed(self) -> None:
        self.annotation.image = self.image_layer
        self.objects_view.refresh_choices()

    @property
    def image_layer(self) -> Image | None:
        """The image layer being annotated (the *Image* choice), or None."""
        return self.images.layer

    def _on_image_change(self, *_args) -> None:
        self.embed_panel.cancel()  # it embeds the old session's volume
        layer = self.image_layer
        self.annotation.image = layer
        self.recovery.set_image(layer)
        cache = self.session.cache if self.session is not None else None
        self.annotation.session = None  # the preview goes with it
        self.objects_view.refresh_choices()
        if layer is None or self.model is None:
            return
        boxes, clicks = add_prompt_layers(self.viewer, layer)
        self._orient()
        self._watch(boxes, clicks, layer)
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        self.annotation.session = SegmentationSession(
            self.model, layer.data, mapping_for_layer(layer), data_id=id(layer.data),
            cache=cache, cache_bytes=self.embed_panel.cache_bytes, disk_cache=True,
            zoom=self.zoom)
        self._note_domain()
        self.refresh_objects()

    def _note_domain(self) -> None:
        """Say so when an adapted model meets slices unlike those it learned from (its base
        model's decoder answers there: :meth:`SegmentationSession.domain_note`)."""
        ref = self.current_slice()
        note = self.session.domain_note(ref.axis if ref is not None else 0)
        if note is not None:
            show_info(f"MedSAM: {note}")
            self._set_status(note)

    def _orient(self, *_args) -> None:
        """Superior up when the view shows the slice axis vertically (coronal, sagittal)."""
        apply_orientation(self.viewer, self.image_layer)

    def _watch(self, boxes, clicks, image) -> None:
        """Connect layer events and key bindings once per layer."""
        self.prompts.watch(boxes, clicks)
        bind = self._connections.bind_key
        for layer in (boxes, clicks):
            if id(layer) in self._watched:
                continue
            self._watched.add(id(layer))
            bind(layer, "Enter", lambda _layer: self.accept())
            bind(layer, "Escape", lambda _layer: self.clear())
            bind(layer, "n", lambda _layer: self.new_object())
            bind(layer, "t", lambda _layer: self.negative_check.toggle())
            bind(layer, "p", lambda _layer: self.volume_panel.propagate())
        self.window.watch(image)

    def set_window(self, name: str) -> None:
        """Apply a CT window preset or MRI normalisation by name to the image layer."""
        self.window.set_window(name)

    def _on_mapping_changed(self, new_key: bool) -> None:
        if new_key:
            self.embed_panel.cancel()  # its embeddings are for the old window
        self._schedule()

    @property
    def zoom(self) -> str:
        """``"auto"`` or ``"off"``: the session's region-of-interest rule (the check box)."""
        return self.options.zoom

    def _on_zoom_changed(self, zoom: str) -> None:
        if self.session is not None:
            self._schedule()  # the preview follows the new rule
        self._set_status(f"Zoom for small objects: {zoom}.")

    # ----------------------------------------------------------------- objects
    def target_labels(self, create: bool = True):
        """The Labels layer that accepted masks go into (a new one with ``create``)."""
        return self.objects_view.target_labels(create)

    def refresh_objects(self) -> None:
        """List the objects of the target labels with their voxel counts."""
        self.objects_view.refresh_objects()

    def new_object(self) -> int:
        """Switch to the next free label id."""
        return self.objects_view.new_object()

    def current_slice(self) -> SliceRef | None:
        """The slice on display: the array axis napari slices and its index."""
        return current_slice(self.viewer, self.image_layer)

    def _on_slice_change(self, *_args) -> None:
        ref = self.current_slice()
        if ref is not None and self.image_layer is not None:
            self.volume_panel.set_range(self.image_layer.data.shape[ref.axis], ref.index)
        if ref is not None and ref != self.preview_ref:
            self._schedule()

    # ----------------------------------------------------------------- prompts
    def _schedule(self, *_args) -> None:
        self.prompts.schedule()

    def update_preview(self) -> None:
        """Predict the mask for the prompts on the displayed slice, on a worker thread."""
        self.prompts.update_preview()

    def accept(self) -> int:
        """Write the preview into the target labels as one undoable edit; returns voxels."""
        if not self.annotation.has_preview:
            show_warning("MedSAM: nothing to accept; draw a box or click first")
            return 0
        labels = self.target_labels()
        ref = self.preview_ref
        try:
            change = self.annotation.preview_change(labels.data)
        except ValueError as exc:
            show_error(f"MedSAM: {exc}")
            return 0
        with self.annotation.own_write():
            write_change(labels, change)
        self.annotation.accepted(change, ref)  # the slice becomes an anchor
        self.clear(ref)
        self.refresh_objects()
        self._set_status(f"Accepted {change.count} voxels as object {change.label}.")
        return change.count

    def clear(self, ref: SliceRef | None = None) -> None:
        """Drop the prompts of slice ``ref`` (default: the displayed one) and the preview."""
        self.prompts.clear(ref)

    # ----------------------------------------------------------------- closing
    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """Stop background embedding and wait for running workers (before closing)."""
        from qtpy.QtCore import QThreadPool

        self._stop_encoding()
        self.volume_panel.cancel()
        self.adapt_panel.cancel()
        QThreadPool.globalInstance().waitForDone(timeout_ms)
        self.recovery.shutdown()  # a last autosave if the labels changed since the last one

    def close_down(self) -> None:
        """The widget closes: stop the workers, write the last autosave and disconnect every
        viewer and layer event (and key binding) the widget and its views connected."""
        if self._closed:
            return
        self._closed = True
        self._connections.disconnect_all()
        self.models.close()
        self.images.close()
        self.window.close()
        self.prompts.close()
        self.objects_view.close()
        self.shutdown()
        self.annotation.close()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.close_down()
        super().closeEvent(event)

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the target labels with the image's geometry (asks for a path if none)."""
        labels = self.target_labels(create=False)
        if labels is None:
            show_warning("MedSAM: no labels to save yet")
            return None
        if path is None:
            path = ask_save_path(self, labels.name)
            if path is None:
                return None
        written = save_labels(labels, self.image_layer, path)
        if written is not None:
            self.recovery.labels_saved(labels)  # safe on disk: its recovery file goes
        return written

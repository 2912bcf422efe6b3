"""The "3D" part of the Segment widget: propagation, 3D boxes, refine and fill gaps.

Thin Qt glue over :mod:`napari_medsam.segmentation.propagation` and
:mod:`napari_medsam.segmentation.bulk`: the work runs on a worker thread, slices stream into the
preview layer as they are done, Cancel stops between slices (what was done stays in the
preview), and Accept writes the whole result into the labels as one undoable edit. Nothing
touches the labels before Accept.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from napari_medsam._prompt_layers import BOXES_LAYER, PREVIEW_LAYER, boxes_on_slice
from napari_medsam.segmentation import SliceRef, replace_object

if TYPE_CHECKING:
    from napari_medsam._widget import SegmentWidget

logger = logging.getLogger(__name__)

#: Preview values: the object, voxels a refine adds, voxels it removes.
KEPT, ADDED, REMOVED = 1, 2, 3
DIFF_COLORS = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                              KEPT: "#ffd700", ADDED: "#33ff66",
                                              REMOVED: "#ff3355"})


class VolumePanel(QGroupBox):
    """Buttons and state for the 3D operations of one :class:`SegmentWidget`."""

    #: (done, total) from a worker thread; delivered on the GUI thread.
    progress_changed = Signal(int, int)

    def __init__(self, owner: SegmentWidget) -> None:
        super().__init__("3D")
        self.owner = owner
        self._worker = None
        self._cancel = threading.Event()
        self.pending: dict | None = None  # what Accept 3D would write
        self.anchors: dict[tuple[int, int], set[int]] = {}  # (label, axis) -> slice indices

        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip(
            "Segment the current object on the slices above and below its anchor slices "
            "(slices you accepted or painted); stops where the object ends (P)")
        self.propagate_button.clicked.connect(self.propagate)
        self.first_spin, self.last_spin = QSpinBox(), QSpinBox()
        for spin, tip in ((self.first_spin, "first"), (self.last_spin, "last")):
            spin.setToolTip(f"{tip} slice of the 3D box (inclusive)")
        self.box_button = QPushButton("3D box")
        self.box_button.setToolTip("The box drawn on this slice, applied to every slice from "
                                   "first to last, each adapted to its neighbour's mask")
        self.box_button.clicked.connect(self.box_3d)
        self.refine_button = QPushButton("Refine")
        self.refine_button.setToolTip("Re-segment every slice of the current object from its "
                                      "own box; shows added (green) and removed (red) voxels")
        self.refine_button.clicked.connect(self.refine)
        self.fill_button = QPushButton("Fill gaps")
        self.fill_button.setToolTip("Segment the unlabelled slices between labelled slices of "
                                    "the current object")
        self.fill_button.clicked.connect(self.fill_gaps)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current slice; what is done stays in the "
                                      "preview")
        self.cancel_button.clicked.connect(self.cancel)
        self.accept_button = QPushButton("Accept 3D")
        self.accept_button.setToolTip("Write the 3D preview into the labels (one undo step)")
        self.accept_button.clicked.connect(self.accept)
        self.reject_button = QPushButton("Reject")
        self.reject_button.clicked.connect(self.reject)
        self.progress = QProgressBar()
        self.progress_changed.connect(self._show_progress)
        self.progress.setTextVisible(True)
        self.info = QLabel("")
        self.info.setWordWrap(True)

        grid = QGridLayout(self)
        grid.addWidget(self.propagate_button, 0, 0)
        grid.addWidget(self.refine_button, 0, 1)
        grid.addWidget(self.fill_button, 0, 2)
        grid.addWidget(QLabel("Slices"), 1, 0)
        grid.addWidget(self.first_spin, 1, 1)
        grid.addWidget(self.last_spin, 1, 2)
        grid.addWidget(self.box_button, 2, 0)
        grid.addWidget(self.accept_button, 2, 1)
        grid.addWidget(self.reject_button, 2, 2)
        grid.addWidget(self.progress, 3, 0, 1, 2)
        grid.addWidget(self.cancel_button, 3, 2)
        grid.addWidget(self.info, 4, 0, 1, 3)
        self._set_running(False)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _set_running(self, running: bool) -> None:
        for button in (self.propagate_button, self.box_button, self.refine_button,
                       self.fill_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.accept_button.setEnabled(not running and self.pending is not None)
        self.reject_button.setEnabled(not running and self.pending is not None)

    def set_range(self, size: int, index: int) -> None:
        """Fit the slice range spin boxes to the displayed axis."""
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(0, max(0, size - 1))
        if self.first_spin.value() == self.last_spin.value() == 0:
            self.first_spin.setValue(max(0, index - 5))
            self.last_spin.setValue(min(size - 1, index + 5))

    def add_anchor(self, label: int, axis: int, index: int) -> None:
        """Mark slice ``index`` of object ``label`` as user-made (propagation keeps it)."""
        self.anchors.setdefault((label, axis), set()).add(int(index))

    # ------------------------------------------------------------------ helpers
    def _context(self):
        owner = self.owner
        ref = owner.current_slice()
        if owner.session is None or ref is None:
            show_warning("MedSAM: load a model and show a 2D slice first")
            return None
        if self.running:
            show_warning("MedSAM: a 3D operation is running; cancel it first")
            return None
        return owner.session, ref, owner.label_spin.value()

    def _preview(self):
        return self.owner.viewer.layers[PREVIEW_LAYER]

    def _clear_preview(self) -> None:
        owner = self.owner
        owner.preview_ref, owner.preview_mask = None, None
        if PREVIEW_LAYER in owner.viewer.layers:
            preview = self._preview()
            preview.data[...] = 0
            preview.refresh()

    def _start(self, job) -> None:
        self._cancel.clear()
        self._clear_preview()
        self._preview().colormap = DIFF_COLORS
        self.pending = None
        self._set_running(True)
        connect = {"returned": self._on_returned, "errored": self._on_error,
                   "finished": self._on_finished}
        if inspect.isgeneratorfunction(job):
            connect["yielded"] = self._on_yielded
        worker = create_worker(job, _connect=connect, _start_thread=False)
        self._worker = worker
        worker.start()

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _on_yielded(self, item) -> None:
        if item[0] == "progress":
            self._show_progress(item[1], item[2])
            return
        _, axis, index, mask = item  # one propagated slice
        preview = self._preview()
        key = [slice(None)] * 3
        key[axis] = index
        preview.data[tuple(key)] = np.where(mask, KEPT, 0).astype(preview.data.dtype)
        preview.refresh()

    def _on_returned(self, pending) -> None:
        self.pending = pending
        if pending is None:
            return
        preview = self._preview()
        if pending["kind"] == "refine":
            result = pending["result"]
            diff = np.zeros(preview.data.shape, dtype=preview.data.dtype)
            diff[result.mask & ~result.added] = KEPT
            diff[result.added] = ADDED
            diff[result.removed] = REMOVED
            preview.data = diff
        preview.colormap = DIFF_COLORS
        preview.refresh()
        self.info.setText(pending["summary"])
        self.owner._set_status(pending["summary"] + " Accept 3D or Reject.")

    def _on_error(self, exc: Exception) -> None:
        show_error(f"MedSAM: {exc}")
        self.info.setText(f"Error: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)

    # ------------------------------------------------------------------ operations
    def _anchor_masks(self, labels_data, label: int, ref: SliceRef) -> dict[int, np.ndarray]:
        indices = set(self.anchors.get((label, ref.axis), set()))
        current = np.take(labels_data, ref.index, axis=ref.axis) == label
        if current.any():
            indices.add(ref.index)
        return {i: np.take(labels_data, i, axis=ref.axis) == label for i in sorted(indices)}

    def propagate(self) -> None:
        """Propagate the current object from its anchor slices along the displayed axis."""
        context = self._context()
        if context is None:
            return
        session, ref, label = context
        labels = self.owner.target_labels(create=False)
        anchors = self._anchor_masks(labels.data, label, ref) if labels is not None else {}
        anchors = {i: m for i, m in anchors.items() if m.any()}
        if not anchors:
            show_warning(f"MedSAM: object {label} has no accepted slice along this axis yet; "
                         "accept a mask on a slice first")
            return
        from napari_medsam.segmentation.propagation import propagate

        size = session.volume.shape[ref.axis]
        cancel = self._cancel.is_set

        def job():
            masks: dict[int, np.ndarray] = {}
            stops = []
            for done, result in enumerate(propagate(session, ref.axis, anchors, start=ref.index,
                                                    cancel=cancel), start=1):
                if result.stopped:
                    stops.append(f"{result.stopped} at {result.index}")
                else:
                    masks[result.index] = result.mask
                yield ("slice", ref.axis, result.index, result.mask)
                yield ("progress", min(done + len(anchors), size), size)
            return self._slices_pending(label, ref.axis, masks, stops, cancel())

        self._start(job)

    def box_3d(self) -> None:
        """The box drawn on this slice, through the slice range of the spin boxes."""
        context = self._context()
        if context is None:
            return
        session, ref, label = context
        boxes = boxes_on_slice(self.owner.viewer.layers[BOXES_LAYER], ref) \
            if BOXES_LAYER in self.owner.viewer.layers else []
        if not boxes:
            show_warning("MedSAM: draw a box on this slice first")
            return
        first, last = sorted((self.first_spin.value(), self.last_spin.value()))
        if not first <= ref.index <= last:
            show_warning(f"MedSAM: the displayed slice {ref.index} is outside the range "
                         f"{first}..{last}")
            return
        from napari_medsam.segmentation.propagation import box_range

        cancel = self._cancel.is_set
        box = boxes[-1]

        def job():
            masks: dict[int, np.ndarray] = {}
            total = last - first + 1
            for done, result in enumerate(box_range(session, ref.axis, ref.index, box, first,
                                                    last, cancel=cancel), start=1):
                masks[result.index] = result.mask
                yield ("slice", ref.axis, result.index, result.mask)
                yield ("progress", done, total)
            return self._slices_pending(label, ref.axis, masks, [], cancel())

        self._start(job)

    def _bulk(self, which: str) -> None:
        context = self._context()
        if context is None:
            return
        session, ref, label = context
        labels = self.owner.target_labels(create=False)
        if labels is None or not (labels.data == label).any():
            show_warning(f"MedSAM: object {label} is empty; pick an existing object")
            return
        from napari_medsam.segmentation import bulk

        function = bulk.refine_label if which == "refine" else bulk.fill_gaps
        data = np.asarray(labels.data).copy()  # the user may paint meanwhile
        cancel = self._cancel.is_set
        keep = not self.owner.overwrite_check.isChecked()

        def job():
            result = function(session, data, label, ref.axis, cancel=cancel,
                              progress=self.progress_changed.emit, keep_others=keep)
            if cancel():
                return None
            name = "Refine" if which == "refine" else "Fill gaps"
            summary = (f"{name} of object {label}: +{int(result.added.sum())} / "
                       f"-{int(result.removed.sum())} voxels.")
            return {"kind": "refine", "label": label, "result": result, "summary": summary}

        self._start(job)

    def refine(self) -> None:
        """Re-segment every slice of the current object; preview the difference."""
        self._bulk("refine")

    def fill_gaps(self) -> None:
        """Segment the unlabelled slices inside the current object."""
        self._bulk("fill")

    @staticmethod
    def _slices_pending(label: int, axis: int, masks: dict[int, np.ndarray], stops: list[str],
                        cancelled: bool) -> dict:
        summary = (f"Object {label}: {sum(1 for m in masks.values() if m.any())} slices "
                   f"segmented along axis {axis}")
        if stops:
            summary += f" (stopped: {', '.join(stops)})"
        if cancelled:
            summary += " (cancelled: the slices done so far are kept in the preview)"
        return {"kind": "slices", "label": label, "axis": axis, "masks": masks,
                "summary": summary + "."}

    def cancel(self) -> None:
        """Stop the running operation between two slices."""
        self._cancel.set()

    def reject(self) -> None:
        """Drop the 3D preview; the labels stay as they are."""
        self.pending = None
        self._clear_preview()
        self._preview().colormap = DIFF_COLORS
        self.info.setText("Rejected.")
        self._set_running(False)

    def accept(self) -> int:
        """Write the 3D preview into the labels as one undoable edit; returns voxels changed."""
        pending = self.pending
        labels = self.owner.target_labels(create=pending is not None)
        if pending is None or labels is None:
            show_warning("MedSAM: nothing to accept in 3D")
            return 0
        label = pending["label"]
        overwrite = self.owner.overwrite_check.isChecked()
        if pending["kind"] == "refine":
            result = pending["result"]
            edit = replace_object(labels.data, result.mask, label, overwrite=overwrite)
        else:
            axis, masks = pending["axis"], pending["masks"]
            new = labels.data == label
            region = np.zeros(labels.data.shape, dtype=bool)
            for index, mask in masks.items():
                key = [slice(None)] * 3
                key[axis] = index
                new[tuple(key)] = mask
                region[tuple(key)] = True
            edit = replace_object(labels.data, new, label, region=region, overwrite=overwrite)
        if edit.count:
            labels.visible = True  # napari updates only visible layers' slices in place
            labels.data_setitem(edit.indices, edit.values)
        self.pending = None
        self._clear_preview()
        self._set_running(False)
        text = f"Accepted: {edit.count} voxels of object {label} changed (Ctrl+Z undoes it)."
        self.info.setText(text)
        show_info(f"MedSAM: {text}")
        self.owner.refresh_objects()
        return edit.count

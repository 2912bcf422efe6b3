"""The "3D" part of the Segment widget: propagation, 3D boxes, refine and fill gaps.

Thin Qt glue over :mod:`napari_medsam.segmentation.propagation` and
:mod:`napari_medsam.segmentation.bulk`: the work runs on a worker thread, slices stream into the
preview layer as they are done, Cancel stops between slices (what was done stays in the
preview), and Accept writes the whole result into the labels as one undoable edit. Nothing
touches the labels before Accept. After a propagation the info label says where and why each
direction stopped, and :class:`~napari_medsam._qt.stops_view.StopsView` offers *Go to* and
*Continue past* for each stop (continued slices join the same pending result); *Cut here*
drops the displayed slice and the preview beyond it (the object ends there) and marks that
slice outside the object, so that later runs of the object stop there too (*Forget cuts*
drops the marks); with *Only within Slices* on, Propagate and Continue stay in the *Slices*
range. With *Learn from accepted slices* on (and the export extra installed), Propagate first
adapts the decoder to the object's accepted slices
(:mod:`napari_medsam.adaptation.within_scan`) and uses it between the outermost of them.

The jobs, the pending result and the 3D edit live in the Qt-free annotation model
(:mod:`napari_medsam.segmentation.annotation_jobs`, :mod:`~.annotation_edits`); the panel
holds the annotation model and the viewer and reports upward through Qt signals (:attr:`status`,
:attr:`labels_changed`).
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from napari_medsam._prompt_layers import BOXES_LAYER, PREVIEW_LAYER, boxes_on_slice
from napari_medsam._qt.label_writes import write_change
from napari_medsam._qt.slices import current_slice
from napari_medsam._qt.stops_view import StopsView
from napari_medsam.models.export_common import missing_export_packages
from napari_medsam.segmentation import SliceRef
from napari_medsam.segmentation.annotation_edits import (
    ADDED,
    KEPT,
    REMOVED,
    Pending3D,
    PendingRefine,
    PendingSlices,
    cut_pending,
    refine_diff,
)
from napari_medsam.segmentation.annotation_jobs import (
    Progress,
    SliceDone,
    box_job,
    bulk_job,
    continue_job,
    continue_mask,
    propagate_job,
)

if TYPE_CHECKING:
    from napari_medsam.segmentation import SegmentationSession
    from napari_medsam.segmentation.annotation import AnnotationModel
    from napari_medsam.segmentation.propagation_stops import DirectionStop

logger = logging.getLogger(__name__)

DIFF_COLORS = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                              KEPT: "#ffd700", ADDED: "#33ff66",
                                              REMOVED: "#ff3355"})


class VolumePanel(QGroupBox):
    """Buttons of the 3D operations on an :class:`AnnotationModel`'s current object.

    Parameters
    ----------
    annotation
        The annotation model: session, current object, anchors and slices cut at, overwrite
        rule, target labels, propagation parameters and the pending 3D result.
    viewer
        The napari viewer (the displayed slice, the boxes and preview layers).
    """

    #: (done, total) from a worker thread; delivered on the GUI thread.
    progress_changed = Signal(int, int)
    #: A line about the learning before a propagation, from a worker thread.
    learning = Signal(str)
    #: A line for the widget's status.
    status = Signal(str)
    #: Accept 3D wrote into the target labels.
    labels_changed = Signal()

    # Long on purpose: it only builds the panel, a short block per control, then the grid.
    def __init__(self, annotation: AnnotationModel, viewer) -> None:
        super().__init__("3D")
        self.annotation = annotation
        self.viewer = viewer
        self._worker = None
        self._cancel = threading.Event()

        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip(
            "Segment the current object on the slices above and below its anchor slices "
            "(slices you accepted or painted); stops where the object ends (P)")
        self.propagate_button.clicked.connect(self.propagate)
        self.first_spin, self.last_spin = QSpinBox(), QSpinBox()
        for spin, tip in ((self.first_spin, "first"), (self.last_spin, "last")):
            spin.setToolTip(f"{tip} slice of the 3D box, and of Propagate with Only within "
                            "Slices (inclusive)")
        self.range_check = QCheckBox("Only within Slices")
        self.range_check.setToolTip("Propagate and Continue stop at the first and last slice "
                                    "above (reason: end of range); off: they go on until the "
                                    "object ends")
        self.learn_check = QCheckBox("Learn from accepted slices")
        self.learn_check.setToolTip(
            "Propagate first adapts the model to this object's accepted slices (3 or more "
            "along this axis; about 45 s on 2 CPU cores) and segments the slices between the "
            "outermost of them with it; beyond them the model as it is. Hippocampus, 3 "
            "accepted slices: 0.70 -> 0.79 mean Dice")
        missing = missing_export_packages()
        if missing:
            self.learn_check.setEnabled(False)
            self.learn_check.setToolTip(f"Needs the export extra (missing: {', '.join(missing)})"
                                        ": pip install 'napari-medsam[export]'")
        self.learning.connect(self._show_learning)
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
        self.cut_button = QPushButton("Cut here")
        self.cut_button.setToolTip(
            "The object ends on the displayed slice: drop it and every preview slice beyond "
            "it, away from your accepted slices (for a run that walked into a look-alike "
            "neighbour: the next vertebra, the next rib)")
        self.cut_button.clicked.connect(self.cut_here)
        self.marks = QLabel("")
        self.marks.setWordWrap(True)
        self.forget_button = QPushButton("Forget cuts")
        self.forget_button.setToolTip("Propagate may go past the slices you cut the current "
                                      "object at again")
        self.forget_button.clicked.connect(self.forget_cuts)
        annotation.events.outside.connect(self._show_marks)
        annotation.events.label.connect(self._show_marks)
        self.progress = QProgressBar()
        self.progress_changed.connect(self._show_progress)
        self.progress.setTextVisible(True)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.stops_view = StopsView()
        self.stops_view.go_to.connect(self.go_to)
        self.stops_view.continue_requested.connect(self.continue_past)

        grid = QGridLayout(self)
        grid.addWidget(self.propagate_button, 0, 0)
        grid.addWidget(self.refine_button, 0, 1)
        grid.addWidget(self.fill_button, 0, 2)
        grid.addWidget(QLabel("Slices"), 1, 0)
        grid.addWidget(self.first_spin, 1, 1)
        grid.addWidget(self.last_spin, 1, 2)
        grid.addWidget(self.range_check, 2, 1, 1, 2)
        grid.addWidget(self.learn_check, 3, 0, 1, 3)
        grid.addWidget(self.box_button, 4, 0)
        grid.addWidget(self.accept_button, 4, 1)
        grid.addWidget(self.reject_button, 4, 2)
        grid.addWidget(self.marks, 5, 0, 2, 2)
        grid.addWidget(self.cut_button, 5, 2)
        grid.addWidget(self.forget_button, 6, 2)
        grid.addWidget(self.progress, 7, 0, 1, 2)
        grid.addWidget(self.cancel_button, 7, 2)
        grid.addWidget(self.info, 8, 0, 1, 3)
        grid.addWidget(self.stops_view, 9, 0, 1, 3)
        self._set_running(False)
        self._show_marks()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def pending(self) -> Pending3D | None:
        """What Accept 3D would write (the annotation model's pending result)."""
        return self.annotation.pending

    def _set_running(self, running: bool) -> None:
        for button in (self.propagate_button, self.box_button, self.refine_button,
                       self.fill_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.accept_button.setEnabled(not running and self.pending is not None)
        self.reject_button.setEnabled(not running and self.pending is not None)
        pending = self.pending
        self.cut_button.setEnabled(not running and isinstance(pending, PendingSlices)
                                   and bool(pending.stops))
        self.stops_view.show_stops(pending.stops if isinstance(pending, PendingSlices) else (),
                                   enabled=not running)

    def set_range(self, size: int, index: int) -> None:
        """Fit the slice range spin boxes to the displayed axis."""
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(0, max(0, size - 1))
        if self.first_spin.value() == self.last_spin.value() == 0:
            self.first_spin.setValue(max(0, index - 5))
            self.last_spin.setValue(min(size - 1, index + 5))

    def _range(self, start: int) -> tuple[int, int] | None | bool:
        """``stop_at``: the *Slices* range if *Only within Slices* is on, else None; False
        (after a warning) when the run's first slice ``start`` is outside it."""
        if not self.range_check.isChecked():
            return None
        first, last = sorted((self.first_spin.value(), self.last_spin.value()))
        if not first <= start <= last:
            show_warning(f"MedSAM: slice {start} is outside the range {first}..{last}; "
                         "change Slices or turn off Only within Slices")
            return False
        return first, last

    # ------------------------------------------------------------------ helpers
    def _context(self) -> tuple[SegmentationSession, SliceRef, int] | None:
        ref = current_slice(self.viewer, self.annotation.image)
        session = self.annotation.session
        if session is None or ref is None:
            show_warning("MedSAM: load a model and show a 2D slice first")
            return None
        if self.running:
            show_warning("MedSAM: a 3D operation is running; cancel it first")
            return None
        return session, ref, self.annotation.label

    def _preview(self):
        return self.viewer.layers[PREVIEW_LAYER]

    def _clear_preview(self) -> None:
        self.annotation.clear_preview()
        if PREVIEW_LAYER in self.viewer.layers:
            preview = self._preview()
            preview.data[...] = 0
            preview.refresh()

    def _start(self, job, *, streams: bool, keep: bool = False) -> None:
        """Run ``job``; ``keep``: the preview and the pending result stay (Continue)."""
        self._cancel.clear()
        if not keep:
            self._clear_preview()
            self._preview().colormap = DIFF_COLORS
            self.annotation.pending = None
        self._set_running(True)
        connect = {"returned": self._on_returned, "errored": self._on_error,
                   "finished": self._on_finished}
        if streams:
            connect["yielded"] = self._on_yielded
        worker = create_worker(job, _connect=connect, _start_thread=False)
        self._worker = worker
        worker.start()

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _show_learning(self, text: str) -> None:
        self.progress.setRange(0, 0)  # busy until the first slice's progress
        self.info.setText(f"Learning: {text}")

    def _on_yielded(self, item: SliceDone | Progress) -> None:
        if isinstance(item, Progress):
            self._show_progress(item.done, item.total)
            return
        self._paint_preview(item.axis, item.index, item.mask)
        self._preview().refresh()

    def _paint_preview(self, axis: int, index: int, mask: np.ndarray | bool) -> None:
        """Slice ``index`` along ``axis`` of the 3D preview shows ``mask`` (no refresh)."""
        preview = self._preview()
        key = [slice(None)] * preview.data.ndim
        key[axis] = index
        preview.data[tuple(key)] = np.where(mask, KEPT, 0).astype(preview.data.dtype)

    def _on_returned(self, pending: Pending3D | None) -> None:
        self.annotation.pending = pending
        if pending is None:
            return
        preview = self._preview()
        if isinstance(pending, PendingRefine):
            preview.data = refine_diff(pending.result, preview.data.dtype)
        preview.colormap = DIFF_COLORS
        preview.refresh()
        lines = pending.lines if isinstance(pending, PendingSlices) else ()
        self.info.setText("\n".join(lines) or pending.summary)
        self.status.emit(pending.summary + " Accept 3D or Reject.")

    def _on_error(self, exc: Exception) -> None:
        show_error(f"MedSAM: {exc}")
        self.info.setText(f"Error: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)

    # ------------------------------------------------------------------ operations
    def propagate(self) -> None:
        """Propagate the current object from its anchor slices along the displayed axis."""
        context = self._context()
        if context is None:
            return
        session, ref, label = context
        labels = self.annotation.target
        anchors = ({} if labels is None else
                   self.annotation.propagation_anchors(labels.data, label, ref))
        if not any(mask.any() for mask in anchors.values()):
            if ref.index in self.annotation.outside_slices(label, ref.axis):
                show_warning(f"MedSAM: you cut object {label} at slice {ref.index}: it is "
                             "marked outside the object; show an accepted slice, or press "
                             "Forget cuts")
            else:
                show_warning(f"MedSAM: object {label} has no accepted slice along this axis "
                             "yet; accept a mask on a slice first")
            return
        stop_at = self._range(ref.index)
        if stop_at is False:
            return
        if self.learn_check.isChecked() and self.learn_check.isEnabled():
            from napari_medsam.adaptation.within_scan import learn_and_propagate_job

            self.info.setText(f"Learning object {label} from {len(anchors)} accepted "
                              "slice(s)...")
            job = partial(learn_and_propagate_job, session, ref, anchors, label,
                          self._cancel.is_set, stop_at, progress=self.learning.emit,
                          params=self.annotation.params)
        else:
            job = partial(propagate_job, session, ref, anchors, label, self._cancel.is_set,
                          stop_at, self.annotation.params)
        self._start(job, streams=True)

    def continue_past(self, stop: DirectionStop) -> None:
        """Continue the pending propagation past ``stop`` (one of its stops); the new slices
        stream into the preview and join the pending result."""
        pending, session = self.pending, self.annotation.session
        if self.running or session is None or not isinstance(pending, PendingSlices) \
                or stop not in pending.stops:
            show_warning("MedSAM: nothing to continue (propagate first, and wait for it)")
            return
        stop_at = self._range(stop.last + stop.direction)
        if stop_at is False:
            return
        labels = self.annotation.target
        anchors = ({} if labels is None else self.annotation.anchor_masks(
            labels.data, pending.label, SliceRef(pending.axis, stop.last)))
        try:
            continue_mask(pending, stop, anchors)
        except ValueError as exc:
            show_warning(f"MedSAM: {exc}")
            return
        outside = self.annotation.outside_slices(pending.label, pending.axis)
        self._start(partial(continue_job, session, pending, stop, anchors, self._cancel.is_set,
                            stop_at, self.annotation.params, outside), streams=True, keep=True)

    def cut_here(self) -> None:
        """The object ends on the displayed slice: drop it and the pending propagation's
        slices beyond it (away from the object's anchors), and mark it outside the object
        (later runs of the object stop there)."""
        pending = self.pending
        ref = current_slice(self.viewer, self.annotation.image)
        if self.running or not isinstance(pending, PendingSlices) or ref is None:
            show_warning("MedSAM: nothing to cut (propagate first, and wait for it)")
            return
        if ref.axis != pending.axis:
            show_warning(f"MedSAM: show a slice along axis {pending.axis}, the axis of the "
                         "propagation, to cut it there")
            return
        labels = self.annotation.target
        anchors = ({} if labels is None else
                   self.annotation.anchor_masks(labels.data, pending.label, ref))
        try:
            cut = cut_pending(pending, ref.index, anchors)
        except ValueError as exc:
            show_warning(f"MedSAM: {exc}")
            return
        for index in set(pending.masks) - set(cut.masks):
            self._paint_preview(pending.axis, index, False)
        self._preview().refresh()
        self.annotation.pending = cut
        self.annotation.mark_outside(pending.label, pending.axis, ref.index)
        self.info.setText("\n".join(cut.lines))
        self._set_running(False)
        self.status.emit(cut.summary + " Accept 3D or Reject.")

    def forget_cuts(self) -> None:
        """Forget the slices the current object was cut at: runs may cross them again."""
        self.annotation.clear_outside(self.annotation.label)

    def _show_marks(self, *_args) -> None:
        """The slices the current object is marked outside of, and *Forget cuts*."""
        label = self.annotation.label
        marked = {axis: sorted(slices) for (which, axis), slices
                  in sorted(self.annotation.outside.items()) if which == label and slices}
        self.forget_button.setEnabled(bool(marked))
        if not marked:
            self.marks.setText("")
            return
        where = "; ".join(", ".join(map(str, slices)) + f" (axis {axis})"
                          for axis, slices in marked.items())
        self.marks.setText(f"Cut at {where}: runs of object {label} stop there.")

    def go_to(self, index: int) -> None:
        """Show slice ``index`` along the pending result's axis."""
        image, pending = self.annotation.image, self.pending
        if image is not None and isinstance(pending, PendingSlices):
            position = [0] * image.data.ndim
            position[pending.axis] = int(np.clip(index, 0, image.data.shape[pending.axis] - 1))
            dim = self.viewer.dims.ndim - image.data.ndim + pending.axis  # dims align right
            self.viewer.dims.set_point(dim, image.data_to_world(position)[pending.axis])

    def box_3d(self) -> None:
        """The box drawn on this slice, through the slice range of the spin boxes."""
        context = self._context()
        if context is None:
            return
        session, ref, label = context
        boxes = boxes_on_slice(self.viewer.layers[BOXES_LAYER], ref) \
            if BOXES_LAYER in self.viewer.layers else []
        if not boxes:
            show_warning("MedSAM: draw a box on this slice first")
            return
        first, last = sorted((self.first_spin.value(), self.last_spin.value()))
        if not first <= ref.index <= last:
            show_warning(f"MedSAM: the displayed slice {ref.index} is outside the range "
                         f"{first}..{last}")
            return
        self._start(partial(box_job, session, ref, boxes[-1], first, last, label,
                            self._cancel.is_set), streams=True)

    def _bulk(self, fill: bool) -> None:
        context = self._context()
        if context is None:
            return
        session, ref, label = context
        labels = self.annotation.target
        if labels is None or not (labels.data == label).any():
            show_warning(f"MedSAM: object {label} is empty; pick an existing object")
            return
        data = np.asarray(labels.data).copy()  # the user may paint meanwhile
        self._start(partial(bulk_job, session, data, label, ref.axis, fill=fill,
                            keep_others=not self.annotation.overwrite, cancel=self._cancel.is_set,
                            progress=self.progress_changed.emit), streams=False)

    def refine(self) -> None:
        """Re-segment every slice of the current object; preview the difference."""
        self._bulk(fill=False)

    def fill_gaps(self) -> None:
        """Segment the unlabelled slices inside the current object."""
        self._bulk(fill=True)

    def cancel(self) -> None:
        """Stop the running operation between two slices."""
        self._cancel.set()

    def reject(self) -> None:
        """Drop the 3D preview; the labels stay as they are."""
        self.annotation.pending = None
        self._clear_preview()
        self._preview().colormap = DIFF_COLORS
        self.info.setText("Rejected.")
        self._set_running(False)

    def accept(self) -> int:
        """Write the 3D preview into the labels as one undoable edit; returns voxels changed."""
        pending = self.pending
        labels = self.annotation.target_labels(create=pending is not None)
        if pending is None or labels is None:
            show_warning("MedSAM: nothing to accept in 3D")
            return 0
        change = self.annotation.pending_change(labels.data)
        with self.annotation.own_write():
            write_change(labels, change)
        self.annotation.accepted(change)  # ends the pending result
        self._clear_preview()
        self._set_running(False)
        text = (f"Accepted: {change.count} voxels of object {pending.label} changed "
                "(Ctrl+Z undoes it).")
        self.info.setText(text)
        show_info(f"MedSAM: {text}")
        self.labels_changed.emit()
        return change.count

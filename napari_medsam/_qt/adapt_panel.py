"""*Adapt to my labels...*: train the model on the objects accepted so far (issue 16).

The panel takes the scan on display and the widget's target Labels layer as one
:class:`~napari_medsam.adaptation.TrainingPair`, with the label values the user ticks among
those the layer holds, and optionally other open scans with their label maps (ticked under
*Also learn from*: image and labels layers of the same shape and place,
:func:`other_scans`), and runs :func:`napari_medsam.adaptation.adapt` on a napari worker:
progress text (with an ETA while training) streams in, *Cancel* stops between slices and
training steps (nothing is saved). The held-out Dice before and after training is shown from
the returned :class:`~napari_medsam.adaptation.AdaptReport`; when a model was saved, *Use it*
asks the widget (through :attr:`AdaptPanel.use_model`) to answer prompts with it. Every
error is one napari notification.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from napari_medsam._qt.model_view import registry_names
from napari_medsam.segmentation.annotation_edits import label_counts, label_name

if TYPE_CHECKING:
    from napari_medsam.adaptation import AdaptReport, TrainingPair
    from napari_medsam.segmentation.annotation import AnnotationModel

logger = logging.getLogger(__name__)


def other_scans(layers, image, labels) -> list[tuple[Any, Any]]:
    """(image, labels) layer pairs among ``layers`` other than the scan on display
    (``image``) and its target (``labels``): every 3D grey-value image with every label map
    of its shape, scale and translate (the same voxel grid in the same place)."""
    from napari.layers import Image, Labels

    pairs = []
    for scan in layers:
        if not isinstance(scan, Image) or scan is image or scan.rgb or scan.ndim != 3:
            continue
        for mask in layers:
            if (isinstance(mask, Labels) and mask is not labels
                    and mask.data.shape == scan.data.shape
                    and np.allclose(mask.scale, scan.scale)
                    and np.allclose(mask.translate, scan.translate)):
                pairs.append((scan, mask))
    return pairs


def layer_pair(image, labels, values: list[int]) -> TrainingPair | None:
    """An image layer and its label map as a training pair (a copy of the labels: the user
    may paint meanwhile); None when the labels hold none of ``values``."""
    from napari_medsam.adaptation import TrainingPair
    from napari_medsam.io import Volume

    data = np.array(labels.data, copy=True)
    if not np.isin(data, values).any():
        return None
    volume = Volume.from_metadata(np.asarray(image.data), image.metadata)
    return TrainingPair(volume, data, f"napari layers {image.name!r} / {labels.name!r}")


def free_name(base: str, taken: set[str]) -> str:
    """``<base>-adapted``, numbered from 2 when taken."""
    name, number = f"{base}-adapted", 2
    while name in taken:
        name, number = f"{base}-adapted-{number}", number + 1
    return name


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def describe(report: AdaptReport) -> str:
    """The result in a few lines: held-out Dice before and after, and what was kept."""
    before, after = report.heldout_before, report.heldout_after
    lines = [f"{report.train_examples} training and {report.heldout_examples} held-out "
             f"slices; embedding {report.embed_seconds:.0f} s, training "
             f"{report.train_seconds:.0f} s.",
             f"Held-out Dice of a box: {_fmt(before.get('box'))} before, "
             f"{_fmt(after.get('box'))} after."]
    clicks = report.extra.get("heldout_clicks") or {}
    if clicks:
        answered = ("the model answers clicks itself" if report.extra.get("answers_clicks")
                    else "clicks keep the click search")
        lines.append(f"One click: {_fmt(clicks.get('adapted_one_call'))} answered by the "
                     f"adapted model in one call, {_fmt(clicks.get('base_click_search'))} "
                     f"with the click search: {answered}.")
    lines.append(f"Saved as model {report.name!r}." if report.saved else report.reason)
    return "\n".join(lines)


class AdaptPanel(QGroupBox):
    """Adapt the current model to the objects of the target labels.

    Parameters
    ----------
    annotation
        The annotation model: its ``image`` (the scan) and ``target`` (the labels).
    viewer
        The napari viewer.
    """

    #: One line of progress from the worker thread (delivered on the GUI thread).
    progress_text = Signal(str)
    #: A run ended with this report (a saved model is in the registry now).
    adapted = Signal(object)
    #: The user wants prompts answered by this registry model.
    use_model = Signal(str)
    #: A line for the widget's status.
    status = Signal(str)

    def __init__(self, annotation: AnnotationModel, viewer) -> None:
        super().__init__("Adapt to my labels")
        self.annotation = annotation
        self.viewer = viewer
        self.base, self.device, self.backend = "litemedsam", "auto", "auto"
        #: Training settings (None: :class:`~napari_medsam.adaptation.TrainingConfig`'s).
        self.config: Any = None
        self.report: AdaptReport | None = None
        self._worker = None
        self._cancel = threading.Event()
        self.values = QListWidget()
        self.values.setMaximumHeight(90)
        self.values.setToolTip("The objects to learn: label values of the target labels")
        self.scans = QListWidget()
        self.scans.setMaximumHeight(70)
        self.scans.setToolTip("Other open scans with a label map of the same grid: ticked ones "
                              "are learnt from too (the same label values; with 4 scans or "
                              "more, whole scans are held out to check the result)")
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip("Name of the adapted model (a new registry model)")
        self.adapt_button = QPushButton("Adapt")
        self.adapt_button.setToolTip("Train the model's decoder on the ticked objects (the "
                                     "slices where they are labelled); kept only if it beats "
                                     "the model on held-out slices")
        self.adapt_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button = QPushButton("Use it")
        self.use_button.setToolTip("Answer prompts with the adapted model (the Model box "
                                   "switches back at any time)")
        self.use_button.clicked.connect(self._use)
        self.progress = QLabel("")
        self.progress.setWordWrap(True)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        grid = QGridLayout(self)
        grid.addWidget(self.values, 0, 0, 1, 3)
        grid.addWidget(QLabel("Also learn from"), 1, 0, 1, 3)
        grid.addWidget(self.scans, 2, 0, 1, 3)
        grid.addWidget(QLabel("Name"), 3, 0)
        grid.addWidget(self.name_edit, 3, 1, 1, 2)
        grid.addWidget(self.adapt_button, 4, 0)
        grid.addWidget(self.cancel_button, 4, 1)
        grid.addWidget(self.use_button, 4, 2)
        grid.addWidget(self.progress, 5, 0, 1, 3)
        grid.addWidget(self.result, 6, 0, 1, 3)
        self.progress_text.connect(self.progress.setText)
        #: Shows or hides the panel (it starts hidden); lives in the widget's layout.
        self.show_button = QPushButton("Adapt to my labels...")
        self.show_button.setToolTip("Train the model on the objects accepted so far")
        self.show_button.clicked.connect(self.toggle)
        self.setVisible(False)
        self._set_running(False)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _set_running(self, running: bool) -> None:
        self.adapt_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.use_button.setEnabled(not running and self.report is not None
                                   and self.report.saved)

    def configure(self, base: str, device: str, backend: str) -> None:
        """The model to adapt (a base model, not an adapted one) and the engine to use."""
        self.base, self.device, self.backend = base, device, backend
        self.refresh()

    def toggle(self) -> None:
        """Show (or hide) the panel, offering the target labels' objects."""
        self.refresh()
        self.setVisible(not self.isVisible())

    def refresh(self) -> None:
        """Offer the label values the target labels hold and a free model name."""
        ticked = set(self.chosen_values())
        labels = self.annotation.target
        self.values.clear()
        counts = label_counts(labels.data) if labels is not None else {}
        for value, count in counts.items():
            name = label_name(labels.metadata, value)
            item = QListWidgetItem(f"{value}  {name}  {count} voxels".replace("    ", "  "))
            item.setData(Qt.ItemDataRole.UserRole, value)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            chosen = value in ticked or (not ticked and value == self.annotation.label)
            item.setCheckState(Qt.CheckState.Checked if chosen else Qt.CheckState.Unchecked)
            self.values.addItem(item)
        if not self.name_edit.text() or self.name_edit.text() in set(registry_names()):
            self.name_edit.setText(free_name(self.base, set(registry_names())))
        kept = set(self.chosen_scans())
        self.scans.clear()
        for image, mask in other_scans(self.viewer.layers, self.annotation.image, labels):
            item = QListWidgetItem(f"{image.name} / {mask.name}")
            item.setData(Qt.ItemDataRole.UserRole, (image.name, mask.name))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if (image.name, mask.name) in kept
                               else Qt.CheckState.Unchecked)
            self.scans.addItem(item)

    def chosen_values(self) -> list[int]:
        """The ticked label values."""
        items = (self.values.item(i) for i in range(self.values.count()))
        return [int(item.data(Qt.ItemDataRole.UserRole)) for item in items
                if item.checkState() == Qt.CheckState.Checked]

    def chosen_scans(self) -> list[tuple[str, str]]:
        """(image, labels) layer names of the ticked other scans."""
        items = (self.scans.item(i) for i in range(self.scans.count()))
        return [tuple(item.data(Qt.ItemDataRole.UserRole)) for item in items
                if item.checkState() == Qt.CheckState.Checked]

    def _pairs(self, values: list[int]) -> list[TrainingPair] | None:
        """The scan on display and the ticked other scans as training pairs (None: a
        notification said why)."""
        image, labels = self.annotation.image, self.annotation.target
        if image is None or labels is None:
            show_warning("MedSAM: open a scan and accept some objects first")
            return None
        if not values:
            show_warning("MedSAM: tick the objects to learn")
            return None
        first = layer_pair(image, labels, values)
        if first is None:
            show_warning(f"MedSAM: labels {values} have no labelled voxels yet")
            return None
        pairs = [first]
        for image_name, labels_name in self.chosen_scans():
            if image_name not in self.viewer.layers or labels_name not in self.viewer.layers:
                show_warning(f"MedSAM: {image_name!r} or {labels_name!r} is no longer open; "
                             "untick it")
                return None
            pair = layer_pair(self.viewer.layers[image_name], self.viewer.layers[labels_name],
                              values)
            if pair is None:
                show_warning(f"MedSAM: {labels_name!r} holds none of labels {values}; untick "
                             f"{image_name!r} or tick other objects")
                return None
            pairs.append(pair)
        return pairs

    def start(self) -> None:
        """Check the input, then adapt on a worker thread."""
        from napari_medsam.adaptation import AdaptError
        from napari_medsam.adaptation.adapted_model import check_new_name
        from napari_medsam.models.export import missing_export_packages

        if self.running:
            return
        name, values = self.name_edit.text().strip(), self.chosen_values()
        missing = missing_export_packages()
        if missing:
            show_error("MedSAM: adapting needs the export extra; missing: "
                       f"{', '.join(missing)}. Install it with: pip install "
                       "'napari-medsam[export]'")
            return
        if name in registry_names():  # (the library's message speaks of --name)
            show_error(f"MedSAM: a model called {name!r} exists already: choose another name")
            return
        try:
            check_new_name(name)
        except AdaptError as exc:
            show_error(f"MedSAM: {exc}")
            return
        pairs = self._pairs(values)
        if pairs is None:
            return
        labels = self.annotation.target
        names = {v: label_name(labels.metadata, v) for v in values}
        self._cancel.clear()
        self.report = None
        self.result.setText("")
        scans = f"{len(pairs)} scans" if len(pairs) > 1 else "this scan"
        self.progress.setText(f"Adapting {self.base} to labels {values} on {scans}...")
        self._set_running(True)
        self._worker = create_worker(self._job, pairs, values, name, names, _start_thread=False,
                                     _connect={"returned": self._on_done,
                                               "errored": self._on_error,
                                               "finished": self._on_finished})
        self._worker.start()

    def _job(self, pairs: list[TrainingPair], values: list[int], name: str,
             names: dict[int, str]) -> AdaptReport:
        from napari_medsam.adaptation import adapt

        return adapt(pairs, values, name, base=self.base, device=self.device,
                     backend=self.backend, zoom=self.annotation.zoom, config=self.config,
                     label_names=names, progress=self.progress_text.emit,
                     cancel=self._cancel.is_set)

    def _on_done(self, report: AdaptReport) -> None:
        self.report = report
        self.result.setText(describe(report))
        self.progress.setText("Done." if report.saved else "Done: nothing saved.")
        if report.saved:
            show_info(f"MedSAM: adapted model {report.name!r} saved")
        self.status.emit(describe(report).splitlines()[-1])
        self.adapted.emit(report)

    def _on_error(self, exc: Exception) -> None:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        show_error(f"MedSAM: {text}")
        self.progress.setText(f"Not adapted: {text}")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)

    def cancel(self) -> None:
        """Stop between slices or training steps; nothing is saved."""
        self._cancel.set()

    def _use(self) -> None:
        if self.report is not None and self.report.saved:
            self.use_model.emit(self.report.name)

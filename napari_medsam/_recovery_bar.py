"""Crash recovery in the Segment widget: autosave of the target labels, and the offer to
restore them when their scan is opened again.

:class:`Autosaver` follows the widget's target Labels layer and keeps a private mirror of
it (:class:`~napari_medsam.io.recovery.LabelsMirror`, first copied on a worker). The
layer's paint events (Accept, Accept 3D, brush, fill) say which rows (slices along the
first axis) they changed; after :data:`AUTOSAVE_EDITS` edits, or :data:`AUTOSAVE_SECONDS`
after the first change not yet autosaved, the UI thread copies only those rows into the
mirror, which makes it a consistent snapshot (only the UI thread writes the labels), and a
napari worker compresses and writes it (:class:`~napari_medsam.io.recovery.RecoveryStore`).
An undo or redo says nothing about where it changed the labels: a worker first finds the
rows that differ from the mirror, then the UI thread copies those. No worker ever runs
while the mirror is being updated; changes made during a write are written next.

:class:`RecoveryBar` is the small non-modal bar of the widget: when a scan is opened it
computes the scan's digest on a worker, and if a recovery file exists it offers *Restore*
(the labels come back as a Labels layer on the scan's geometry, with their names and
colours) or *Discard*. Autosave waits until the user chooses, so the offered file is never
overwritten by new work.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_medsam.engine.disk_cache import array_digest
from napari_medsam.io.recovery import (
    AUTOSAVE_EDITS,
    AUTOSAVE_SECONDS,
    LabelsMirror,
    RecoveredLabels,
    RecoveryError,
    RecoveryInfo,
    RecoverySnapshot,
    RecoveryStore,
)

logger = logging.getLogger(__name__)

__all__ = ["Autosaver", "RecoveryBar", "rows_of_edit"]


def _atom_rows(atom: Any, n_rows: int) -> tuple[int, int] | None:
    """First-axis range of one napari paint-history atom, or None for an unknown form.

    napari records ``(slice_key, mask, old_values, new_value)`` for brush, fill and polygon
    edits (a bounding box of slices) and ``(indices, old_values, new_values)`` for
    :meth:`Labels.data_setitem` (fancy indices).
    """
    if not isinstance(atom, tuple) or not atom or not isinstance(atom[0], (tuple, list)):
        return None
    where = atom[0]
    if not where:
        return None
    first = where[0]
    if isinstance(first, slice):
        start, stop, step = first.indices(n_rows)
        return (start, stop) if step == 1 else (0, n_rows)
    if isinstance(first, (int, np.integer)):
        row = int(first) % n_rows if n_rows else 0
        return row, row + 1
    rows = np.asarray(first)
    if rows.size == 0:
        return 0, 0
    if rows.dtype.kind not in "iu" or rows.min() < 0:
        return None
    return int(rows.min()), int(rows.max()) + 1


def rows_of_edit(item: Any, n_rows: int) -> list[tuple[int, int]] | None:
    """The first-axis ranges that one napari paint event (``event.value``: a list of history
    atoms) changed, or None when they cannot be told (then everything may have changed)."""
    if not isinstance(item, (list, tuple)):
        return None
    ranges = []
    for atom in item:
        rows = _atom_rows(atom, n_rows)
        if rows is None:
            return None
        ranges.append(rows)
    return ranges


def _colors(labels: Labels) -> dict[int | None, tuple[float, ...]] | None:
    """The colours of a layer with a direct (per label) colour map, else None."""
    colormap = labels.colormap
    if not isinstance(colormap, DirectLabelColormap):
        return None
    return {key: tuple(float(c) for c in np.asarray(value).ravel())
            for key, value in colormap.color_dict.items()}


class Autosaver(QObject):
    """Autosaves one Labels layer into the recovery file of its scan, off the UI thread.

    Parameters
    ----------
    store : RecoveryStore, optional
        Where the files go (default: ``<cache>/recovery``).
    edits : int
        Autosave after this many edits (paint events: accepts, strokes, fills).
    seconds : float
        Autosave this long after the first change not yet autosaved.
    parent : QObject, optional
    """

    #: A recovery file was written (its path).
    written = Signal(object)

    def __init__(self, store: RecoveryStore | None = None, *, edits: int = AUTOSAVE_EDITS,
                 seconds: float = AUTOSAVE_SECONDS, parent: QObject | None = None):
        super().__init__(parent)
        self.store = store if store is not None else RecoveryStore()
        self.edits = int(edits)
        self.labels: Labels | None = None
        self.image: Image | None = None
        self.digest: str | None = None
        self._paused = False
        self._mirror: LabelsMirror | None = None
        self._token = 0  # one per adopted layer: late results of a released one are ignored
        self._gen = 0  # known changes of the tracked labels...
        self._safe_gen = 0  # ...the last of them that is safe in a file
        self._edit_count = 0
        self._skip_set_data = 0  # the set_data event that follows a paint event's write
        self._jobs: deque[tuple[RecoverySnapshot, int, int]] = deque()
        self._worker = None  # the running scan or write: it reads the mirror
        self._again = False  # an autosave was asked for while it could not run
        self._after_scan = False  # the scan found the rows: copy and write them next
        self._scan_ms = 0.0
        self._discard_after: set[str] = set()
        self._failing = False
        self._closed = False
        #: UI-thread milliseconds of the last autosaves that wrote (every part of each:
        #: the start of a scan for an undo, the copy of the changed rows, the worker start).
        self.ui_ms: deque[float] = deque(maxlen=256)
        #: Worker seconds of the last writes (compress, write, fsync, read back, replace).
        self.worker_s: deque[float] = deque(maxlen=256)
        #: Rows copied into the mirror by the last autosave.
        self.last_rows = 0
        self._timer = self._single_shot(int(seconds * 1000), self.autosave)
        self._soon = self._single_shot(0, self.autosave)  # after the batch's last write
        self._pass = self._single_shot(0, self._end_pass)  # ends a paint event's loop pass

    def _single_shot(self, interval_ms: int, slot) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(interval_ms)
        timer.timeout.connect(slot)
        return timer

    # ------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """A scan or a write is running on a worker."""
        return self._worker is not None

    @property
    def ready(self) -> bool:
        """Labels are followed, their copy exists and no worker reads it."""
        return self._mirror is not None and self._mirror.ready and not self.busy

    @property
    def needs_write(self) -> bool:
        """The tracked labels hold known changes that are in no file yet."""
        return self.labels is not None and self._gen != self._safe_gen

    @property
    def paused(self) -> bool:
        """Autosave waits (a recovery file of the scan is being offered)."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = bool(value)
        if not self._paused:
            self._schedule()

    def set_digest(self, digest: str | None) -> None:
        """The content digest of the scan the labels belong to (None: not known yet)."""
        self.digest = digest
        self._schedule()

    # ------------------------------------------------------------ layer
    def _hooks(self, labels: Labels):
        return ((labels.events.paint, self._on_paint), (labels.events.set_data, self._on_set_data),
                (labels.events.data, self._on_data))

    def track(self, labels: Labels | None, image: Image | None = None) -> None:
        """Follow ``labels`` (None: nothing); ``image`` supplies the scan geometry.

        The mirror of the labels is copied on a worker: edits made meanwhile are marked as
        usual and copied by the first autosave.
        """
        self.image = image
        if labels is self.labels or self._closed:
            return
        self.release()
        if labels is None:
            return
        self.labels = labels
        self._mirror = LabelsMirror(labels.data.shape, labels.data.dtype)
        self._token += 1
        self._gen = self._safe_gen = self._edit_count = self._skip_set_data = 0
        for event, hook in self._hooks(labels):
            event.connect(hook)
        worker = create_worker(LabelsMirror.copy_of, labels.data, _start_thread=False,
                               _connect={"returned": partial(self._on_copied, self._token),
                                         "errored": self._on_failed})
        worker.start()

    def _on_copied(self, token: int, result: tuple[np.ndarray, np.ndarray]) -> None:
        mirror = self._mirror
        if token != self._token or mirror is None or self.labels is None:
            return
        try:
            mirror.set_base(*result)
        except ValueError:  # the array was replaced by one of another shape meanwhile
            mirror.rebase(self.labels.data)
        if self._again:
            self._again = False
            self._soon.start()
        else:
            self._schedule()

    def _final_snapshot(self) -> RecoverySnapshot | None:
        """A snapshot of the labels if they changed since the last write (this thread)."""
        labels, mirror = self.labels, self._mirror
        if labels is None or mirror is None or self.digest is None or self._paused:
            return None
        if self.ready:
            differed, _ = mirror.refresh(labels.data)
            if differed:
                self._gen += 1
            return self._snapshot(mirror.base) if self._gen != self._safe_gen else None
        # a worker may still read the mirror (or make it): compare only, then copy it all
        rows = mirror.take_unknown() if mirror.ready else None
        if rows is not None and mirror.differing_rows(labels.data, rows).any():
            self._gen += 1
        elif not mirror.ready and mirror.stale:
            self._gen += 1  # nothing to compare with
        if self._gen != self._safe_gen:
            return self._snapshot(np.array(labels.data, copy=True))
        return None

    def release(self) -> None:
        """Stop following the labels; their unsaved changes are written first."""
        labels = self.labels
        if labels is None:
            return
        for event, hook in self._hooks(labels):
            event.disconnect(hook)
        snapshot = self._final_snapshot()
        if snapshot is not None:
            self._jobs.append((snapshot, self._gen, self._token))
        elif self._gen != self._safe_gen:
            logger.info("labels %r left before their scan was known or while a recovery "
                        "offer was open: not autosaved", labels.name)
        self.labels, self._mirror = None, None
        self._token += 1
        self._again = self._after_scan = False
        self._timer.stop()
        self._soon.stop()
        self._run_next()

    # ------------------------------------------------------------ events
    def _on_paint(self, event) -> None:
        if self._mirror is None:
            return
        ranges = rows_of_edit(event.value, self._mirror.shape[0])
        if ranges is None:
            self._mirror.mark_all()
        else:
            for start, stop in ranges:
                self._mirror.mark_rows(start, stop)
        # napari writes the data after this event and then refreshes (one set_data event)
        self._skip_set_data += 1
        self._pass.start()
        self._changed(known=True)

    def _end_pass(self) -> None:
        self._skip_set_data = 0

    def _on_set_data(self, _event=None) -> None:
        """Undo, redo, a stroke in progress, or only a new slice on display."""
        if self._mirror is None:
            return
        if self._skip_set_data:
            self._skip_set_data -= 1
            return
        self._mirror.mark_unknown()
        self._changed(known=False)

    def _on_data(self, _event=None) -> None:
        if self._mirror is not None:
            self._mirror.mark_all()
            self._changed(known=True)

    def _changed(self, known: bool) -> None:
        if known:
            self._gen += 1
            self._edit_count += 1
        self._schedule()

    def _schedule(self) -> None:
        """Autosave at once after a batch of edits, else when the timer runs out."""
        if self._closed or self._mirror is None or self.digest is None or self._paused:
            return
        if not (self.needs_write or self._mirror.stale):
            return
        if self._edit_count >= self.edits:
            self._soon.start()
        elif not self._timer.isActive():
            self._timer.start()

    # ------------------------------------------------------------ writing
    def _snapshot(self, labels: np.ndarray) -> RecoverySnapshot:
        layer = self.labels
        assert layer is not None and self.digest is not None
        metadata = dict(self.image.metadata) if self.image is not None else {}
        metadata.update(layer.metadata)
        return RecoverySnapshot(image_digest=self.digest, labels=labels, layer_name=layer.name,
                                metadata=copy.deepcopy(metadata), colors=_colors(layer),
                                scale=tuple(float(s) for s in layer.scale),
                                translate=tuple(float(t) for t in layer.translate))

    def autosave(self) -> bool:
        """Write the labels if they changed since the last write, without blocking.

        On this (the UI) thread only the rows changed since the last snapshot are copied
        into the mirror; compression and writing run on a napari worker (:attr:`written`
        announces the file). After an undo, which napari does not locate, a worker first
        finds the rows that differ from the mirror. Returns True when work was started or
        queued behind running work, False when there is nothing to do or autosave cannot
        run (no labels, scan digest not known yet, recovery offer open).
        """
        self._timer.stop()
        self._soon.stop()
        labels, mirror = self.labels, self._mirror
        if self._closed or labels is None or mirror is None or self.digest is None \
                or self._paused:
            return False
        if not self.ready:
            self._again = True
            return True
        start = time.perf_counter()
        after_scan, self._after_scan = self._after_scan, False
        rows = None if after_scan else mirror.take_unknown()
        if rows is not None and rows.any():
            self._after_scan = True
            self._start(self._scan, mirror, labels.data, rows,
                        returned=partial(self._on_scanned, self._token))
            self._scan_ms += 1000 * (time.perf_counter() - start)
            return True
        self.last_rows = mirror.copy_pending(labels.data)
        if self._gen == self._safe_gen:
            self._scan_ms = 0.0
            return False  # only looked at other slices, or undid nothing
        self._edit_count = 0
        self._jobs.append((self._snapshot(mirror.base), self._gen, self._token))
        self._run_next()
        self.ui_ms.append(self._scan_ms + 1000 * (time.perf_counter() - start))
        self._scan_ms = 0.0
        return True

    @staticmethod
    def _scan(mirror: LabelsMirror, data: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return mirror.differing_rows(data, rows)

    def _on_scanned(self, token: int, found: np.ndarray) -> None:
        if token != self._token or self._mirror is None:
            return
        if found.any():
            self._mirror.mark_row_mask(found)
            self._gen += 1

    def _start(self, function, *args, returned) -> None:
        worker = create_worker(function, *args, _start_thread=False,
                               _connect={"returned": returned, "errored": self._on_failed,
                                         "finished": self._on_finished})
        self._worker = worker
        worker.start()

    def _run_next(self) -> None:
        if self.busy or not self._jobs or self._closed:
            return
        snapshot, gen, token = self._jobs.popleft()
        self._start(self._write, self.store, snapshot,
                    returned=partial(self._on_written, gen, token))

    @staticmethod
    def _write(store: RecoveryStore, snapshot: RecoverySnapshot) -> tuple[Path, float]:
        start = time.perf_counter()
        path = store.save(snapshot)
        return path, time.perf_counter() - start

    def _on_written(self, gen: int, token: int, result: tuple[Path, float]) -> None:
        path, seconds = result
        self.worker_s.append(seconds)
        self._failing = False
        if token == self._token and gen > self._safe_gen:
            self._safe_gen = gen
        self.written.emit(path)

    def _on_failed(self, exc: Exception) -> None:
        logger.warning("autosave failed: %s", exc)
        if not self._failing:
            show_warning(f"MedSAM: autosave failed ({exc}); the last good recovery file "
                         "is kept")
        self._failing = True

    def _on_finished(self) -> None:
        self._worker = None
        for digest in self._discard_after:
            self.store.discard(digest)  # the user saved the labels while it was writing
        self._discard_after.clear()
        if self._closed:
            return
        if self._jobs:
            self._run_next()
            return
        if self._after_scan or self._again:
            self._again = False
            self._soon.start()
        else:
            self._schedule()

    def forget(self, labels: Labels | None = None) -> None:
        """The labels were saved by the user: their recovery file goes, nothing is pending.

        Parameters
        ----------
        labels : Labels, optional
            The layer that was saved; nothing happens if it is not the tracked one.
        """
        mirror = self._mirror
        if self.labels is None or mirror is None or self._paused:
            return
        if labels is not None and labels is not self.labels:
            return
        if self.ready:
            mirror.refresh(self.labels.data)
        else:  # a worker reads the mirror (or makes it): start again from the saved labels
            mirror.rebase(self.labels.data)
            self._token += 1  # the copy being made, a scan's rows: no longer wanted
            self._after_scan = False
            if self.digest is not None:
                self._discard_after.add(self.digest)
        self._safe_gen = self._gen
        self._edit_count = 0
        self._timer.stop()
        self._soon.stop()
        if self.digest is not None:
            self._jobs = deque(job for job in self._jobs
                               if job[0].image_digest != self.digest)
            self.store.discard(self.digest)

    def flush(self) -> Path | None:
        """Closing: write the last autosave now, on this thread, only if the labels changed
        since the last one; then stop. Call it once the workers are done."""
        for timer in (self._timer, self._soon, self._pass):
            timer.stop()
        for digest in self._discard_after:
            self.store.discard(digest)
        self._discard_after.clear()
        labels = self.labels
        snapshot = self._final_snapshot()
        if snapshot is not None:
            self._jobs.append((snapshot, self._gen, self._token))
        if labels is not None:
            for event, hook in self._hooks(labels):
                event.disconnect(hook)
        written = None
        while self._jobs:
            snapshot, _, _ = self._jobs.popleft()
            try:
                written = self.store.save(snapshot)
            except (RecoveryError, ValueError) as exc:
                logger.warning("last autosave failed: %s", exc)
        self.labels, self._mirror = None, None
        self._closed = True
        return written


class RecoveryBar(QFrame):
    """The widget's recovery offer (hidden unless a scan has a recovery file) and autosave.

    Parameters
    ----------
    viewer : napari.Viewer
        Where a restored Labels layer is added.
    store : RecoveryStore, optional
        Recovery files (default: ``<cache>/recovery``).
    """

    #: A Labels layer was restored (the new layer).
    restored = Signal(object)

    def __init__(self, viewer, store: RecoveryStore | None = None, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.store = store if store is not None else RecoveryStore()
        self.autosaver = Autosaver(self.store, parent=self)
        self.image: Image | None = None
        self.info: RecoveryInfo | None = None
        self._request = 0
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Add the autosaved labels as a Labels layer")
        self.restore_button.clicked.connect(self.restore)
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Delete the autosaved labels of this scan")
        self.discard_button.clicked.connect(self.discard)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.restore_button)
        buttons.addWidget(self.discard_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(self.text)
        layout.addLayout(buttons)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setVisible(False)

    @property
    def offered(self) -> bool:
        """A recovery file of the current scan is on offer."""
        return self.info is not None

    def set_image(self, image: Image | None) -> None:
        """The widget's scan changed: look for its recovery file on a worker."""
        if image is self.image:
            return
        self.autosaver.release()  # the old scan's labels go into the old scan's file
        self.image = image
        self._close_offer()
        self.autosaver.set_digest(None)
        self._request += 1
        if image is None:
            return
        worker = create_worker(self._digest_and_find, self.store, image.data,
                               _start_thread=False,
                               _connect={"returned": partial(self._on_found, self._request),
                                         "errored": self._on_error})
        worker.start()

    @staticmethod
    def _digest_and_find(store: RecoveryStore, data) -> tuple[str, RecoveryInfo | None]:
        digest = array_digest(np.asarray(data))
        return digest, store.find(digest)

    def _on_found(self, request: int, result: tuple[str, RecoveryInfo | None]) -> None:
        if request != self._request:
            return  # another scan was opened meanwhile
        digest, info = result
        if info is not None:
            self.info = info
            self.autosaver.paused = True  # never overwrite what is on offer
            self.text.setText(f"Unsaved labels of this scan were found: {info.describe()}. "
                              "Autosave waits until you restore or discard them.")
            self.restore_button.setEnabled(True)
            self.discard_button.setEnabled(True)
            self.setVisible(True)
        self.autosaver.set_digest(digest)

    def _on_error(self, exc: Exception) -> None:
        logger.warning("crash recovery: %s", exc)
        self.text.setText(f"Recovery: {exc}")
        self.restore_button.setEnabled(self.offered)  # the user may try again or discard
        self.discard_button.setEnabled(self.offered)

    def set_target(self, labels: Labels | None) -> None:
        """The widget's target labels changed (None: none yet)."""
        self.autosaver.track(labels, self.image)

    def restore(self) -> None:
        """Read the offered labels on a worker, then add them as a Labels layer."""
        if self.info is None or self.autosaver.digest is None:
            return
        self.restore_button.setEnabled(False)
        self.discard_button.setEnabled(False)
        self.text.setText("Restoring the autosaved labels...")
        worker = create_worker(self.store.load, self.autosaver.digest, _start_thread=False,
                               _connect={"returned": partial(self._on_loaded, self._request),
                                         "errored": self._on_error})
        worker.start()

    def _on_loaded(self, request: int, recovered: RecoveredLabels | None) -> None:
        if request != self._request or self.image is None:
            return
        if recovered is None:
            show_warning("MedSAM: the autosaved labels could not be read (see the log)")
            self._close_offer()
            return
        layer = self.add_layer(recovered, self.image)
        self.restored.emit(layer)  # the widget makes it its target before autosave resumes
        self._close_offer()

    def add_layer(self, recovered: RecoveredLabels, image: Image) -> Labels:
        """Add ``recovered`` as a Labels layer placed like ``image``."""
        kwargs: dict[str, Any] = {"name": recovered.info.layer_name,
                                  "metadata": recovered.metadata,
                                  "scale": image.scale, "translate": image.translate}
        if recovered.colors:
            kwargs["colormap"] = DirectLabelColormap(color_dict=recovered.colors)
        layer = self.viewer.add_labels(recovered.labels, **kwargs)
        logger.info("restored %s from %s", recovered.info.describe(), recovered.info.path)
        return layer

    def discard(self) -> None:
        """Delete the offered recovery file."""
        if self.info is not None and self.autosaver.digest is not None:
            self.store.discard(self.autosaver.digest)
        self._close_offer()

    def _close_offer(self) -> None:
        self.info = None
        self.setVisible(False)
        self.autosaver.paused = False

    def labels_saved(self, labels: Labels) -> None:
        """The user saved ``labels``: the recovery file of the scan is no longer needed
        (unless one from another session is still on offer)."""
        if not self.offered:
            self.autosaver.forget(labels)

    def shutdown(self) -> None:
        """Closing: last autosave if the labels changed since the last one."""
        self._request += 1
        self.autosaver.flush()


"""Autosave of the Segment widget's target labels into the scan's recovery file.

:class:`Autosaver` follows the widget's target Labels layer and keeps a private mirror of
it (:class:`~napari_medsam.io.labels_mirror.LabelsMirror`, first copied on a worker). The
layer's paint events (Accept, Accept 3D, brush, fill) say which rows (slices along the
first axis) they changed (:mod:`napari_medsam._qt.paint_events`); after
:data:`AUTOSAVE_EDITS` edits, or :data:`AUTOSAVE_SECONDS` after the first change not yet
autosaved, the UI thread copies only those rows into the mirror, which makes it a consistent
snapshot (only the UI thread writes the labels), and a napari worker compresses and writes it
(:class:`~napari_medsam.io.recovery.RecoveryStore`). An undo or redo says nothing about
where it changed the labels: a worker first finds the rows that differ from the mirror, then
the UI thread copies those. No worker ever runs while the mirror is being updated; changes
made during a write are written next. :class:`~napari_medsam._qt.recovery_bar.RecoveryBar`
owns the Autosaver of the widget.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from functools import partial
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_warning
from qtpy.QtCore import QObject, QTimer, Signal

from napari_medsam._qt.connections import Connections
from napari_medsam._qt.paint_events import PaintEventHooks
from napari_medsam._qt.snapshots import snapshot_of
from napari_medsam.io.labels_mirror import LabelsMirror
from napari_medsam.io.recovery import (
    AUTOSAVE_EDITS,
    AUTOSAVE_SECONDS,
    RecoveryError,
    RecoverySnapshot,
    RecoveryStore,
)

logger = logging.getLogger(__name__)

__all__ = ["Autosaver"]


class Autosaver(PaintEventHooks, QObject):
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
        self._connections = Connections()  # the hooks on the tracked layer
        self.destroyed.connect(self._connections.disconnect_all)

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
            self._connections.connect(event, hook)
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
        self._connections.disconnect_all()
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

    # ------------------------------------------------------------ changes
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
        assert self.labels is not None and self.digest is not None
        return snapshot_of(self.labels, self.image, self.digest, labels)

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
        snapshot = self._final_snapshot()
        if snapshot is not None:
            self._jobs.append((snapshot, self._gen, self._token))
        self._connections.disconnect_all()
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

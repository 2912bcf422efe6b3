"""The annotation model behind the Segment widget (no Qt, no napari).

:class:`AnnotationModel` holds what the widget and its panels share: the segmentation session
of the current scan, the current object (label id), the overwrite rule and the zoom rule, the
target labels, the propagation anchors (slices the user made) and the slices the user cut
an object at (*Cut here*: propagation never crosses them again), how propagation steps and
stops, the 2D preview and the pending 3D result. It computes what an accept changes
(:class:`~.annotation_edits.LabelChange`) and emits every change through the psygnal
signals of :attr:`AnnotationModel.events`, which the views (``napari_medsam._qt``) connect
to; the views draw, run workers and write into napari layers, but keep no annotation state
of their own. Like napari-animation's ``Animation`` and its Qt ``AnimationWidget``, the
model knows nothing of its views.

The scan image and the target labels are opaque objects here (the views' napari layers): the
model reads only ``target.data``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from .annotation_edits import (
    LabelChange,
    Pending3D,
    anchor_masks,
    next_label,
    pending_change,
    preview_change,
)
from .propagation_steps import DEFAULT_PARAMS, PropagationParams
from .session import SegmentationSession, SliceRef

logger = logging.getLogger(__name__)

__all__ = ["AnnotationEvents", "AnnotationModel"]

ZOOM_RULES = ("auto", "off")


class AnnotationEvents(SignalGroup):
    """The model's signals (psygnal, as napari's own models) and what each emits."""

    session = Signal(object)  #: the new session (or None)
    label = Signal(int)  #: the new current label id
    overwrite = Signal(bool)  #: the new overwrite rule
    zoom = Signal(str)  #: the new zoom rule ("auto"/"off")
    target = Signal(object)  #: the new target labels (or None)
    anchors = Signal(int, int, int)  #: (label, axis, index) of a new anchor
    outside = Signal(int)  #: the label whose slices marked outside changed
    preview = Signal(object, object, object)  #: (old ref, new ref, mask) of the preview
    pending = Signal(object)  #: the new pending 3D result (or None)
    accepted = Signal(object)  #: the LabelChange just accepted


class AnnotationModel:
    """The state of one annotation: session, object, rules, anchors, preview, pending 3D.

    Parameters
    ----------
    label : int
        The first current object id.
    overwrite : bool
        Whether accepts paint over other objects (default: they are kept).
    zoom : str
        ``"auto"`` or ``"off"``: the session's region-of-interest rule.
    """

    def __init__(self, *, label: int = 1, overwrite: bool = False, zoom: str = "auto"):
        self.events = AnnotationEvents()
        self.image: Any = None  #: the scan the session was made from (a view's layer)
        self._session: SegmentationSession | None = None
        self._target: Any = None
        self._label = int(label)
        self._overwrite = bool(overwrite)
        self._zoom = self._check_zoom(zoom)
        #: (label, axis) -> slice indices the user accepted or painted on.
        self.anchors: dict[tuple[int, int], set[int]] = {}
        #: (label, axis) -> slices the user cut the object at (*Cut here*): outside it.
        self.outside: dict[tuple[int, int], set[int]] = {}
        #: How Propagate and Continue step from slice to slice and where they stop.
        self.params: PropagationParams = DEFAULT_PARAMS
        #: True while a view writes an accepted change (:meth:`own_write`).
        self.writing = False
        self.preview_ref: SliceRef | None = None
        self.preview_mask: np.ndarray | None = None
        self._pending: Pending3D | None = None
        #: Makes a target labels layer when an accept needs one and there is none (set by
        #: the view that owns the layers; returns the new target).
        self.create_target: Callable[[], Any] | None = None

    # ------------------------------------------------------------------ state
    @property
    def session(self) -> SegmentationSession | None:
        return self._session

    @session.setter
    def session(self, session: SegmentationSession | None) -> None:
        """A new scan (or none): the preview of the old one goes."""
        self._session = session
        if session is not None:
            session.zoom = self._zoom
        self.set_preview(None, None)
        self.events.session.emit(session)

    @property
    def label(self) -> int:
        """The current object id."""
        return self._label

    @label.setter
    def label(self, value: int) -> None:
        value = int(value)
        if value != self._label:
            self._label = value
            self.events.label.emit(value)

    @property
    def overwrite(self) -> bool:
        """Whether accepts paint over other objects' voxels."""
        return self._overwrite

    @overwrite.setter
    def overwrite(self, value: bool) -> None:
        if bool(value) != self._overwrite:
            self._overwrite = bool(value)
            self.events.overwrite.emit(self._overwrite)

    @property
    def zoom(self) -> str:
        """``"auto"`` or ``"off"``: the session's region-of-interest rule."""
        return self._zoom

    @zoom.setter
    def zoom(self, value: str) -> None:
        value = self._check_zoom(value)
        if self._session is not None:
            self._session.zoom = value
        if value != self._zoom:
            self._zoom = value
            self.events.zoom.emit(value)

    @staticmethod
    def _check_zoom(value: str) -> str:
        if value not in ZOOM_RULES:
            raise ValueError(f"zoom must be one of {ZOOM_RULES}, got {value!r}")
        return value

    @property
    def target(self) -> Any:
        """The labels accepted masks go into (an object with ``data``), or None."""
        return self._target

    @target.setter
    def target(self, labels: Any) -> None:
        """Other target labels: the slices marked outside objects of the old ones go."""
        if labels is not self._target:
            self._target = labels
            for label in sorted({label for label, _axis in self.outside}):
                self.clear_outside(label)
            self.events.target.emit(labels)

    def target_labels(self, create: bool = False) -> Any:
        """The target labels; with ``create``, made by :attr:`create_target` if missing."""
        if self._target is None and create and self.create_target is not None:
            self.target = self.create_target()
        return self._target

    # ------------------------------------------------------------------ anchors
    def add_anchor(self, label: int, axis: int, index: int) -> None:
        """Mark slice ``index`` of object ``label`` as user-made (propagation keeps it); a
        mark of that slice as outside the object goes."""
        key = (int(label), int(axis))
        self.anchors.setdefault(key, set()).add(int(index))
        if int(index) in self.outside.get(key, ()):
            self.outside[key].discard(int(index))
            self.events.outside.emit(int(label))
        self.events.anchors.emit(int(label), int(axis), int(index))

    def anchor_masks(self, labels: np.ndarray, label: int, ref: SliceRef
                     ) -> dict[int, np.ndarray]:
        """Non-empty masks of ``label`` on its anchors along ``ref.axis`` (and on ``ref``)."""
        return anchor_masks(labels, self.anchors.get((label, ref.axis), set()), label, ref)

    def propagation_anchors(self, labels: np.ndarray, label: int, ref: SliceRef
                            ) -> dict[int, np.ndarray]:
        """What propagation starts from: :meth:`anchor_masks`, and an empty mask on each
        slice marked outside the object (a barrier no run crosses). A mark wins over the
        displayed slice, an accepted or painted slice over a mark."""
        masks = self.anchor_masks(labels, label, ref)
        user_made = self.anchors.get((label, ref.axis), set())
        empty = np.zeros(np.take(labels, 0, axis=ref.axis).shape, dtype=bool)
        for index in self.outside_slices(label, ref.axis) - user_made:
            masks[index] = empty
        return dict(sorted(masks.items()))

    # ------------------------------------------------------------------ outside marks
    def outside_slices(self, label: int, axis: int) -> frozenset[int]:
        """Slices along ``axis`` the user cut object ``label`` at (outside it)."""
        return frozenset(self.outside.get((int(label), int(axis)), ()))

    def mark_outside(self, label: int, axis: int, index: int) -> None:
        """Object ``label`` is absent from slice ``index``: no propagation of it crosses
        that slice any more (*Cut here* marks the slice it cut at)."""
        self.outside.setdefault((int(label), int(axis)), set()).add(int(index))
        self.events.outside.emit(int(label))

    def clear_outside(self, label: int) -> None:
        """Forget every slice marked outside object ``label`` (along every axis)."""
        dropped = [self.outside.pop(key) for key in list(self.outside) if key[0] == int(label)]
        if any(dropped):
            self.events.outside.emit(int(label))

    # ------------------------------------------------------------------ preview
    def set_preview(self, ref: SliceRef | None, mask: np.ndarray | None) -> None:
        """The 2D preview is ``mask`` on slice ``ref`` (None: no preview)."""
        old = self.preview_ref
        self.preview_ref, self.preview_mask = ref, mask
        self.events.preview.emit(old, ref, mask)

    def clear_preview(self) -> None:
        self.set_preview(None, None)

    @property
    def has_preview(self) -> bool:
        """A non-empty 2D preview is waiting to be accepted."""
        return (self.preview_mask is not None and self.preview_ref is not None
                and bool(self.preview_mask.any()))

    def preview_change(self, labels: np.ndarray) -> LabelChange | None:
        """What accepting the preview changes in ``labels`` (None: no preview).

        Raises ``ValueError`` when the current label id cannot be written.
        """
        if not self.has_preview:
            return None
        return preview_change(labels, self.preview_ref, self.preview_mask, self._label,
                              overwrite=self._overwrite)

    # ------------------------------------------------------------------ pending 3D
    @property
    def pending(self) -> Pending3D | None:
        """What *Accept 3D* would write (None: nothing)."""
        return self._pending

    @pending.setter
    def pending(self, value: Pending3D | None) -> None:
        self._pending = value
        self.events.pending.emit(value)

    def pending_change(self, labels: np.ndarray) -> LabelChange | None:
        """What accepting the pending 3D result changes in ``labels`` (None: nothing)."""
        if self._pending is None:
            return None
        return pending_change(labels, self._pending, overwrite=self._overwrite)

    def accepted(self, change: LabelChange, ref: SliceRef | None = None) -> None:
        """The view wrote ``change``: a 2D accept on slice ``ref`` becomes an anchor, a 3D
        accept ends the pending result."""
        if ref is not None:
            self.add_anchor(change.label, ref.axis, ref.index)
        else:
            self.pending = None
        self.events.accepted.emit(change)

    @contextlib.contextmanager
    def own_write(self) -> Iterator[None]:
        """While a view writes an accepted change into the target labels: the paint events
        it raises are not the user's brush (no slice becomes an anchor by them)."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False

    # ------------------------------------------------------------------ objects
    def new_object(self, labels: np.ndarray | None) -> int:
        """Switch to the next free label id of ``labels`` (None: no labels yet)."""
        self.label = next_label(labels, self._label)
        return self._label

    def close(self) -> None:
        """Forget every view's callbacks (the views are closing)."""
        self.events.disconnect()
        self.create_target = None

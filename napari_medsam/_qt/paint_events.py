"""The Labels layer event handlers of the autosave: which rows each edit changed.

:func:`~napari_medsam.segmentation.annotation_paint.rows_of_edit` (Qt-free) reads the
first-axis ranges out of a paint event. :class:`PaintEventHooks` holds the layer event
handlers of :class:`~napari_medsam._qt.autosave.Autosaver`: a paint event (Accept, Accept
3D, brush, fill) marks its rows on the autosave's
:class:`~napari_medsam.io.labels_mirror.LabelsMirror`; an undo or redo (a ``set_data`` event
that follows no paint event) marks an unknown change; a
replaced array marks every row.

No napari or Qt imports here at run time (the handlers only start the autosave's timer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_medsam.segmentation.annotation_paint import rows_of_edit

if TYPE_CHECKING:
    from napari.layers import Labels
    from qtpy.QtCore import QTimer

    from napari_medsam.io.labels_mirror import LabelsMirror

__all__ = ["PaintEventHooks", "rows_of_edit"]


class PaintEventHooks:
    """The Labels layer event handlers of :class:`~napari_medsam._qt.autosave.Autosaver`.

    A mixin: the class using it provides ``_mirror`` (the
    :class:`~napari_medsam.io.labels_mirror.LabelsMirror` of the followed layer, or None),
    ``_skip_set_data`` (the number of ``set_data`` events that only follow a paint event's
    own write), ``_pass`` (a single-shot 0 ms timer that calls :meth:`_end_pass`) and
    ``_changed(known)`` (something changed; ``known``: its rows are marked).
    """

    _mirror: LabelsMirror | None
    _skip_set_data: int
    _pass: QTimer

    def _hooks(self, labels: Labels):
        return ((labels.events.paint, self._on_paint), (labels.events.set_data, self._on_set_data),
                (labels.events.data, self._on_data))

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

"""Where a propagation stopped, as buttons of the 3D panel: *Go to* and *Continue past*.

One row per stop of the pending result (:attr:`PendingSlices.stops`, one per direction and
outer anchor): *Go to N* shows slice N (where the object was lost, or the last slice of a
run that reached the range's end), *Continue past N* extends that direction by hand; it is
enabled only for a stop made by a stop rule (vanished, jump, intensity shift, area jump), not
for the range's end, a slice marked outside, a cancel or the user's own cut (*Cut here*). The
words for each stop are on the panel's info label
(:func:`~napari_medsam.segmentation.annotation_edits.stop_text`).

The view holds no state but its rows and reports through Qt signals; the panel does the work.
"""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QGridLayout, QPushButton, QWidget

from napari_medsam.segmentation.annotation_edits import CONTINUABLE
from napari_medsam.segmentation.propagation_stops import DirectionStop, StopReason

__all__ = ["StopsView", "stop_slice"]


def stop_slice(stop: DirectionStop) -> int:
    """The slice *Go to* shows: where the object was lost (or the slice marked outside), else
    the last slice the run reached."""
    if stop.reason in CONTINUABLE or stop.reason is StopReason.BARRIER:
        return stop.index
    return stop.last


class StopsView(QWidget):
    """*Go to* and *Continue past* buttons, one row per stop of a propagation."""

    #: The slice index (along the pending result's axis) to show.
    go_to = Signal(int)
    #: The :class:`DirectionStop` to continue past.
    continue_requested = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        #: (stop, its Go to button, its Continue button), in the order shown.
        self.rows: list[tuple[DirectionStop, QPushButton, QPushButton]] = []

    def show_stops(self, stops: Sequence[DirectionStop], enabled: bool = True) -> None:
        """Show one row per stop (none: the view is empty); ``enabled``: whether the
        Continue buttons may be used (not while a 3D operation runs)."""
        if [row[0] for row in self.rows] == list(stops):
            self._enable(enabled)
            return
        for _, go, more in self.rows:
            for button in (go, more):
                self._grid.removeWidget(button)
                button.setParent(None)
                button.deleteLater()
        self.rows = []
        for row, stop in enumerate(stops):
            target = stop_slice(stop)
            go = QPushButton(f"Go to {target}")
            go.setToolTip(f"Show slice {target}, where this direction "
                          + ("stopped" if stop.reason is not StopReason.END else "ended"))
            go.clicked.connect(lambda _=False, index=target: self.go_to.emit(index))
            more = QPushButton(f"Continue past {stop.index}")
            more.setToolTip("Propagate further in this direction from slice "
                            f"{stop.last}, taking the next slice whatever the stop rules "
                            "say; enabled where a stop rule ended the run")
            more.clicked.connect(lambda _=False, s=stop: self.continue_requested.emit(s))
            self._grid.addWidget(go, row, 0)
            self._grid.addWidget(more, row, 1)
            self.rows.append((stop, go, more))
        self._enable(enabled)

    def _enable(self, enabled: bool) -> None:
        for stop, _go, more in self.rows:
            more.setEnabled(enabled and stop.reason in CONTINUABLE)

"""The *Server* row of the Speed panel: where the encoder runs (a server, or this computer).

An address (``http://gpu-box:8000``) makes the widget load the model with the remote backend:
new slices are embedded by a ``napari-medsam serve`` server, prompts are still decoded here.
*Run here* empties the field and goes back to this computer; every server error names it as
the fix. The view only reports the choice (:attr:`ServerView.server_chosen`); the widget
reloads the model.
"""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLineEdit, QPushButton


class ServerView(QObject):
    """The server address field and the *Run here* button."""

    #: The address to use (``""``: this computer), after the user changed it.
    server_chosen = Signal(str)

    def __init__(self, server: str = "", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._current = server
        self.edit = QLineEdit(server)
        self.edit.setPlaceholderText("this computer (or http://host:8000)")
        self.edit.setToolTip("Address of a `napari-medsam serve` server: it embeds new slices "
                             "(the encoder), prompts are still answered here. Empty: "
                             "everything runs on this computer. The API key is read from "
                             "$NAPARI_MEDSAM_API_KEY.")
        self.edit.editingFinished.connect(self._on_edited)
        self.local_button = QPushButton("Run here")
        self.local_button.setToolTip("Stop using the server: run the encoder on this computer")
        self.local_button.clicked.connect(self.run_here)
        self._show()

    @property
    def server(self) -> str:
        """The address in use (``""``: this computer)."""
        return self._current

    def _show(self) -> None:
        self.local_button.setEnabled(bool(self._current))

    def _on_edited(self) -> None:
        text = self.edit.text().strip()
        if text != self._current:
            self._current = text
            self._show()
            self.server_chosen.emit(text)

    def run_here(self) -> None:
        """Go back to this computer (empties the field)."""
        self.edit.setText("")
        self._on_edited()

    def set_enabled(self, enabled: bool) -> None:
        """Off while a volume is being embedded (like the backend choice)."""
        self.edit.setEnabled(enabled)
        self.local_button.setEnabled(enabled and bool(self._current))

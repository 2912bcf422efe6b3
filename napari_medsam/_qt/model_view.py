"""The model part of the Segment widget: which registry model answers prompts, and its load.

:class:`ModelView` lists the models of the registry (built-in ones and those exported or
adapted into the cache) in a combo box, loads the chosen one on a worker thread on the
chosen backend, and shows what runs. A newer request supersedes an older one: a load that
finishes late is dropped. It reports through Qt signals (:attr:`loaded`, :attr:`failed`).
"""

from __future__ import annotations

import logging
from functools import partial

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QLabel

from napari_medsam.engine.backends import REMOTE

logger = logging.getLogger(__name__)


def registry_names() -> list[str]:
    """Names of the models the registry knows, in display order."""
    from napari_medsam.models.registry import list_specs

    return [spec.name for spec in list_specs()]


class ModelView(QObject):
    """Model choice, backend and loading for one widget.

    Parameters
    ----------
    model_name, device, backend
        The first model, its device (``"auto"``, ``"cpu"``, ...) and backend.
    """

    #: The requested model is loaded (the prompt model).
    loaded = Signal(object)
    #: Loading failed (the exception).
    failed = Signal(object)

    def __init__(self, model_name: str, device: str, backend: str,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.model_name, self.device, self.backend = model_name, device, backend
        #: A ``napari-medsam serve`` address (the encoder runs there), or None.
        self.server: str | None = None
        self.model = None
        self._request = 0  # the latest load: an older one that finishes late is dropped
        self._closed = False
        self.worker = None
        self.model_label = QLabel(f"{model_name}: loading...")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model that answers prompts: the built-in ones and "
                                    "those adapted to your labels (Adapt to my labels...)")
        self.refresh_models()  # the widget connects the combo (it stops work first)

    def refresh_models(self) -> None:
        """List the registry's models again (a model was adapted or exported meanwhile)."""
        try:
            names = registry_names()
        except (OSError, ValueError) as exc:  # a broken registry file: keep what runs
            logger.warning("could not list the models: %s", exc)
            names = []
        if self.model_name not in names:
            names.append(self.model_name)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self.model_combo.setCurrentText(self.model_name)
        self.model_combo.blockSignals(False)

    def load(self) -> None:
        """Load :attr:`model_name` on :attr:`backend` (remote when a :attr:`server` is set)
        on a worker thread."""
        from napari_medsam.engine import load_model

        self._request += 1
        request, name = self._request, self.model_name
        backend = REMOTE if self.server else self.backend
        load = partial(load_model, name, self.device, backend=backend, server=self.server)

        def job() -> tuple[int, object]:
            try:
                return request, load()
            except Exception as exc:  # reported on the GUI thread by _on_result
                return request, exc

        # connected to a method, not a closure: Qt drops it if this view is deleted first
        # (a remote load may retry for seconds after the widget closed)
        self.worker = create_worker(job, _start_thread=False,
                                    _connect={"returned": self._on_result})
        self.worker.start()

    def _on_result(self, result: tuple[int, object]) -> None:
        request, value = result
        if request != self._request or self._closed:  # superseded, or the widget closed
            return
        if isinstance(value, Exception):
            self.failed.emit(value)
            return
        self.model = value
        self.model_label.setText(f"{value.spec.display_name} on {value.device_name}")
        self.loaded.emit(value)

    def set_backend(self, backend: str) -> bool:
        """Reload the model on ``backend``; False when nothing changes."""
        if backend == self.backend and self.model is not None:
            return False
        self.backend = backend
        self.model_label.setText(f"{self.model_name}: loading ({backend})...")
        self.load()
        return True

    def set_server(self, server: str | None) -> bool:
        """Reload the model with its encoder on ``server`` (None or ``""``: this computer);
        False when nothing changes."""
        server = server or None
        if server == self.server and self.model is not None:
            return False
        self.server = server
        self.model_label.setText(f"{self.model_name}: connecting to {server}..." if server
                                 else f"{self.model_name}: loading ({self.backend})...")
        self.load()
        return True

    def set_model(self, name: str) -> bool:
        """Switch to registry model ``name`` (reloads); False when it is the current one."""
        if name == self.model_name and self.model is not None:
            return False
        self.model_name = name
        if self.model_combo.currentText() != name:
            self.refresh_models()
        self.model_label.setText(f"{name}: loading...")
        self.load()
        return True

    def close(self) -> None:
        """Late loads are dropped from now on."""
        self._closed = True

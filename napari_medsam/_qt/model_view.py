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
        """Load :attr:`model_name` on :attr:`backend` on a worker thread."""
        from napari_medsam.engine import load_model

        self._request += 1
        request = self._request

        def loaded(model) -> None:
            if request == self._request and not self._closed:  # not superseded
                self.model = model
                self.model_label.setText(f"{model.spec.display_name} on {model.device_name}")
                self.loaded.emit(model)

        def failed(exc: Exception) -> None:
            if request == self._request and not self._closed:
                self.failed.emit(exc)

        self.worker = create_worker(partial(load_model, backend=self.backend),
                                    self.model_name, self.device, _start_thread=False,
                                    _connect={"returned": loaded, "errored": failed})
        self.worker.start()

    def set_backend(self, backend: str) -> bool:
        """Reload the model on ``backend``; False when nothing changes."""
        if backend == self.backend and self.model is not None:
            return False
        self.backend = backend
        self.model_label.setText(f"{self.model_name}: loading ({backend})...")
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

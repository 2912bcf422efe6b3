"""Viewer and layer events (and layer key bindings) a view connects, undone when it closes.

napari keeps calling a callback until it is disconnected; a closed dock widget must not be
called any more (its Qt objects may be deleted). A view connects through one
:class:`Connections` and calls :meth:`Connections.disconnect_all` on close; it also connects
``disconnect_all`` to its ``destroyed`` signal (a bound method of this plain object, which
outlives the deleted Qt object).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Connections"]


class Connections:
    """The (emitter, callback) pairs and key bindings one view made."""

    def __init__(self) -> None:
        self._events: list[tuple[Any, Callable[..., Any]]] = []
        self._keys: list[tuple[Any, str, Callable[..., Any]]] = []

    def __len__(self) -> int:
        return len(self._events) + len(self._keys)

    def connect(self, emitter: Any, callback: Callable[..., Any]) -> None:
        """``emitter.connect(callback)``, remembered for :meth:`disconnect_all`."""
        emitter.connect(callback)
        self._events.append((emitter, callback))

    def bind_key(self, layer: Any, key: str, function: Callable[..., Any]) -> None:
        """Bind ``key`` on ``layer`` to ``function`` (replacing a binding there)."""
        layer.bind_key(key, function, overwrite=True)
        self._keys.append((layer, key, function))

    def disconnect_all(self, *_args: Any) -> None:
        """Disconnect every callback and remove every key binding still ours."""
        events, self._events = self._events, []
        for emitter, callback in reversed(events):
            try:
                emitter.disconnect(callback)
            except (RuntimeError, TypeError, ValueError) as exc:  # emitter already gone
                logger.debug("could not disconnect %r: %s", callback, exc)
        keys, self._keys = self._keys, []
        for layer, key, function in keys:
            unbound = layer.bind_key(key, None)
            if unbound is not None and unbound is not function:  # someone else's: put back
                layer.bind_key(key, unbound, overwrite=True)

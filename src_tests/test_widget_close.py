"""Closing the Segment widget (issue 19): afterwards no viewer or layer event calls into it.

napari calls ``close`` on a dock widget's contents or deletes them with the window; the
widget and each of its views must then have disconnected every viewer and layer event (and
key binding) they connected. Real viewer, real sample CT, the model loaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_medsam._prompt_layers import BOXES_LAYER, CLICKS_LAYER
from napari_medsam._qt.image_view import ImageView
from napari_medsam._qt.objects_view import ObjectsView
from napari_medsam._qt.prompts_view import PromptsView
from napari_medsam._qt.widget import SegmentWidget
from napari_medsam._qt.window_view import WindowView
from napari_medsam._sample_data import sample_ct

pytestmark = pytest.mark.gui

#: Handlers that viewer and layer events call (looked up by name when napari calls them).
HANDLERS = ((ImageView, "refresh"), (SegmentWidget, "_on_slice_change"),
            (SegmentWidget, "_orient"), (WindowView, "_on_contrast_change"),
            (PromptsView, "schedule"), (PromptsView, "_on_clicks_changed"),
            (PromptsView, "_on_click_default"), (ObjectsView, "_objects_changed"),
            (ObjectsView, "_on_paint"))


def _emitters(viewer, image, labels):
    events = [viewer.layers.events.inserted, viewer.layers.events.removed,
              viewer.dims.events.current_step, viewer.dims.events.order,
              viewer.dims.events.ndisplay, image.events.contrast_limits,
              labels.events.paint, labels.events.set_data, labels.events.data]
    for name in (BOXES_LAYER, CLICKS_LAYER):
        layer = viewer.layers[name]
        events += [layer.events.data, layer.events.feature_defaults]
    return events


def _open(make_napari_viewer, qtbot, dock: bool):
    viewer = make_napari_viewer()
    (image, kwargs, _), _ = sample_ct()
    layer = viewer.add_image(image, **kwargs)
    labels = viewer.add_labels(np.zeros(image.shape, np.uint16), name=f"{layer.name} labels",
                               scale=layer.scale, translate=layer.translate)
    counts = [len(viewer.layers.events.inserted.callbacks),
              len(viewer.dims.events.current_step.callbacks),
              len(labels.events.paint.callbacks)]
    widget = SegmentWidget(viewer, device="cpu")
    if dock:
        viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.session is not None, timeout=120_000)
    assert widget.target_labels(create=False) is labels
    return viewer, widget, layer, labels, counts


def _poke(viewer, layer, labels) -> None:
    """Change what the widget follows: layers, slice, axes, window, paint, prompts."""
    z = layer.data.shape[0] // 2
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    viewer.dims.order = (1, 0, 2)
    viewer.dims.order = (0, 1, 2)
    layer.contrast_limits = (-100.0, 200.0)
    labels.paint((z, 20, 20), 3)
    viewer.layers[CLICKS_LAYER].add([[z, 30, 30]])
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="another")
    viewer.layers.remove("another")


def _spy(monkeypatch) -> list[str]:
    calls: list[str] = []
    for cls, name in HANDLERS:
        monkeypatch.setattr(cls, name, lambda *a, _n=name, **k: calls.append(_n))
    return calls


def test_after_close_no_viewer_or_layer_event_calls_the_widget(make_napari_viewer, qtbot,
                                                               monkeypatch):
    viewer, widget, layer, labels, counts = _open(make_napari_viewer, qtbot, dock=True)
    boxes = viewer.layers[BOXES_LAYER]
    listening = [len(viewer.layers.events.inserted.callbacks),
                 len(viewer.dims.events.current_step.callbacks),
                 len(labels.events.paint.callbacks)]
    assert all(n > c for n, c in zip(listening, counts, strict=True))  # it listens
    _poke(viewer, layer, labels)

    widget.close()
    calls = _spy(monkeypatch)  # (after: napari disconnects a method by its name)
    _poke(viewer, layer, labels)
    qtbot.wait(50)
    assert calls == []
    assert [len(viewer.layers.events.inserted.callbacks),
            len(viewer.dims.events.current_step.callbacks),
            len(labels.events.paint.callbacks)] == counts
    assert boxes.bind_key("Enter", None) is None  # its key bindings went too
    widget.close()  # twice is harmless


def test_a_deleted_widget_is_disconnected_too(make_napari_viewer, qtbot, monkeypatch):
    viewer, widget, layer, labels, counts = _open(make_napari_viewer, qtbot, dock=False)
    emitters = _emitters(viewer, layer, labels)
    with qtbot.waitSignal(widget.destroyed, timeout=10_000):
        widget.deleteLater()  # what closing napari's window does to its dock widgets
    calls = _spy(monkeypatch)
    _poke(viewer, layer, labels)
    assert calls == []
    assert [len(viewer.layers.events.inserted.callbacks),
            len(viewer.dims.events.current_step.callbacks),
            len(labels.events.paint.callbacks)] == counts
    ours = ("SegmentWidget", "PromptsView", "ObjectsView", "WindowView", "Autosaver")
    assert not [cb for emitter in emitters for cb in emitter.callbacks
                if any(name in repr(cb) for name in ours)]


def test_a_preview_that_finishes_after_the_widget_is_deleted_is_dropped(make_napari_viewer,
                                                                        qtbot):
    """Closing napari while a preview is computed: the worker's late signals must not reach
    the deleted views (a signal forwarded to a deleted view's signal crashed the process)."""
    from qtpy.QtCore import QCoreApplication, QEvent

    viewer, widget, layer, labels, _ = _open(make_napari_viewer, qtbot, dock=False)
    z = layer.data.shape[0] // 2
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    prompts = widget.prompts
    with qtbot.waitSignal(prompts.decoding, timeout=10_000):  # the worker starts now
        viewer.layers[BOXES_LAYER].add_rectangles(
            np.array([[[z, 40, 40], [z, 40, 90], [z, 90, 90], [z, 90, 40]]], dtype=float))
    widget.deleteLater()
    QCoreApplication.sendPostedEvents(widget, QEvent.Type.DeferredDelete.value)
    qtbot.wait(3000)  # the worker finishes meanwhile; its signals must go nowhere
    assert labels.data.max() == 0

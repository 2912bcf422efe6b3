"""The widget's "Speed" panel (issue 7) and a click bug, in a real napari viewer (Xvfb).

"Embed volume" fills the session's caches so that prompts need no encoder call, Cancel stops
early without touching the labels, the backend combo reloads the model; and a positive click
right after accepting a box + negative click object on the same slice gives a preview.
Crops of the sample CT keep the whole-axis work to a few slices.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import dice

from napari_medsam._prompt_layers import BOXES_LAYER, CLICKS_LAYER, PREVIEW_LAYER
from napari_medsam._qt.embed_panel import backend_choices
from napari_medsam._qt.widget import SegmentWidget
from napari_medsam._sample_data import sample_ct
from napari_medsam.segmentation import SliceRef

pytestmark = pytest.mark.gui
SPLEEN, KIDNEY_RIGHT, LIVER = 1, 2, 5


@pytest.fixture
def open_crop(make_napari_viewer, qtbot, litemedsam):
    """Open ``count`` axial slices of the sample CT around the spleen's largest slice.

    Each test takes its own crop (a new image digest), so that no test finds the disk
    cache already filled by another one.
    """
    widgets = []

    def _open(first_offset: int, count: int):
        viewer = make_napari_viewer()
        (image, kwargs, _), (labels, _, _) = sample_ct()
        z = int((labels == SPLEEN).sum(axis=(1, 2)).argmax())
        first = int(np.clip(z - first_offset, 0, image.shape[0] - count))
        crop = np.ascontiguousarray(image[first:first + count])
        layer = viewer.add_image(crop, **kwargs)
        widget = SegmentWidget(viewer, device="cpu")
        widgets.append(widget)
        viewer.window.add_dock_widget(widget)
        qtbot.waitUntil(lambda: widget.session is not None, timeout=120_000)
        return viewer, widget, layer, np.ascontiguousarray(labels[first:first + count]), \
            z - first

    yield _open
    for widget in widgets:
        widget.shutdown()


def _go_to(viewer, layer, index: int) -> None:
    viewer.dims.set_point(0, layer.data_to_world((index, 0, 0))[0])


def _box(viewer, index: int, mask2d: np.ndarray, pad: int = 0) -> None:
    ys, xs = np.nonzero(mask2d)
    y0, y1, x0, x1 = ys.min() - pad, ys.max() + pad, xs.min() - pad, xs.max() + pad
    viewer.layers[BOXES_LAYER].add_rectangles(
        np.array([[[index, y0, x0], [index, y0, x1], [index, y1, x1], [index, y1, x0]]],
                 dtype=float))


def _embed(panel, qtbot, timeout=300_000):
    """Click "Embed volume"; returns (EmbedSummary, slice indices in the order done)."""
    done: list[int] = []
    panel.progress_changed.connect(lambda p: done.append(p.index))
    with qtbot.waitSignal(panel.embedding_done, timeout=timeout) as blocker:
        panel.embed_button.click()
        assert panel.running
        assert not panel.embed_button.isEnabled() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.running, timeout=10_000)
    assert panel.embed_button.isEnabled() and not panel.cancel_button.isEnabled()
    return blocker.args[0], done


def test_embed_volume_fills_every_slice_so_a_preview_needs_no_encoder(open_crop, qtbot,
                                                                      monkeypatch):
    viewer, widget, layer, reference, z = open_crop(3, 8)
    start = 2
    _go_to(viewer, layer, start)
    panel = widget.embed_panel
    summary, order = _embed(panel, qtbot)
    assert not summary.cancelled and summary.done == summary.total == 8
    assert order[0] == start and sorted(order) == list(range(8))  # current slice first
    assert panel.progress.value() == panel.progress.maximum() == 8
    session = widget.session
    assert all(session.is_embedded(SliceRef(0, i)) for i in range(8))

    model = session.model
    calls = []
    for name in ("embed", "embed_preprocessed"):  # the session's path and the embedder's
        original = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, _f=original, **k: calls.append(1)
                            or _f(*a, **k))
    encoder_calls = session.encoder_calls
    _go_to(viewer, layer, z)  # another slice than the start
    assert widget.current_slice() == SliceRef(0, z)
    widget.preview_mask = None
    _box(viewer, z, reference[z] == SPLEEN)
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    assert dice(widget.preview_mask, reference[z] == SPLEEN) >= 0.8
    widget.shutdown()  # let the prefetch of the neighbours finish
    assert calls == [] and session.encoder_calls == encoder_calls


def test_cancel_mid_embedding_stops_early_and_leaves_labels_untouched(open_crop, qtbot):
    viewer, widget, layer, reference, z = open_crop(8, 16)
    _go_to(viewer, layer, z)
    widget.preview_mask = None
    _box(viewer, z, reference[z] == SPLEEN)
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    assert widget.accept() > 0
    target = widget.target_labels()
    before = target.data.copy()

    panel = widget.embed_panel
    seen = []
    panel.progress_changed.connect(seen.append)
    with qtbot.waitSignal(panel.embedding_done, timeout=300_000) as blocker:
        panel.embed_button.click()
        qtbot.waitUntil(lambda: any(p.encoded for p in seen), timeout=120_000)
        panel.cancel_button.click()
    summary = blocker.args[0]
    qtbot.waitUntil(lambda: not panel.running, timeout=10_000)
    assert summary.cancelled and summary.encoded >= 1 and summary.done < summary.total == 16
    assert "Cancelled" in panel.info.text()
    done = [p.index for p in seen]
    assert done[0] == z  # the accepted slice first (embedded already: no encoder call)
    assert all(widget.session.is_embedded(SliceRef(0, i)) for i in done)  # kept
    assert np.array_equal(target.data, before)
    assert not viewer.layers[PREVIEW_LAYER].data.any()
    assert panel.embed_button.isEnabled()


def test_backend_combo_reloads_the_model_and_shows_what_runs(open_crop, qtbot):
    viewer, widget, layer, reference, z = open_crop(1, 3)
    panel = widget.embed_panel
    choices = [panel.backend_combo.itemText(i) for i in range(panel.backend_combo.count())]
    assert choices == backend_choices() and choices[:2] == ["auto", "onnxruntime"]

    def switch(name: str):
        old = widget.model
        panel.backend_combo.setCurrentText(name)
        qtbot.waitUntil(lambda: widget.model is not old and widget.session is not None
                        and widget.session.model is widget.model, timeout=120_000)
        return widget.model

    model = switch("onnxruntime")
    assert model.providers == ["CPUExecutionProvider"]
    assert widget.model_label.text().endswith(" on CPU")
    if "openvino" in choices:
        model = switch("openvino")
        assert model.providers[0].startswith("OpenVINO")
        assert widget.model_label.text().endswith("CPU (OpenVINO f32)")
    # the reloaded session answers prompts
    _go_to(viewer, layer, 1)
    widget.preview_mask = None
    _box(viewer, 1, reference[1] == SPLEEN)
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    assert widget.preview_mask.any()


def test_positive_click_after_accepting_a_negative_click_object_on_the_same_slice(
        open_crop, qtbot):
    from scipy import ndimage

    viewer, widget, layer, reference, z = open_crop(1, 3)
    assert (reference[z] == LIVER).any()
    _go_to(viewer, layer, z)
    clicks = viewer.layers[CLICKS_LAYER]
    spleen = reference[z] == SPLEEN
    # object 1: a loose box on the spleen, cut by a negative click just outside it
    widget.preview_mask = None
    _box(viewer, z, spleen, pad=4)
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    ring = ndimage.binary_dilation(spleen, iterations=3) & ~spleen
    ny, nx = np.argwhere(ring)[0]
    widget.negative_check.setChecked(True)
    widget.preview_mask = None
    clicks.add([[z, ny, nx]])
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    widget.negative_check.setChecked(False)
    assert widget.accept() > 0
    assert len(clicks.data) == 0
    # object 2 on the same slice: one positive click inside the liver
    widget.new_object()
    liver = reference[z] == LIVER
    y, x = np.unravel_index(ndimage.distance_transform_edt(liver).argmax(), liver.shape)
    widget.preview_mask = None
    clicks.add([[z, y, x]])
    assert list(clicks.features["sign"]) == [1]  # not the removed click's sign
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    assert widget.preview_mask[y, x] and dice(widget.preview_mask, liver) >= 0.5


def test_disk_cache_size_is_shown_and_clear_empties_it(open_crop, qtbot, monkeypatch,
                                                       tmp_path):
    from napari_medsam.engine import disk_cache

    viewer, widget, layer, reference, z = open_crop(1, 3)
    monkeypatch.setattr(disk_cache, "embeddings_dir", lambda: tmp_path / "embeddings")
    widget._on_image_change()  # a session whose disk store lives in tmp_path
    panel = widget.embed_panel
    summary, _ = _embed(panel, qtbot)
    assert summary.done == 3
    size = disk_cache.cache_size(tmp_path / "embeddings")
    assert size > 3 * 256 * 64 * 64 * 2  # three float16 embeddings at least
    assert panel.disk_label.text() == f"Disk cache: {disk_cache.format_bytes(size)}"
    old_session = widget.session
    panel.clear_button.click()
    assert disk_cache.cache_size(tmp_path / "embeddings") == 0
    assert panel.disk_label.text() == "Disk cache: 0 B"
    assert "cleared" in panel.info.text()
    assert widget.session is not None and widget.session is not old_session
    # prompting still works (from the embeddings still held in memory)
    _go_to(viewer, layer, z)
    widget.preview_mask = None
    _box(viewer, z, reference[z] == SPLEEN)
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    assert dice(widget.preview_mask, reference[z] == SPLEEN) >= 0.8

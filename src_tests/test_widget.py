"""The Segment widget in a real napari viewer (under Xvfb): box -> preview -> accept -> undo."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import dice, rectangle

from napari_medsam._orientation import viewer_camera
from napari_medsam._qt.widget import BOXES_LAYER, SegmentWidget
from napari_medsam._sample_data import sample_ct

pytestmark = pytest.mark.gui
LIVER, SPLEEN = 5, 1


def _segment(viewer, widget, layer, qtbot, axis, index, mask2d):
    viewer.dims.order = tuple([axis] + [a for a in range(3) if a != axis])
    point = list(viewer.dims.point)
    world = layer.data_to_world([index if a == axis else 0 for a in range(3)])
    point[axis] = world[axis]
    viewer.dims.point = point
    assert widget.current_slice().axis == axis and widget.current_slice().index == index
    ys, xs = np.nonzero(mask2d)
    widget.preview_mask = None
    viewer.layers[BOXES_LAYER].add_rectangles(
        rectangle(axis, index, (ys.min(), ys.max()), (xs.min(), xs.max())))
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    return widget.accept()


def test_axial_box_preview_accept_undo_redo(sample_ct_widget, qtbot):
    viewer, widget, layer, reference = sample_ct_widget
    z = int((reference == LIVER).sum(axis=(1, 2)).argmax())
    accepted = _segment(viewer, widget, layer, qtbot, 0, z, reference[z] == LIVER)
    target = widget.target_labels()
    assert accepted > 0
    assert dice(target.data[z] == 1, reference[z] == LIVER) >= 0.85
    assert target.scale.tolist() == layer.scale.tolist()
    assert target.translate.tolist() == layer.translate.tolist()
    target.undo()
    assert not target.data.any()
    target.redo()
    assert dice(target.data[z] == 1, reference[z] == LIVER) >= 0.85


def _vertical(viewer) -> str:
    value = viewer_camera(viewer).orientation2d[0]
    return str(getattr(value, "value", value))


def test_coronal_box_and_keep_rule(sample_ct_widget, qtbot):
    viewer, widget, layer, reference = sample_ct_widget
    assert _vertical(viewer) == "down"  # axial: anterior up through the layer's scale
    y = int((reference == LIVER).sum(axis=(0, 2)).argmax())
    _segment(viewer, widget, layer, qtbot, 1, y, reference[:, y, :] == LIVER)
    assert _vertical(viewer) == "up"  # coronal: slice axis vertical, superior up
    target = widget.target_labels()
    assert dice(target.data[:, y, :] == 1, reference[:, y, :] == LIVER) >= 0.85
    first = target.data.copy()
    # a second object whose box covers the first: the default keep rule protects object 1
    assert widget.new_object() == 2
    everything = np.ones_like(reference[:, y, :], dtype=bool)
    everything[[0, -1], :] = False
    everything[:, [0, -1]] = False
    _segment(viewer, widget, layer, qtbot, 1, y, everything)
    assert np.array_equal(target.data[first == 1], first[first == 1])
    viewer.dims.order = (0, 1, 2)
    assert _vertical(viewer) == "down"


def test_window_choice_sets_what_the_model_sees(sample_ct_widget, qtbot):
    viewer, widget, layer, _ = sample_ct_widget
    widget.window_combo.setCurrentText("lung")
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    assert widget.session.mapping.name == "lung"
    assert widget.session.mapping.key.startswith("ct_window:lung")


def test_missing_model_is_a_clear_message_not_a_crash(make_napari_viewer, qtbot, tmp_path,
                                                       monkeypatch):
    from napari_medsam.models import export as export_mod
    from napari_medsam.paths import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(export_mod, "missing_export_packages", lambda: ["torch"])
    viewer = make_napari_viewer()
    (image, image_kwargs, _), _ = sample_ct()
    viewer.add_image(image, **image_kwargs)
    widget = SegmentWidget(viewer, device="cpu")
    qtbot.waitUntil(lambda: "Error" in widget.status.text(), timeout=30_000)
    assert "pip install 'napari-medsam[export]'" in widget.status.text()
    assert widget.model is None and widget.session is None
    assert len(viewer.layers) == 1  # nothing else touched


def test_one_positive_click_segments_the_organ(sample_ct_widget, qtbot):
    from scipy import ndimage

    from napari_medsam._prompt_layers import CLICKS_LAYER

    viewer, widget, layer, reference = sample_ct_widget
    z = int((reference == SPLEEN).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    truth = reference[z] == SPLEEN
    y, x = np.unravel_index(ndimage.distance_transform_edt(truth).argmax(), truth.shape)
    widget.preview_mask = None
    viewer.layers[CLICKS_LAYER].add([[z, y, x]])
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    assert dice(widget.preview_mask, truth) >= 0.8
    assert widget.accept() > 0
    assert len(viewer.layers[CLICKS_LAYER].data) == 0  # accepted: the slice's clicks go


def test_existing_labels_layer_and_object_list_follow_undo_and_paint(sample_ct_widget, qtbot):
    from napari_medsam._qt.widget import NEW_LABELS, label_counts

    viewer, widget, layer, reference = sample_ct_widget
    existing = viewer.add_labels(reference.copy(), name="previous session",
                                 scale=layer.scale, translate=layer.translate)
    # another layer of the image's shape is offered but never picked unasked
    assert widget.labels_combo.currentText() == NEW_LABELS
    widget.labels_combo.setCurrentText("previous session")
    assert widget.target_labels(create=False) is existing
    assert NEW_LABELS in [widget.labels_combo.itemText(i)
                          for i in range(widget.labels_combo.count())]
    counts = label_counts(reference)
    assert widget.objects.count() == len(counts)
    assert widget.objects.item(0).text().startswith(f"{min(counts)} ")

    new_id = widget.new_object()
    assert new_id == int(reference.max()) + 1
    z = int((reference == SPLEEN).sum(axis=(1, 2)).argmax())
    _segment(viewer, widget, layer, qtbot, 0, z, reference[z] == SPLEEN)
    listed = lambda: [int(widget.objects.item(i).text().split()[0])  # noqa: E731
                      for i in range(widget.objects.count())]
    # keep rule: the spleen's voxels already belong to object 1, so nothing of it changes
    assert np.array_equal(existing.data[reference > 0], reference[reference > 0])
    # painting with the brush and undoing keep the list in step with the data
    painted = new_id + 1
    assert painted not in listed()
    existing.paint((z, 1, 1), painted)
    qtbot.waitUntil(lambda: painted in listed(), timeout=5_000)
    existing.undo()
    qtbot.waitUntil(lambda: painted not in listed(), timeout=5_000)
    existing.redo()
    qtbot.waitUntil(lambda: painted in listed(), timeout=5_000)


def _wait_idle(panel, qtbot, timeout=300_000):
    qtbot.waitUntil(lambda: not panel.running, timeout=timeout)


def test_propagate_streams_then_accepts_as_one_undo_step(sample_ct_widget, qtbot):
    viewer, widget, layer, reference = sample_ct_widget
    z = int((reference == SPLEEN).sum(axis=(1, 2)).argmax())
    _segment(viewer, widget, layer, qtbot, 0, z, reference[z] == SPLEEN)
    target = widget.target_labels()
    after_2d = target.data.copy()
    panel = widget.volume_panel
    panel.propagate()
    assert panel.running
    _wait_idle(panel, qtbot)
    assert panel.pending is not None and panel.pending.kind == "slices"
    masks = panel.pending.masks
    assert z not in masks  # the anchor is never re-segmented
    assert len([i for i, m in masks.items() if m.any()]) >= 10
    assert np.array_equal(target.data, after_2d)  # nothing written before Accept 3D
    changed = panel.accept()
    assert changed > 0
    spleen = reference == SPLEEN
    assert dice(target.data == 1, spleen) >= 0.8
    target.undo()  # one step takes the whole propagation back
    assert np.array_equal(target.data, after_2d)


def test_cancel_mid_propagation_leaves_labels_untouched(sample_ct_widget, qtbot):
    viewer, widget, layer, reference = sample_ct_widget
    z = int((reference == LIVER).sum(axis=(1, 2)).argmax())
    _segment(viewer, widget, layer, qtbot, 0, z, reference[z] == LIVER)
    target = widget.target_labels()
    before = target.data.copy()
    panel = widget.volume_panel
    panel.propagate()
    qtbot.waitUntil(lambda: panel.progress.value() >= 3, timeout=120_000)
    panel.cancel()
    _wait_idle(panel, qtbot)
    assert np.array_equal(target.data, before)
    done = panel.pending.masks
    assert 1 <= len(done) < (reference == LIVER).any(axis=(1, 2)).sum()
    assert "cancelled" in panel.info.text()
    panel.reject()
    assert np.array_equal(target.data, before)
    assert not viewer.layers["MedSAM preview"].data.any()


def test_refine_shows_a_diff_and_accepts_per_label(sample_ct_widget, qtbot):
    from scipy import ndimage

    viewer, widget, layer, reference = sample_ct_widget
    damaged = np.where(ndimage.binary_dilation(reference == SPLEEN, iterations=2)
                       & (reference == 0), SPLEEN, reference).astype(np.uint16)
    target = viewer.add_labels(damaged, name="damaged", scale=layer.scale,
                               translate=layer.translate)
    widget.labels_combo.setCurrentText("damaged")
    widget.label_spin.setValue(SPLEEN)
    z = int((reference == SPLEEN).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    panel = widget.volume_panel
    panel.refine()
    _wait_idle(panel, qtbot)
    preview = viewer.layers["MedSAM preview"].data
    assert (preview == 3).any()  # removed voxels shown
    before = dice(target.data == SPLEEN, reference == SPLEEN)
    panel.accept()
    assert dice(target.data == SPLEEN, reference == SPLEEN) > before
    others = (reference != SPLEEN) & (reference != 0)
    assert np.array_equal(target.data[others], reference[others])  # other organs kept


def test_negative_check_box_shows_the_sign_of_the_next_click(sample_ct_widget, qtbot):
    from napari_medsam._prompt_layers import CLICKS_LAYER

    viewer, widget, layer, reference = sample_ct_widget
    z = int((reference == SPLEEN).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    clicks = viewer.layers[CLICKS_LAYER]
    widget.negative_check.setChecked(True)
    clicks.add([[z, 10, 10]])
    widget.negative_check.setChecked(False)
    assert int(clicks.feature_defaults["sign"].iloc[0]) == 1
    clicks.selected_data = {0}  # napari copies the negative click's sign into the defaults
    assert int(clicks.feature_defaults["sign"].iloc[0]) == 0
    assert widget.negative_check.isChecked()  # ... and the check box says so
    clicks.selected_data = set()
    widget.clear()  # removing the clicks selects them: the sign chosen before comes back
    assert len(clicks.data) == 0
    assert widget.negative_check.isChecked()
    assert int(clicks.feature_defaults["sign"].iloc[0]) == 0
    widget.negative_check.setChecked(False)
    assert int(clicks.feature_defaults["sign"].iloc[0]) == 1

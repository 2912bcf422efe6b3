"""The widget's "Zoom small objects" switch (issue 8) on a real hippocampus MRI."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import case_dir, dice, largest_slice
from helpers import rectangle as _rectangle

from napari_medsam._qt.widget import BOXES_LAYER, SegmentWidget
from napari_medsam._reader import read_layers

pytestmark = pytest.mark.gui
ANTERIOR = 1


def _preview(widget, qtbot):
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=120_000)
    return widget.preview_mask.copy()


@pytest.fixture
def hippocampus_panel(make_napari_viewer, qtbot, litemedsam):
    """(viewer, widget, image layer, reference labels) for hippocampus_003, model loaded."""
    folder = case_dir("msd_hippocampus_mr")
    ((image, kwargs, _),) = read_layers(folder / "hippocampus_003_image.nii.gz")
    ((reference, _, _),) = read_layers(folder / "hippocampus_003_label.nii.gz")
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, **kwargs)
    widget = SegmentWidget(viewer, device="cpu")
    viewer.window.add_dock_widget(widget)
    try:
        qtbot.waitUntil(lambda: widget.session is not None, timeout=120_000)
        yield viewer, widget, layer, reference
    finally:
        widget.shutdown()


def test_zoom_switch_sets_the_session_rule_and_redoes_the_preview(hippocampus_panel, qtbot):
    viewer, widget, layer, reference = hippocampus_panel
    assert widget.zoom_check.isChecked() and widget.session.zoom == "auto"  # default
    z = largest_slice(reference, ANTERIOR)
    truth = reference[z] == ANTERIOR
    point = list(viewer.dims.point)
    point[0] = layer.data_to_world([z, 0, 0])[0]
    viewer.dims.point = point
    assert widget.current_slice().index == z
    ys, xs = np.nonzero(truth)
    widget.preview_mask = None
    viewer.layers[BOXES_LAYER].add_rectangles(
        _rectangle(0, z, (ys.min(), ys.max()), (xs.min(), xs.max())))
    zoomed = _preview(widget, qtbot)

    widget.preview_mask = None
    widget.zoom_check.setChecked(False)  # the preview is redone without the ROI
    assert widget.session.zoom == "off"
    whole = _preview(widget, qtbot)
    assert not np.array_equal(zoomed, whole)
    # the small, faint hippocampus is what the region of interest is for
    assert dice(zoomed, truth) > dice(whole, truth) + 0.05, (dice(zoomed, truth),
                                                             dice(whole, truth))

    widget.preview_mask = None
    widget.zoom_check.setChecked(True)
    assert widget.session.zoom == "auto"
    np.testing.assert_array_equal(_preview(widget, qtbot), zoomed)


def test_a_click_on_the_hippocampus_follows_the_zoom_switch(hippocampus_panel, qtbot):
    """One positive click: with *Zoom small objects* on, the click search's candidate boxes
    are segmented in a region of interest too."""
    from napari_medsam._prompt_layers import CLICKS_LAYER
    from napari_medsam.evaluation import interior_click

    viewer, widget, layer, reference = hippocampus_panel
    z = largest_slice(reference, ANTERIOR)
    truth = reference[z] == ANTERIOR
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    x, y = interior_click(truth)
    widget.preview_mask = None
    viewer.layers[CLICKS_LAYER].add([[z, y, x]])
    zoomed = _preview(widget, qtbot)
    assert widget.session.roi_encoder_calls >= 1 and zoomed[y, x]

    widget.preview_mask = None
    widget.zoom_check.setChecked(False)  # the click search on the whole slice
    whole = _preview(widget, qtbot)
    # measured on this slice (session, same click): 0.692 zoomed, 0.166 whole slice
    assert dice(zoomed, truth) > 0.6 and dice(zoomed, truth) > dice(whole, truth) + 0.2, (
        dice(zoomed, truth), dice(whole, truth))

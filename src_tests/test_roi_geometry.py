"""Crop geometry, the crop size rule, where the rule applies, the ROI's grey values and the
hysteresis threshold (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medsam.io.intensity import auto_mapping, ct_window
from napari_medsam.segmentation.roi import (
    Crop,
    RoiPolicy,
    choose_crop,
    hysteresis_mask,
)


def test_crop_round_trip_is_exact():
    rng = np.random.default_rng(0)
    shape = (101, 122)
    image = rng.normal(size=shape).astype(np.float32)
    crop = Crop(17, 40, 33, 33, 64)
    part = crop.extract(image)
    assert part.shape == (33, 33)
    pasted = crop.paste(part, shape, fill=np.float32(-7))
    np.testing.assert_array_equal(pasted[crop.slices], image[crop.slices])
    outside = np.ones(shape, bool)
    outside[crop.slices] = False
    assert np.all(pasted[outside] == -7)
    # a canvas-sized array (the model's output) is cut to the region before pasting
    canvas = np.zeros((64, 64), np.float32)
    canvas[:33, :33] = part
    np.testing.assert_array_equal(crop.paste(canvas, shape, np.float32(-7)), pasted)
    box = (45.0, 20.0, 60.5, 41.0)
    assert crop.box_to_slice(crop.box_to_crop(box)) == box
    assert crop.box_to_crop(box) == (5.0, 3.0, 20.5, 24.0)
    assert crop.points_to_crop([(50, 30, 1)]) == [(10.0, 13.0, 1.0)]
    with pytest.raises(ValueError, match="does not fit"):
        crop.paste(np.zeros((3, 3)), shape)
    with pytest.raises(ValueError, match="canvas"):
        Crop(0, 0, 40, 40, 32)


def test_canvas_image_pads_with_the_lowest_grey_value():
    region = np.arange(12, 12 + 30 * 20, dtype=np.uint8)[:600].reshape(30, 20)
    crop = Crop(0, 0, 30, 20, 64)
    image = crop.canvas_image(region)
    assert image.shape == (64, 64) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[:30, :20], region)
    assert np.all(image[30:] == region.min()) and np.all(image[:, 20:] == region.min())
    square = Crop(5, 5, 64, 64, 64)
    full = np.ones((64, 64), np.uint8)
    assert square.canvas_image(full) is full


def test_choose_crop_is_a_fixed_roi_on_a_grid_around_small_boxes():
    policy = RoiPolicy(upsample=4.0, context=1.25)  # ROI: 256 / 4 = 64 native pixels
    shape = (512, 512)
    crop = choose_crop((100, 200, 139, 219), shape, 256, policy)  # 40 x 20 box
    assert crop is not None and (crop.rows, crop.cols, crop.canvas) == (64, 64, 64)
    assert crop.contains((100, 200, 139, 219))
    # on the 32-pixel grid: 12 pixels free around the box (>= 10 % of its 40-pixel side)
    assert (crop.x0, crop.y0) == (96, 192)
    # too little room on the 32-pixel grid: the 8-pixel grid's most central ROI
    fine = choose_crop((100, 200, 149, 219), shape, 256, policy)  # 50 x 20 box
    assert (fine.x0, fine.y0) == (96, 176) and fine.contains((100, 200, 149, 219))
    fine = choose_crop((90, 200, 139, 219), shape, 256, policy)
    assert fine.x0 == 80 and fine.contains((90, 200, 139, 219))
    # near the border the square is shifted inside the slice, never cut
    edge = choose_crop((0, 500, 19, 511), shape, 256, policy)
    assert edge is not None and (edge.rows, edge.cols) == (64, 64)
    assert edge.x0 == 0 and edge.y0 + edge.rows == 512
    # a box too large for the ROI with its context: none
    assert choose_crop((0, 0, 59, 59), shape, 256, policy) is None
    assert choose_crop((0, 0, 50, 50), shape, 256, policy) is not None  # 51 * 1.25 <= 64


def test_choose_crop_depends_on_the_box_alone_and_nearby_boxes_share_it():
    policy = RoiPolicy()
    shape = (320, 260)
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = (int(v) for v in rng.integers(1, 52, size=2))  # every box size that gets a ROI
        x0, y0 = int(rng.integers(0, shape[1] - w)), int(rng.integers(0, shape[0] - h))
        box = (x0, y0, x0 + w - 1, y0 + h - 1)
        crop = choose_crop(box, shape, 256, policy)
        assert crop is not None and crop.contains(box)
        assert crop == choose_crop(box, shape, 256, policy)
        # on a grid, or flush with the slice's far border
        assert crop.x0 % 8 == 0 or crop.x0 + crop.cols == shape[1]
        assert crop.y0 % 8 == 0 or crop.y0 + crop.rows == shape[0]
        on_coarse = [start % 32 == 0 or start + 64 == size
                     for start, size in ((crop.x0, shape[1]), (crop.y0, shape[0]))]
        if not all(on_coarse):  # the fine grid: no coarse ROI leaves 10 % room
            room = 0.1 * max(w, h)
            x_room = any(s + room <= x0 and box[2] + room <= s + 63
                         for s in (*range(0, shape[1] - 63, 32), shape[1] - 64))
            y_room = any(s + room <= y0 and box[3] + room <= s + 63
                         for s in (*range(0, shape[0] - 63, 32), shape[0] - 64))
            assert not (x_room and y_room)
    # boxes a few pixels apart (two structures, the next click) share one ROI and embedding
    crop = choose_crop((100, 200, 129, 219), (512, 512), 256, policy)
    assert crop == choose_crop((101, 200, 129, 218), (512, 512), 256, policy)
    assert crop == choose_crop((110, 205, 139, 230), (512, 512), 256, policy)


def test_choose_crop_on_a_small_slice_is_the_whole_slice_on_a_canvas():
    policy = RoiPolicy(upsample=4.0, context=1.25)
    crop = choose_crop((5, 10, 20, 30), (52, 34), 256, policy)
    assert crop is not None and crop.key == (0, 0, 52, 34, 64)
    assert choose_crop((5, 10, 20, 30), (64, 40), 256, policy) is None  # already seen at 4x


def test_crop_contains_with_margin_and_slice_border():
    crop = Crop(0, 10, 40, 40, 40)
    assert crop.contains((20, 5, 30, 20), margin=4)
    assert not crop.contains((20, 2, 30, 20), margin=4)
    assert crop.contains((20, 2, 30, 20), margin=4, shape=(100, 100))  # top is the border
    assert not crop.contains((5, 5, 30, 20))


def test_combine_predictions_averages_the_logits():
    from napari_medsam.engine.protocol import Prediction
    from napari_medsam.segmentation.roi import combine_predictions

    a = Prediction(np.full((4, 4), 1.0, np.float32), np.ones((4, 4), bool), 0.5, np.zeros(1))
    b = Prediction(np.full((4, 4), -3.0, np.float32), np.zeros((4, 4), bool), 0.9, np.zeros(1))
    mean = combine_predictions(a, b)
    assert np.all(mean.logits == -1.0) and not mean.mask.any() and mean.iou == pytest.approx(0.7)
    assert mean.low_res_logits is a.low_res_logits
    assert combine_predictions(a, b, RoiPolicy().combine).iou == pytest.approx(0.7)
    with pytest.raises(ValueError, match="combine"):
        combine_predictions(a, b, "iou")


def test_the_rule_applies_to_mri_and_to_ct_slices_larger_than_the_model_input():
    policy = RoiPolicy()
    mr = auto_mapping(np.linspace(0, 3000, 1000).reshape(10, 10, 10), "MR")
    ct = ct_window("abdomen")
    assert policy.applies_to(mr, (101, 122), 256) and policy.applies_to(mr, (512, 512), 256)
    assert not policy.applies_to(ct, (101, 122), 256)
    assert not policy.applies_to(ct, (256, 200), 256)
    assert policy.applies_to(ct, (512, 512), 256)


def test_hysteresis_joins_weak_pixels_connected_to_the_core():
    logits = np.full((8, 8), -10.0)
    logits[2:4, 2:4] = 3.0  # core
    logits[4:6, 2:4] = -1.0  # weak, touching the core
    logits[6:8, 6:8] = -1.0  # weak, isolated
    mask = hysteresis_mask(logits, -2.0)
    assert mask[2:6, 2:4].all() and not mask[6:, 6:].any() and mask.sum() == 8
    np.testing.assert_array_equal(hysteresis_mask(logits, None), logits > 0)
    assert not hysteresis_mask(np.full((4, 4), -1.0), -2.0).any()  # no core, nothing


def test_policy_validation_and_defaults():
    with pytest.raises(ValueError, match="context"):
        RoiPolicy(context=0.5)
    with pytest.raises(ValueError, match="upsample"):
        RoiPolicy(upsample=0)
    for grids in ((), (0.0,), (0.5, -0.1), (1.5,)):
        with pytest.raises(ValueError, match="grids"):
            RoiPolicy(grids=grids)
    with pytest.raises(ValueError, match="margin"):
        RoiPolicy(margin=-0.1)
    policy = RoiPolicy()
    assert (policy.upsample, policy.context, policy.grids, policy.margin, policy.weak_logit) \
        == (4.0, 1.25, (0.5, 0.125), 0.1, -3.0)
    assert policy.grid_steps(256) == (32, 8)
    assert (policy.combine, policy.intensity) == ("mean", "slice")
    assert policy.canvas(256) == 64

"""Simulated users and Dice (napari_medsam.evaluation) and ``napari-medsam eval``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers import case_dir, dice

from napari_medsam import evaluation as ev
from napari_medsam.cli import main
from napari_medsam.io import Volume, read_volume
from napari_medsam.io.intensity import auto_mapping
from napari_medsam.segmentation import SegmentationSession, SliceRef

CT3 = case_dir("dcmqi_ct_3slice")  # 3 slices of 512 x 512: liver 1, spine 2 (heart 3 apart)
LIVER, SPINE = 1, 2


@pytest.fixture(scope="module")
def ct3(litemedsam):
    image = read_volume(CT3 / "dicom")
    reference = read_volume(CT3 / "label_liver_spine.nrrd")
    ref, resampled = ev.align_reference(image, reference)
    assert not resampled
    session = SegmentationSession(litemedsam, image.array,
                                  auto_mapping(image.array, image.modality))
    return image, ref, session


# -- pure helpers ------------------------------------------------------------------------------
def test_box_from_mask_tight_jittered_clipped_and_widened():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:16] = True
    assert ev.box_from_mask(mask) == (10, 5, 15, 8)
    a = ev.box_from_mask(mask, 3, np.random.default_rng(7))
    assert a == ev.box_from_mask(mask, 3, np.random.default_rng(7))  # reproducible
    x0, y0, x1, y1 = a
    assert 7 <= x0 <= 10 and 2 <= y0 <= 5 and 15 <= x1 <= 18 and 8 <= y1 <= 11
    edge = np.zeros((20, 30), bool)
    edge[0:3, 27:30] = True
    for seed in range(5):
        x0, y0, x1, y1 = ev.box_from_mask(edge, 10, np.random.default_rng(seed))
        assert y0 == 0 and x1 == 29 and x0 >= 17 and y1 <= 12
    line = np.zeros((20, 30), bool)
    line[4, 3:9] = True  # one pixel tall: widened so the box has an area
    assert ev.box_from_mask(line) == (3, 4, 8, 5)


def test_interior_click_is_inside_the_largest_component():
    mask = np.zeros((40, 40), bool)
    mask[2:6, 2:6] = True
    mask[10:30, 15:35] = True
    x, y = ev.interior_click(mask)
    assert 15 <= x < 35 and 10 <= y < 30 and mask[y, x]
    assert ev.dice(mask, mask) == 1.0 and ev.dice(mask, ~mask) == 0.0


def test_reference_is_resampled_in_physical_space_when_flipped(caplog):
    image = read_volume(case_dir("totalseg_ct_dicom") / "dicom")
    reference = read_volume(case_dir("totalseg_ct_dicom") / "label.nii.gz")
    with caplog.at_level(logging.WARNING, logger="napari_medsam.evaluation"):
        ref, resampled = ev.align_reference(image, reference)
    assert resampled and "resampled it onto the image grid" in caplog.text
    np.testing.assert_array_equal(ref, reference.array[:, ::-1, :])
    assert ev.reference_label_names(reference)[5] == "liver"  # from labels.json beside it
    far = Volume(reference.array, spacing=reference.spacing,
                 origin=(5000.0, 5000.0, 5000.0), direction=reference.direction)
    with pytest.raises(ev.EvalError, match="does not overlap"):
        ev.align_reference(image, far)


# -- the simulated users on a real CT ----------------------------------------------------------
def _rectangle(axis, index, box):
    """The napari Shapes rectangle a user draws for (x_min, y_min, x_max, y_max)."""
    x0, y0, x1, y1 = box
    others = [a for a in range(3) if a != axis]
    out = []
    for r, c in ((y0, x0), (y0, x1), (y1, x1), (y1, x0)):
        vertex = [0.0, 0.0, 0.0]
        vertex[axis], vertex[others[0]], vertex[others[1]] = index, r, c
        out.append(vertex)
    return np.array(out)


def test_box_mode_masks_equal_the_widget_path(ct3):
    from napari.layers import Shapes

    from napari_medsam._prompt_layers import boxes_on_slice

    _, ref, session = ct3
    steps = list(ev.box_slices(session, ref == SPINE, 0, jitter=4,
                               rng=np.random.default_rng(1)))
    assert [index for index, _, _ in steps] == [0, 1, 2]
    shapes = Shapes(ndim=3)
    for index, box, _ in steps:
        shapes.add_rectangles(np.array([_rectangle(0, index, box)]))
    for index, box, mask in steps:
        ref_slice = SliceRef(0, index)
        drawn = boxes_on_slice(shapes, ref_slice)
        assert drawn == [tuple(float(v) for v in box)]
        widget_mask = session.predict_prompts(ref_slice, drawn, [], [])
        np.testing.assert_array_equal(mask, widget_mask)
        assert dice(mask, ref[index] == SPINE) > 0.7


@pytest.mark.slow
def test_click_and_propagate_modes_and_small_labels(ct3):
    _, ref, session = ct3
    ref = ref.copy()
    ref[1, 0:5, 0:5] = 9  # 25 voxels: skipped
    result = ev.evaluate(session, ref, "click", labels=[LIVER, 9], names={LIVER: "liver"})
    (liver,) = result.labels
    assert liver.label == LIVER and liver.name == "liver" and liver.slices == 3
    assert liver.dice > 0.7
    assert result.skipped == [{"label": 9, "name": None, "voxels": 25,
                               "reason": "fewer than 50 voxels"}]
    clicks = list(ev.click_slices(session, ref == LIVER, 0))
    direct = session.predict_prompts(SliceRef(0, 1), positives=[clicks[1][1]])
    np.testing.assert_array_equal(clicks[1][2], direct)

    prop = ev.evaluate(session, ref, "propagate", labels=[SPINE])
    assert prop.encoder_calls == 0  # every slice was embedded by the click run
    assert prop.labels[0].dice > 0.7
    table = ev.format_table(prop)
    assert "propagate mode" in table and f"{prop.labels[0].dice:.3f}" in table


def test_eval_cli_json(ct3, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", str(CT3 / "dicom"), str(CT3 / "label_liver_spine.nrrd"), "--mode",
                 "box", "--labels", "1,2,7", "--jitter", "3", "--seed", "5", "--json", str(out),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(out.read_text())
    assert data["mode"] == "box" and data["jitter"] == 3 and data["seed"] == 5
    assert set(data["labels"]) == {"1", "2"}
    for key, name in (("1", "liver"), ("2", "spine")):
        entry = data["labels"][key]
        assert entry["name"] == name and entry["slices"] == 3
        assert entry["voxels"] == int((ct3[1] == int(key)).sum())
        assert 0.7 < entry["dice"] <= 1.0 and entry["seconds"] > 0
    assert data["skipped"] == [{"label": 7, "name": None, "voxels": 0,
                                "reason": "not in the reference"}]
    assert data["mean_dice"] == pytest.approx(np.mean([data["labels"][k]["dice"]
                                                        for k in ("1", "2")]))
    assert data["seconds"] >= data["embed_seconds"] > 0 and data["encoder_calls"] == 3
    assert data["resampled_reference"] is False
    # The same boxes through the library give the same Dice (same seed -> same boxes).
    again = ev.evaluate(ct3[2], ct3[1], "box", labels=[SPINE], jitter=3, seed=5)
    assert again.labels[0].dice == pytest.approx(data["labels"]["2"]["dice"])
    assert "liver" in captured.out and "mean Dice" in captured.out
    assert "[box] label 2 spine (2/2)" in captured.err


def test_eval_cli_errors(tmp_path, capsys):
    mr = case_dir("totalseg_mr_abdomen_sm") / "image.nii.gz"
    code = main(["eval", str(mr), str(CT3 / "label_heart.nrrd"), "--mode", "box"])
    err = capsys.readouterr().err
    assert code == 2 and "does not overlap" in err
    assert main(["eval", str(mr), str(mr), "--mode", "box", "--labels", "1,x"]) == 2
    assert "--labels" in capsys.readouterr().err


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_box_user_slices_along_any_axis(axis):
    from fakes import box_fill_model

    volume = np.random.default_rng(2).normal(size=(10, 20, 30)).astype(np.float32)
    session = SegmentationSession(box_fill_model(), volume, auto_mapping(volume, "MR"))
    ref = np.zeros(volume.shape, np.uint8)
    ref[2:7, 3:12, 5:25] = 4  # a cuboid: a box-filling model gets it exactly from tight boxes
    ref[8, 15:18, 1:4] = 6  # 9 voxels: skipped
    result = ev.evaluate(session, ref, "box", axis=axis)
    (only,) = result.labels
    assert only.label == 4 and only.dice == 1.0
    assert only.slices == (5, 9, 20)[axis] and only.voxels == 5 * 9 * 20
    assert [s["label"] for s in result.skipped] == [6]
    jittered = ev.evaluate(session, ref, "box", labels=[4], axis=axis, jitter=2, seed=3)
    assert jittered.labels[0].dice < 1.0
    assert jittered.to_json()["labels"]["4"]["dice"] == jittered.labels[0].dice

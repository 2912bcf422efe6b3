"""``napari-medsam segment``: prompt-file validation, the box conventions, real segmentation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from fakes import box_fill_model
from helpers import PROJECT_ROOT, case_dir, dice

from napari_medsam._reader import napari_get_reader
from napari_medsam.cli import main
from napari_medsam.io import read_volume
from napari_medsam.io.intensity import auto_mapping
from napari_medsam.segmentation import SegmentationSession, SliceRef
from napari_medsam.segmentation.prompts_file import (
    PromptFileError,
    apply_prompts,
    parse_prompts,
)

HIPPO = case_dir("msd_hippocampus_mr") / "hippocampus_003_image.nii.gz"  # (35, 52, 34)
MR = case_dir("totalseg_mr_abdomen_sm")  # (20, 91, 117)
LIVER, KIDNEY_RIGHT = 5, 2


def _write(tmp_path, data, name="prompts.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _obj(**fields):
    base = {"label": 1, "name": "thing", "slice": 10, "box": [5, 5, 20, 20]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


# (prompt file content, what the message must contain)
INVALID = {
    "bad_json": ('{"objects": [ {"label": 1,, }]}', ["not valid JSON", "line 1"]),
    "not_an_object": ([1, 2], ["JSON object"]),
    "no_objects_key": ({"things": []}, ["unknown top-level key 'things'"]),
    "empty_objects": ({"objects": []}, ["empty"]),
    "unknown_key": ({"objects": [_obj(colour="red")]},
                    ["objects[0] (label 1 \"thing\")", "'colour'", "unknown key"]),
    "label_zero": ({"objects": [_obj(label=0)]}, ["objects[0]", "'label'", ">= 1"]),
    "label_negative": ({"objects": [_obj(label=-3)]}, ["objects[0]", "'label'", ">= 1"]),
    "label_string": ({"objects": [_obj(label="1")]}, ["objects[0]", "'label'", "whole number"]),
    "label_missing": ({"objects": [_obj(label=...)]}, ["objects[0]", "'label'", "missing"]),
    "duplicate_label": ({"objects": [_obj(), _obj(name="other")]},
                        ["objects[1] (label 1 \"other\")", "'label'", "duplicate",
                         "objects[0]"]),
    "slice_out_of_range": ({"objects": [_obj(slice=35)]},
                           ["objects[0]", "'slice'", "0..34"]),
    "slice_float": ({"objects": [_obj(slice=3.5)]}, ["'slice'", "whole number"]),
    "axis_3": ({"objects": [_obj(axis=3)]}, ["'axis'", "0, 1 or 2"]),
    "box_outside": ({"objects": [_obj(box=[5, 5, 52, 20])]},
                    ["objects[0]", "'box'", "row_max 52", "rows 0..51"]),
    "box_outside_axis2": ({"objects": [_obj(axis=2, box=[0, 0, 10, 60])]},
                          ["'box'", "col_max 60", "columns 0..51 on axis 2"]),
    "box_zero_size": ({"objects": [_obj(box=[5, 7, 20, 7])]}, ["'box'", "zero size"]),
    "box_inverted": ({"objects": [_obj(box=[20, 5, 5, 20])]}, ["'box'", "inverted"]),
    "box_three_numbers": ({"objects": [_obj(box=[1, 2, 3])]}, ["'box'", "4 numbers"]),
    "box_strings": ({"objects": [_obj(box=["a", 2, 3, 4])]}, ["'box'", "row_min"]),
    "no_box_no_positive": ({"objects": [_obj(box=..., points=[[10, 10, 0]])]},
                           ["'points'", "box or at least one positive point"]),
    "nothing_at_all": ({"objects": [_obj(box=...)]}, ["'box'", "box or at least one"]),
    "point_outside": ({"objects": [_obj(points=[[10, 60, 1]])]},
                      ["'points'", "point 0 column 60", "columns 0..33"]),
    "point_bad_sign": ({"objects": [_obj(points=[[10, 10, 2]])]}, ["'points'", "sign"]),
    "point_two_numbers": ({"objects": [_obj(points=[[10, 10]])]}, ["'points'", "[row, col, sign]"]),
    "propagate_string": ({"objects": [_obj(propagate="yes")]}, ["'propagate'", "true or false"]),
    "range_without_slice": ({"objects": [_obj(slice_range=[12, 20])]},
                            ["'slice_range'", "does not contain"]),
    "range_outside": ({"objects": [_obj(slice_range=[0, 40])]}, ["'slice_range'", "0..34"]),
    "name_number": ({"objects": [_obj(name=7)]}, ["'name'", "string"]),
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_prompt_file_is_exit_2_and_writes_nothing(kind, tmp_path, capsys):
    content, expected = INVALID[kind]
    prompts = _write(tmp_path, content)
    out = tmp_path / "labels.nii.gz"
    code = main(["segment", str(HIPPO), "--prompts", str(prompts), "--out", str(out),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("napari-medsam segment: error: ")
    assert str(prompts) in err
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [prompts]  # no temporary or sidecar files either


def test_invalid_prompts_leave_an_existing_output_untouched(tmp_path):
    out = tmp_path / "labels.nrrd"
    out.write_bytes(b"previous result")
    prompts = _write(tmp_path, {"objects": [_obj(box=[0, 0, 99, 10])]})
    result = subprocess.run([sys.executable, "-m", "napari_medsam.cli", "segment", str(HIPPO),
                             "--prompts", str(prompts), "--out", str(out)],
                            capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 2
    assert "objects[0] (label 1 \"thing\"), field 'box'" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == b"previous result"


def test_missing_prompt_file_and_bad_output_are_usage_errors(tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(HIPPO), "--prompts", str(tmp_path / "nope.json"),
                 "--out", str(out)]) == 2
    assert "no such prompt file" in capsys.readouterr().err
    prompts = _write(tmp_path, {"objects": [_obj()]})
    assert main(["segment", str(HIPPO), "--prompts", str(prompts),
                 "--out", str(tmp_path / "labels.png")]) == 2
    assert ".nii.gz" in capsys.readouterr().err
    assert main(["segment", str(HIPPO), "--prompts", str(prompts),
                 "--out", str(tmp_path / "missing" / "labels.nii.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_parse_converts_rows_and_columns_to_the_session_box():
    (p,) = parse_prompts({"objects": [{"label": 3, "slice": 2, "axis": 1,
                                       "box": [1, 2, 10, 20.0],
                                       "points": [[4, 5, 1], [6, 7, 0]]}]}, (12, 30, 40))
    assert p.box == (1, 2, 10, 20)
    assert p.session_box == (2, 1, 20, 10)  # (x_min, y_min, x_max, y_max), x = column
    assert p.positives == [(5, 4)] and p.negatives == [(7, 6)]
    assert p.mode == "2d" and p.title == "objects[0] (label 3)"
    with pytest.raises(PromptFileError) as info:
        parse_prompts({"objects": [{"label": 3, "slice": 2, "axis": 1, "box": [1, 2, 10, 40]}]},
                      (12, 30, 40))
    assert info.value.index == 0 and info.value.field == "box"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_box_rows_and_columns_land_on_the_right_voxels(axis):
    volume = np.random.default_rng(0).normal(size=(12, 30, 40)).astype(np.float32)
    session = SegmentationSession(box_fill_model(), volume, auto_mapping(volume, "MR"))
    prompts = parse_prompts({"objects": [
        {"label": 4, "axis": axis, "slice": 5, "box": [2, 3, 8, 9]},
        {"label": 7, "axis": axis, "slice": 5, "box": [6, 6, 10, 11]},  # overlaps label 4
    ]}, volume.shape)
    labels, outcomes = apply_prompts(session, prompts)
    expected = np.zeros(volume.shape, np.uint32)
    index: list = [slice(None)] * 3
    index[axis] = 5
    plane = expected[tuple(index)]  # a view: rows and columns are the other two axes
    plane[6:11, 6:12] = 7
    plane[2:9, 3:10] = 4  # keep rule: the earlier object keeps the overlap
    np.testing.assert_array_equal(labels, expected)
    assert outcomes[0].voxels == 7 * 7 and outcomes[1].kept == 3 * 4
    again, _ = apply_prompts(session, prompts, overwrite=True)
    assert int((again == 7).sum()) == 5 * 6


@pytest.mark.slow
def test_segment_real_mr_geometry_reader_and_dice(litemedsam, tmp_path, capsys):
    image = read_volume(MR / "image.nii.gz")
    reference = read_volume(MR / "label.nii.gz").array
    liver_box = [16, 11, 73, 61]  # tight box of the liver on slice 19 (rows, columns)
    ys, xs = np.nonzero(reference[19] == LIVER)
    assert liver_box == [ys.min(), xs.min(), ys.max(), xs.max()]
    prompts = _write(tmp_path, {"objects": [
        {"label": LIVER, "name": "liver", "slice": 19, "box": liver_box},
        {"label": KIDNEY_RIGHT, "name": "kidney_right", "slice": 5, "box": [53, 28, 66, 43],
         "propagate": True, "slice_range": [4, 6]},
    ]})
    out = tmp_path / "seg.nii.gz"
    code = main(["segment", str(MR / "image.nii.gz"), "--prompts", str(prompts), "--out",
                 str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[1/2] objects[0] (label 5 \"liver\")" in captured.err
    assert "[2/2] objects[1]" in captured.err and "propagate_range" in captured.err
    assert f"wrote {out}" in captured.out

    # The exact geometry of the image, in SimpleITK.
    written = sitk.ReadImage(str(out))
    assert written.GetSpacing() == image.spacing
    assert written.GetOrigin() == image.origin
    assert written.GetDirection() == image.direction
    labels = sitk.GetArrayFromImage(written)
    assert labels.shape == image.shape
    assert set(np.unique(labels)) == {0, LIVER, KIDNEY_RIGHT}

    # Real objects: the liver on its slice and the kidney over its 3 slices.
    assert dice(labels[19] == LIVER, reference[19] == LIVER) > 0.8
    assert (labels == LIVER).sum() == (labels[19] == LIVER).sum()  # 2D object: one slice
    kidney = labels == KIDNEY_RIGHT
    assert set(np.nonzero(kidney.any(axis=(1, 2)))[0]) == {4, 5, 6}
    assert dice(kidney[4:7], reference[4:7] == KIDNEY_RIGHT) > 0.75

    # Same core as the widget: session.predict_prompts with the converted box.
    session = SegmentationSession(litemedsam, image.array,
                                  auto_mapping(image.array, image.modality))
    widget_mask = session.predict_prompts(SliceRef(0, 19), [(11, 16, 61, 73)])
    np.testing.assert_array_equal(labels[19] == LIVER, widget_mask)

    # napari's reader (the plugin) opens it as labels on the image's scale and translate.
    ((data, kwargs, kind),) = napari_get_reader(str(out))(str(out))
    ((_, image_kwargs, image_kind),) = napari_get_reader(str(MR / "image.nii.gz"))(
        str(MR / "image.nii.gz"))
    assert kind == "labels" and image_kind == "image"
    assert kwargs["scale"] == image_kwargs["scale"]
    assert kwargs["translate"] == image_kwargs["translate"]
    np.testing.assert_array_equal(data, labels)
    assert read_volume(out).label_names == {LIVER: "liver", KIDNEY_RIGHT: "kidney_right"}


def test_3d_box_covers_its_slice_range():
    volume = np.random.default_rng(1).normal(size=(12, 30, 40)).astype(np.float32)
    session = SegmentationSession(box_fill_model(), volume, auto_mapping(volume, "MR"))
    prompts = parse_prompts({"objects": [{"label": 2, "axis": 2, "slice": 20,
                                          "box": [3, 4, 8, 10], "slice_range": [18, 22]}]},
                            volume.shape)
    labels, (outcome,) = apply_prompts(session, prompts)
    assert outcome.slices == [18, 19, 20, 21, 22] and prompts[0].mode == "box_range"
    assert set(np.nonzero((labels == 2).any(axis=(0, 1)))[0]) == {18, 19, 20, 21, 22}
    assert int((labels[:, :, 20] == 2).sum()) == 6 * 7  # rows 3..8 (axis 0), columns 4..10


def test_the_documented_example_fits_the_sample_ct():
    from napari_medsam._sample_data import sample_path
    from napari_medsam.segmentation.prompts_file import load_prompts

    example = PROJECT_ROOT / "docs" / "examples" / "sample_ct_prompts.json"
    prompts = load_prompts(example, read_volume(sample_path("ct")).shape)
    assert {p.mode for p in prompts} == {"2d", "propagate", "propagate_range", "box_range"}
    assert any(p.axis == 1 for p in prompts) and any(p.points for p in prompts)


def test_segment_a_dicom_folder_into_nrrd(litemedsam, tmp_path, capsys):
    folder = case_dir("dcmqi_ct_3slice")
    image = read_volume(folder / "dicom")
    spine = read_volume(folder / "label_liver_spine.nrrd").array[1] == 2
    ys, xs = np.nonzero(spine)
    prompts = _write(tmp_path, {"objects": [
        {"label": 2, "slice": 1, "box": [int(ys.min()), int(xs.min()), int(ys.max()),
                                         int(xs.max())]}]})
    out = tmp_path / "spine.nrrd"
    assert main(["segment", str(folder / "dicom"), "--prompts", str(prompts), "--out", str(out),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    written = sitk.ReadImage(str(out))
    assert written.GetSpacing() == image.spacing and written.GetOrigin() == image.origin
    assert written.GetDirection() == image.direction
    labels = sitk.GetArrayFromImage(written)
    assert dice(labels[1] == 2, spine) > 0.8 and not labels[[0, 2]].any()
    assert not (tmp_path / "spine.label.txt").exists()  # no names, no sidecar

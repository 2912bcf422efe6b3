"""ITK-SNAP label description sidecar (``<stem>.label.txt``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import case_dir, label_names

from napari_medsam.io import read_label_descriptions, read_volume, write_labels
from napari_medsam.io.label_descriptions import (
    label_description_path,
    read_label_table,
    write_label_descriptions,
)

ROW = re.compile(r'^\s*\d+\s+\d+\s+\d+\s+\d+\s+[0-9.]+\s+[01]\s+[01]\s+".*"$')


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_label_names_round_trip_through_sidecar(tmp_path, ext):
    image = read_volume(case_dir("totalseg_ct_abdomen_pelvis") / "image.nii.gz")
    mask = read_volume(case_dir("totalseg_ct_abdomen_pelvis") / "label.nii.gz").array
    names = label_names("totalseg_ct_abdomen_pelvis")
    out = write_labels(mask, tmp_path / f"organs{ext}", image, label_names=names)
    sidecar = tmp_path / "organs.label.txt"
    assert sidecar.is_file()
    assert label_description_path(out) == sidecar
    assert read_label_descriptions(sidecar) == names
    assert read_label_descriptions(out) == names  # the label map's path works too
    assert read_volume(out).label_names == names
    assert read_volume(out).label_names[5] == "liver"


def test_sidecar_is_itk_snap_format(tmp_path):
    path = write_label_descriptions(tmp_path / "x.label.txt", {1: "brain tumor", 3: "heart"})
    lines = path.read_text().splitlines()
    assert any("IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL" in ln for ln in lines)
    rows = [ln for ln in lines if not ln.startswith("#")]
    assert all(ROW.match(ln) for ln in rows), rows
    assert rows[0].split()[0] == "0" and rows[0].endswith('"Clear Label"')
    assert rows[1].split()[0] == "1" and rows[1].endswith('"brain tumor"')


def test_colors_and_awkward_names(tmp_path):
    names = {1: 'left "kidney"', 2: "  two   spaces ", 300: "id above 255"}
    colors = {1: (1.0, 0.5, 0.0, 1.0), 2: (10, 20, 30), 300: (0.0, 0.0, 1.0)}
    path = write_label_descriptions(tmp_path / "c.label.txt", names, colors)
    table = read_label_table(path)
    assert table[1].name == "left 'kidney'"
    assert table[1].color == (255, 128, 0)
    assert table[2].name == "two spaces"
    assert table[2].color == (10, 20, 30)
    assert table[300].color == (0, 0, 255)
    assert set(table) == {1, 2, 300}


def test_reads_a_file_as_itk_snap_writes_it(tmp_path, caplog):
    path = tmp_path / "snap.label.txt"
    path.write_text(
        "################################################\n"
        "# ITK-SnAP Label Description File\n"
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL\n"
        "################################################\n"
        '    0     0    0    0        0  0  0    "Clear Label"\n'
        '    1   255    0    0        1  1  1    "liver"\n'
        '    2     0  255    0     0.75  1  0    "spine"\n'
        "    this line is broken\n"
        '    3     0    0  255        1  0  1    "heart"\n'
    )
    table = read_label_table(path)
    assert {k: v.name for k, v in table.items()} == {1: "liver", 2: "spine", 3: "heart"}
    assert table[2].alpha == 0.75 and not table[2].mesh_visible
    assert not table[3].visible
    assert "not an ITK-SNAP label row" in caplog.text


def test_no_sidecar_means_no_names_and_names_need_not_cover_all_labels(tmp_path):
    image = read_volume(case_dir("dcmqi_ct_3slice") / "dicom")
    mask = read_volume(case_dir("dcmqi_ct_3slice") / "label_liver_spine.nrrd").array
    plain = write_labels(mask, tmp_path / "plain.nrrd", image)
    assert not (tmp_path / "plain.label.txt").exists()
    assert read_volume(plain).label_names == {}
    named = write_labels(mask, tmp_path / "named.nrrd", image, label_names={1: "liver"})
    assert read_volume(named).label_names == {1: "liver"}
    np.testing.assert_array_equal(read_volume(named).array, mask)

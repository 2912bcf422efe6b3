"""Reading the real scans: formats, DICOM series handling, modality, label-map guess."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import case_dir

from napari_medsam.io import Volume, is_dicom_file, read_volume
from napari_medsam.io.volume import looks_like_label_map

# (case, file or folder, modality, is label map)
ALL_FILES = [
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "CT", False),
    ("totalseg_ct_abdomen_pelvis", "label.nii.gz", "unknown", True),
    ("totalseg_ct_abdomen_sm", "image.nii.gz", "CT", False),
    ("totalseg_ct_abdomen_sm", "label.nii.gz", "unknown", True),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "MR", False),
    ("totalseg_mr_abdomen_sm", "label.nii.gz", "unknown", True),
    ("totalseg_ct_dicom", "dicom", "CT", False),
    ("totalseg_ct_dicom", "label.nii.gz", "unknown", True),
    ("pyradiomics_brain1_mr", "image.nrrd", "MR", False),
    ("pyradiomics_brain1_mr", "label.nrrd", "unknown", True),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "MR", False),
    ("msd_hippocampus_mr", "hippocampus_003_label.nii.gz", "unknown", True),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", "MR", False),
    ("msd_hippocampus_mr", "hippocampus_004_label.nii.gz", "unknown", True),
    ("dcmqi_ct_3slice", "dicom", "CT", False),
    ("dcmqi_ct_3slice", "label_liver_spine.nrrd", "unknown", True),
    ("dcmqi_ct_3slice", "label_heart.nrrd", "unknown", True),
]


def _sitk_read(path):
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize(("case", "name", "modality", "is_label"), ALL_FILES)
def test_read_every_real_file(case, name, modality, is_label):
    path = case_dir(case) / name
    volume = read_volume(path)
    reference = _sitk_read(path)
    assert volume.array.shape == reference.GetSize()[::-1]
    np.testing.assert_array_equal(volume.array, sitk.GetArrayViewFromImage(reference))
    assert volume.spacing == pytest.approx(reference.GetSpacing(), abs=1e-9)
    assert volume.origin == pytest.approx(reference.GetOrigin(), abs=1e-9)
    assert volume.direction == pytest.approx(reference.GetDirection(), abs=1e-9)
    assert volume.scale == tuple(reversed(volume.spacing))
    assert volume.translate == tuple(reversed(volume.origin))
    assert volume.modality == modality
    assert volume.is_label_map is is_label
    assert volume.path == str(path)


def test_dicom_slices_are_sorted_by_position_not_file_name():
    folder = case_dir("totalseg_ct_dicom") / "dicom"
    volume = read_volume(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    slices = [sitk.ReadImage(str(f)) for f in files]
    z = np.array([s.GetOrigin()[2] for s in slices])
    by_position = np.argsort(z)
    # The file names run opposite to the slice positions in this series ...
    assert not np.array_equal(by_position, np.arange(len(files)))
    # ... and the volume follows the positions: slice k is the k-th lowest file.
    for k, i in enumerate(by_position):
        np.testing.assert_array_equal(volume.array[k], sitk.GetArrayFromImage(slices[i])[0])
    assert volume.origin[2] == pytest.approx(z.min())
    assert volume.spacing[2] == pytest.approx(2.0)
    by_name = np.stack([sitk.GetArrayFromImage(s)[0] for s in slices])
    assert not np.array_equal(volume.array, by_name)


def test_one_dicom_file_opens_its_whole_series():
    folder = case_dir("dcmqi_ct_3slice") / "dicom"
    volume = read_volume(folder / "02.dcm")
    np.testing.assert_array_equal(volume.array, read_volume(folder).array)
    assert volume.series_id
    # Files without an extension are recognised by the DICM marker.
    extensionless = sorted((case_dir("totalseg_ct_dicom") / "dicom").iterdir())[5]
    assert not extensionless.name.lower().endswith(".dcm")
    assert is_dicom_file(extensionless)
    assert read_volume(extensionless).shape == (20, 512, 512)


def test_folder_with_two_series_opens_the_largest(tmp_path, caplog):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in (case_dir("totalseg_ct_dicom") / "dicom").iterdir():
        shutil.copy(f, mixed / f.name)
    for f in (case_dir("dcmqi_ct_3slice") / "dicom").iterdir():
        shutil.copy(f, mixed / f"dcmqi_{f.name}")
    small_ids = list(
        sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(case_dir("dcmqi_ct_3slice") / "dicom"))
    )
    with caplog.at_level(logging.WARNING, logger="napari_medsam.io.read"):
        volume = read_volume(mixed)
    assert volume.shape == (20, 512, 512)
    assert volume.other_series == small_ids
    assert small_ids[0] in caplog.text
    assert "2 DICOM series" in caplog.text
    # One file of the smaller series opens that series instead.
    small = read_volume(mixed / "dcmqi_01.dcm")
    assert small.shape == (3, 512, 512)
    assert small.series_id == small_ids[0]


def test_metadata_survives_json_and_rebuilds_the_volume():
    volume = read_volume(case_dir("pyradiomics_brain1_mr") / "image.nrrd")
    volume.label_names = {1: "brain tumor"}
    meta = json.loads(json.dumps(volume.metadata()))
    assert set(meta) >= {"spacing", "origin", "direction", "path", "modality", "shape"}
    rebuilt = Volume.from_metadata(volume.array, meta)
    assert rebuilt.spacing == volume.spacing
    assert rebuilt.origin == volume.origin
    assert rebuilt.direction == volume.direction
    assert rebuilt.modality == "MR"
    assert rebuilt.label_names == {1: "brain tumor"}  # int keys again after JSON


def test_to_sitk_and_affine_match_simpleitk_physical_points():
    # pyradiomics: direction has a -1 on y, so the geometry is not trivial.
    path = case_dir("pyradiomics_brain1_mr") / "image.nrrd"
    volume = read_volume(path)
    reference = sitk.ReadImage(str(path))
    image = volume.to_sitk()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()
    for zyx in [(0, 0, 0), (24, 255, 255), (12, 100, 30)]:
        expected = reference.TransformIndexToPhysicalPoint(tuple(int(i) for i in zyx[::-1]))
        got = volume.affine @ np.array([*zyx, 1.0])
        np.testing.assert_allclose(got[:3][::-1], expected, atol=1e-9)
    with pytest.raises(ValueError, match="does not match"):
        volume.to_sitk(np.zeros((2, 2, 2)))


def test_label_map_guess_uses_content_not_only_names():
    # Every integer reference mask is recognised without its file name ...
    for case, name in [
        ("totalseg_ct_abdomen_pelvis", "label.nii.gz"),
        ("totalseg_mr_abdomen_sm", "label.nii.gz"),
        ("pyradiomics_brain1_mr", "label.nrrd"),
        ("dcmqi_ct_3slice", "label_heart.nrrd"),
        ("msd_hippocampus_mr", "hippocampus_004_label.nii.gz"),
    ]:
        assert looks_like_label_map(read_volume(case_dir(case) / name).array)
    # ... while this integer MRI with only 832 grey levels (<= 1000) is not a label map.
    mr = read_volume(case_dir("totalseg_mr_abdomen_sm") / "image.nii.gz").array
    assert mr.dtype.kind == "i" and np.unique(mr).size <= 1000
    assert not looks_like_label_map(mr)
    assert not looks_like_label_map(np.abs(mr))  # even without its few negative values
    # A float mask is a label map only by its name.
    float_mask = read_volume(case_dir("msd_hippocampus_mr") / "hippocampus_003_label.nii.gz")
    assert float_mask.array.dtype == np.float32
    assert not looks_like_label_map(float_mask.array)
    assert looks_like_label_map(float_mask.array, "hippocampus_003_label.nii.gz")
    assert not looks_like_label_map(float_mask.array, "totalseg_ct.nii.gz")


def test_4d_file_with_one_time_point_opens_as_3d(tmp_path):
    image = sitk.ReadImage(str(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz"))
    four_d = sitk.JoinSeries([image])
    assert four_d.GetDimension() == 4
    path = tmp_path / "one_timepoint.nii.gz"
    sitk.WriteImage(four_d, str(path))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))
    assert volume.spacing == pytest.approx(image.GetSpacing())


def test_empty_label_map_opens(tmp_path):
    # An all-zero segmentation (nothing drawn yet) is valid, unlike a constant scan.
    label = sitk.ReadImage(str(case_dir("totalseg_ct_abdomen_sm") / "label.nii.gz"))
    empty = sitk.Image(label.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(label)
    path = tmp_path / "liver_seg.nii.gz"
    sitk.WriteImage(empty, str(path))
    volume = read_volume(path)
    assert volume.is_label_map
    assert not volume.array.any()


def test_partially_nan_scan_opens(tmp_path):
    # NRRD keeps NaN (the NIfTI library inside SimpleITK turns NaN into 0 on reading).
    image = sitk.Cast(
        sitk.ReadImage(str(case_dir("totalseg_mr_abdomen_sm") / "image.nii.gz")), sitk.sitkFloat32
    )
    array = sitk.GetArrayFromImage(image)
    array[:2] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    path = tmp_path / "some_nan.nrrd"
    sitk.WriteImage(broken, str(path))
    volume = read_volume(path)
    assert np.isnan(volume.array[:2]).all()
    assert volume.modality == "MR"

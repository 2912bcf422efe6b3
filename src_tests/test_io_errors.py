"""Broken input gives a VolumeReadError that names the file and the problem.

The broken files are made in tmp_path from the real scans.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import case_dir

from napari_medsam.io import VolumeReadError, read_volume

CT_NII = ("totalseg_ct_abdomen_sm", "image.nii.gz")
MR_NRRD = ("pyradiomics_brain1_mr", "image.nrrd")


def _real(case_file: tuple[str, str]) -> Path:
    return case_dir(case_file[0]) / case_file[1]


def _real_image(case_file: tuple[str, str]) -> sitk.Image:
    return sitk.ReadImage(str(_real(case_file)))


def _expect_error(path: Path, *words: str) -> str:
    with pytest.raises(VolumeReadError) as info:
        read_volume(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_missing_path(tmp_path):
    _expect_error(tmp_path / "nowhere" / "scan.nii.gz", "does not exist")


@pytest.mark.parametrize("fraction", [0.5, 0.97, 0.002])
def test_truncated_nii_gz(tmp_path, fraction):
    # SimpleITK itself reads such files "successfully", zero-filling the missing part.
    path = _truncate(_real(CT_NII), tmp_path / "cut.nii.gz", fraction)
    _expect_error(path, "truncated")


def test_truncated_uncompressed_nii(tmp_path):
    full = tmp_path / "full.nii"
    sitk.WriteImage(_real_image(CT_NII), str(full))
    path = _truncate(full, tmp_path / "cut.nii", 0.6)
    _expect_error(path, "truncated", "header promises")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_nrrd_and_mha(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sitk.WriteImage(_real_image(MR_NRRD), str(full), True)
    path = _truncate(full, tmp_path / f"cut{suffix}", 0.5)
    _expect_error(path, "truncated or damaged")


@pytest.mark.parametrize("name", ["notes.nii", "notes.nii.gz", "notes.nrrd"])
def test_text_file_renamed_as_image(tmp_path, name):
    path = tmp_path / name
    path.write_text((case_dir("totalseg_ct_abdomen_sm") / "labels.json").read_text())
    message = _expect_error(path)
    if name.endswith((".nii", ".nii.gz")):
        assert "is a text file" in message
    else:
        assert "could not be read" in message or "text file" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    _expect_error(path, "empty file")


def test_empty_folder(tmp_path):
    folder = tmp_path / "empty_dicom"
    folder.mkdir()
    _expect_error(folder, "empty folder")


def test_folder_without_dicom_files(tmp_path):
    folder = tmp_path / "not_dicom"
    folder.mkdir()
    for name in ("image.nii.gz", "label.nii.gz", "labels.json"):
        shutil.copy(case_dir("totalseg_ct_abdomen_sm") / name, folder / name)
    _expect_error(folder, "contains no DICOM files", "image.nii.gz", "open that file instead")


def test_folder_whose_subfolders_hold_the_dicom(tmp_path):
    patient = tmp_path / "patient"
    shutil.copytree(case_dir("dcmqi_ct_3slice") / "dicom", patient / "series_2")
    _expect_error(patient, "contains no DICOM files", "series_2")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_2d_image(tmp_path, suffix):
    image = _real_image(CT_NII)
    one_slice = image[:, :, 15]  # a real axial slice, as a 2D image
    assert one_slice.GetDimension() == 2
    path = tmp_path / f"slice{suffix}"
    sitk.WriteImage(one_slice, str(path))
    _expect_error(path, "is 2D", "napari-medsam needs a 3D volume")


def test_single_slice_3d_image_is_2d(tmp_path):
    image = _real_image(CT_NII)
    slab = image[:, :, 15:16]
    assert slab.GetDimension() == 3 and slab.GetSize()[2] == 1
    path = tmp_path / "slab.nii.gz"
    sitk.WriteImage(slab, str(path))
    _expect_error(path, "is 2D")


def test_single_dicom_slice_folder_is_2d(tmp_path):
    folder = tmp_path / "one_slice"
    folder.mkdir()
    shutil.copy(case_dir("dcmqi_ct_3slice") / "dicom" / "02.dcm", folder / "02.dcm")
    _expect_error(folder, "is 2D", "napari-medsam needs a 3D volume")


def test_4d_image(tmp_path):
    image = _real_image(CT_NII)
    series = sitk.JoinSeries([image, image])
    assert series.GetDimension() == 4
    path = tmp_path / "timeseries.nii.gz"
    sitk.WriteImage(series, str(path))
    _expect_error(path, "is 4D", "single 3D volume")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii.gz"])
def test_multichannel_image(tmp_path, suffix):
    image = _real_image(MR_NRRD)
    rgb = sitk.Compose(image, image, image)
    path = tmp_path / f"vector{suffix}"
    sitk.WriteImage(rgb, str(path))
    message = _expect_error(path)
    assert "3 values per voxel" in message or "is 4D" in message


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_all_nan_image(tmp_path, suffix):
    image = sitk.Cast(_real_image(MR_NRRD), sitk.sitkFloat32)
    nan = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, np.nan, "f4"))
    nan.CopyInformation(image)
    path = tmp_path / f"all_nan{suffix}"
    sitk.WriteImage(nan, str(path))
    _expect_error(path, "only NaN")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_constant_image(tmp_path, suffix):
    image = _real_image(CT_NII)
    constant = sitk.GetImageFromArray(
        np.full(sitk.GetArrayViewFromImage(image).shape, -1000, np.int16)
    )
    constant.CopyInformation(image)
    path = tmp_path / f"flat{suffix}"
    sitk.WriteImage(constant, str(path))
    _expect_error(path, "is constant", "-1000")


def test_not_an_image_with_unknown_extension(tmp_path):
    path = tmp_path / "scan.xyz"
    shutil.copy(case_dir("totalseg_ct_abdomen_sm") / "labels.json", path)
    _expect_error(path, "text file")

"""The napari reader/writer functions without a viewer."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import case_dir, label_names

from napari_medsam._reader import napari_get_reader
from napari_medsam._sample_data import sample_label_path, sample_path
from napari_medsam._writer import write_labels as napari_write_labels
from napari_medsam.io import VolumeReadError, read_volume


def test_reader_accepts_volumes_and_dicom_folders():
    assert callable(napari_get_reader(str(sample_path("ct"))))
    assert callable(napari_get_reader(str(case_dir("pyradiomics_brain1_mr") / "label.nrrd")))
    assert callable(napari_get_reader(str(case_dir("totalseg_ct_dicom") / "dicom")))
    one_file = sorted((case_dir("totalseg_ct_dicom") / "dicom").iterdir())[0]
    assert callable(napari_get_reader(str(one_file)))  # no extension, DICM marker
    pair = [str(sample_path("ct")), str(sample_label_path("ct"))]
    assert callable(napari_get_reader(pair))


def test_reader_declines_other_things(tmp_path):
    assert napari_get_reader(str(case_dir("totalseg_ct_abdomen_sm") / "labels.json")) is None
    assert napari_get_reader(str(case_dir("totalseg_ct_abdomen_sm"))) is None  # no DICOM
    empty = tmp_path / "empty"
    empty.mkdir()
    assert napari_get_reader(str(empty)) is None
    assert napari_get_reader([]) is None
    mixed = [str(sample_path("ct")), str(case_dir("totalseg_ct_abdomen_sm") / "labels.json")]
    assert napari_get_reader(mixed) is None


def test_reader_layer_data_for_image_and_labels():
    reader = napari_get_reader([str(sample_path("ct")), str(sample_label_path("ct"))])
    (image, image_kwargs, image_type), (labels, label_kwargs, label_type) = reader(
        [str(sample_path("ct")), str(sample_label_path("ct"))]
    )
    volume = read_volume(sample_path("ct"))
    assert image_type == "image" and label_type == "labels"
    assert image_kwargs["scale"] == volume.display_scale
    assert image_kwargs["translate"] == volume.display_translate
    assert image_kwargs["metadata"]["spacing"] == list(volume.spacing)
    assert image_kwargs["contrast_limits"] == [-160.0, 240.0]
    assert image_kwargs["name"] == "image"
    assert labels.dtype.kind in "iu"
    assert label_kwargs["scale"] == volume.display_scale
    np.testing.assert_array_equal(image, volume.array)


def test_reader_turns_float_label_map_into_integers():
    path = case_dir("msd_hippocampus_mr") / "hippocampus_003_label.nii.gz"
    ((data, kwargs, layer_type),) = napari_get_reader(str(path))(str(path))
    assert layer_type == "labels"
    assert data.dtype == np.uint8
    assert set(np.unique(data)) == {0, 1, 2}
    assert kwargs["name"] == "hippocampus_003_label"


def test_reader_raises_the_clear_message(tmp_path):
    path = tmp_path / "cut.nii.gz"
    data = sample_path("ct").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    reader = napari_get_reader(str(path))
    with pytest.raises(VolumeReadError, match="truncated"):
        reader(str(path))


def test_writer_uses_layer_metadata_geometry(tmp_path):
    image = read_volume(case_dir("totalseg_ct_dicom") / "dicom")
    label_image = sitk.ReadImage(str(case_dir("totalseg_ct_dicom") / "label.nii.gz"))
    labels = sitk.GetArrayFromImage(
        sitk.Resample(label_image, image.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor)
    )
    meta = image.metadata()
    meta["label_names"] = label_names("totalseg_ct_dicom")
    attributes = {"name": "organs", "metadata": meta, "scale": (9, 9, 9), "translate": (0, 0, 0)}
    written = napari_write_labels(str(tmp_path / "organs.nii.gz"), labels, attributes)
    assert written == [str(tmp_path / "organs.nii.gz")]
    back = read_volume(written[0])
    np.testing.assert_allclose(back.origin, image.origin, atol=1e-6)
    np.testing.assert_allclose(back.spacing, image.spacing, atol=1e-6)
    assert back.label_names[5] == "liver"
    np.testing.assert_array_equal(back.array, labels)


def test_writer_without_metadata_falls_back_to_scale_and_translate(tmp_path, caplog):
    volume = read_volume(case_dir("totalseg_mr_abdomen_sm") / "label.nii.gz")
    attributes = {
        "name": "drawn",
        "metadata": {},
        "scale": volume.scale,
        "translate": volume.translate,
    }
    with caplog.at_level(logging.WARNING, logger="napari_medsam._writer"):
        written = napari_write_labels(str(tmp_path / "drawn.mha"), volume.array, attributes)
    assert "no scan geometry" in caplog.text
    back = read_volume(written[0])
    np.testing.assert_allclose(back.spacing, volume.spacing)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-6)
    assert back.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_reader_on_a_copied_dicom_folder(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(case_dir("dcmqi_ct_3slice") / "dicom", folder)
    ((data, kwargs, layer_type),) = napari_get_reader(str(folder))(str(folder))
    assert layer_type == "image"
    assert data.shape == (3, 512, 512)
    assert kwargs["metadata"]["modality"] == "CT"
    assert kwargs["name"] == "series"

"""napari-level tests: a real viewer (under Xvfb) opening and saving through the plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import case_dir
from napari.layers import Image, Labels
from npe2 import PluginManifest

from napari_medsam._sample_data import sample_label_path, sample_path
from napari_medsam.io import read_volume

PLUGIN = "napari-medsam"
MANIFEST = Path(__file__).resolve().parents[1] / "napari_medsam" / "napari.yaml"

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer, npe2pm):
    """A viewer whose plugin manager holds exactly this checkout's napari-medsam manifest.

    ``npe2pm`` (npe2's pytest fixture) isolates plugin discovery, so the test uses the
    manifest in this working tree whether or not the package is pip-installed.
    """
    npe2pm.register(PluginManifest.from_file(MANIFEST))
    return make_napari_viewer()


def _error_text(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts)


def test_open_sample_ct_and_its_labels(viewer):
    volume = read_volume(sample_path("ct"))
    (image,) = viewer.open(str(sample_path("ct")), plugin=PLUGIN)
    assert isinstance(image, Image)
    np.testing.assert_allclose(image.scale, volume.display_scale)
    np.testing.assert_allclose(image.translate, volume.display_translate)
    assert image.metadata["spacing"] == list(volume.spacing)
    assert image.metadata["direction"] == list(volume.direction)
    assert image.metadata["modality"] == "CT"
    assert tuple(image.contrast_limits) == (-160.0, 240.0)

    (labels,) = viewer.open(str(sample_label_path("ct")), plugin=PLUGIN)
    assert isinstance(labels, Labels)
    np.testing.assert_allclose(labels.scale, volume.display_scale)
    np.testing.assert_allclose(labels.translate, volume.display_translate)
    assert len(viewer.layers) == 2


@pytest.mark.parametrize("path", [sample_path("ct"), sample_path("mr"),
                                  case_dir("totalseg_ct_dicom") / "dicom"])
def test_axial_slices_show_anterior_up_and_patient_left_on_the_right(viewer, path):
    """In-plane world coordinates are physical (P, L), whichever way the file stores its
    rows and columns (the sample CT is stored with x and y reversed, the brain MR with y
    reversed); the slice axis keeps the file's order so the slider counts array slices."""
    (image,) = viewer.open(str(path), plugin=PLUGIN)
    if Path(path).is_file():
        itk = sitk.ReadImage(str(path))
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        itk = reader.Execute()
    shape = image.data.shape
    for index in [(0, 0, 0), (shape[0] - 1, shape[1] // 3, shape[2] - 1), (1, shape[1] - 1, 2)]:
        lps = itk.TransformIndexToPhysicalPoint([int(index[2]), int(index[1]), int(index[0])])
        world = image.data_to_world(index)
        np.testing.assert_allclose(world[1:], (lps[1], lps[0]), atol=1e-3)
        assert world[0] == pytest.approx(itk.GetOrigin()[2] + index[0] * itk.GetSpacing()[2])


def test_open_dicom_folder(viewer):
    (image,) = viewer.open(str(case_dir("totalseg_ct_dicom") / "dicom"), plugin=PLUGIN)
    assert isinstance(image, Image)
    assert image.data.shape == (20, 512, 512)
    np.testing.assert_allclose(image.scale, (2.0, 0.9765625, 0.9765625))


def test_truncated_file_gives_clear_error_and_viewer_keeps_working(viewer, tmp_path):
    viewer.open(str(sample_path("mr")), plugin=PLUGIN)
    assert len(viewer.layers) == 1
    broken = tmp_path / "broken_ct.nii.gz"
    data = sample_path("ct").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception) as info:  # napari wraps the plugin's error
        viewer.open(str(broken), plugin=PLUGIN)
    text = _error_text(info.value)
    assert str(broken) in text
    assert "truncated" in text
    # Nothing was added or lost, and the viewer still opens files.
    assert [layer.name for layer in viewer.layers] == ["image"]
    (labels,) = viewer.open(str(sample_label_path("mr")), plugin=PLUGIN)
    assert isinstance(labels, Labels)
    assert len(viewer.layers) == 2
    viewer.add_labels(np.zeros((2, 2, 2), dtype=np.uint8), name="still editable")
    assert len(viewer.layers) == 3


def test_save_labels_layer_with_image_geometry(viewer, tmp_path):
    # pyradiomics MR: its direction has a -1 (y), which scale/translate alone would lose.
    (image,) = viewer.open(str(sample_path("mr")), plugin=PLUGIN)
    volume = read_volume(sample_path("mr"))
    mask = read_volume(sample_label_path("mr")).array
    labels = viewer.add_labels(
        mask.astype(np.int32),
        name="tumour",
        scale=image.scale,
        translate=image.translate,
        metadata={**image.metadata, "label_names": {1: "brain tumor"}},
    )
    target = tmp_path / "tumour.nii.gz"
    written = labels.save(str(target), plugin=PLUGIN)
    assert written == [str(target)]
    on_disk = sitk.ReadImage(str(target))
    np.testing.assert_allclose(on_disk.GetSpacing(), volume.spacing, atol=1e-6)
    np.testing.assert_allclose(on_disk.GetOrigin(), volume.origin, atol=1e-6)
    np.testing.assert_allclose(on_disk.GetDirection(), volume.direction, atol=1e-6)
    assert on_disk.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_disk), mask)
    assert read_volume(target).label_names == {1: "brain tumor"}
    # ... and the saved file opens again as a Labels layer on the image.
    (again,) = viewer.open(str(target), plugin=PLUGIN)
    assert isinstance(again, Labels)
    np.testing.assert_allclose(again.scale, image.scale)


def test_label_colours_and_alpha_survive_saving_and_reopening(viewer, tmp_path):
    """Names survived napari's writer and reader, colours and alpha were reset to defaults."""
    from napari.utils.colormaps import DirectLabelColormap

    (image,) = viewer.open(str(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz"),
                           plugin=PLUGIN)
    (labels,) = viewer.open(str(case_dir("totalseg_ct_abdomen_sm") / "label.nii.gz"),
                            plugin=PLUGIN)
    chosen = {5: (0.9, 0.1, 0.1, 1.0), 2: (0.1, 0.2, 0.9, 0.5), 3: (0.0, 0.8, 0.2, 0.0)}
    shown_before = labels.colormap.map(np.array([1, 6], dtype=np.uint32))
    labels.colormap = DirectLabelColormap(color_dict={
        **{v: tuple(c) for v, c in zip((1, 6), shown_before, strict=True)}, **chosen,
        0: (0, 0, 0, 0), None: (1, 1, 0, 1)})
    labels.metadata = {**labels.metadata, "label_names": {5: "liver", 2: "right kidney"}}
    target = tmp_path / "edited.nii.gz"
    assert labels.save(str(target), plugin=PLUGIN) == [str(target)]

    (again,) = viewer.open(str(target), plugin=PLUGIN)
    assert isinstance(again, Labels)
    values = np.array([5, 2, 3, 1, 6], dtype=np.uint32)
    np.testing.assert_allclose(again.colormap.map(values), labels.colormap.map(values),
                               atol=1 / 255)
    assert read_volume(target).label_names[5] == "liver"
    # a label the sidecar does not list keeps napari's default colour
    plain = viewer.add_labels(np.zeros((2, 2, 2), np.uint8))
    np.testing.assert_allclose(again.colormap.map(np.array([7], np.uint32)),
                               plain.colormap.map(np.array([7], np.uint32)), atol=1e-6)

"""Writing label maps: geometry round trips on every real case, dtypes, atomicity."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import case_dir

from napari_medsam.io import VolumeWriteError, read_volume, write_labels

FORMATS = [".nii.gz", ".nrrd", ".mha"]

# (case, image file or DICOM folder, reference label files merged in order)
CASES = [
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", ["label.nii.gz"]),
    ("totalseg_ct_abdomen_sm", "image.nii.gz", ["label.nii.gz"]),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", ["label.nii.gz"]),
    ("totalseg_ct_dicom", "dicom", ["label.nii.gz"]),  # label flipped in y vs the array
    ("pyradiomics_brain1_mr", "image.nrrd", ["label.nrrd"]),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", ["hippocampus_003_label.nii.gz"]),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", ["hippocampus_004_label.nii.gz"]),
    ("dcmqi_ct_3slice", "dicom", ["label_liver_spine.nrrd", "label_heart.nrrd"]),
]


def _labels_on_image(image: sitk.Image, references: list[sitk.Image]) -> np.ndarray:
    """Reference masks resampled onto the image grid in physical space, then merged."""
    merged = np.zeros(image.GetSize()[::-1], dtype=np.int64)
    for ref in references:
        on_grid = sitk.Resample(
            ref, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, ref.GetPixelID()
        )
        values = sitk.GetArrayFromImage(on_grid)
        merged[values > 0] = values[values > 0]
    return merged


def _expected_at(point, references: list[sitk.Image]) -> int:
    value = 0
    for ref in references:
        idx = ref.TransformPhysicalPointToIndex(point)
        if all(0 <= i < n for i, n in zip(idx, ref.GetSize(), strict=True)):
            v = int(ref[idx])
            value = v if v > 0 else value
    return value


def _case_id(case):
    return f"{case[0]}/{case[1]}"


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_round_trip_keeps_geometry_and_physical_positions(tmp_path, case, ext):
    name, image_name, label_names = case
    image = read_volume(case_dir(name) / image_name)
    references = [sitk.ReadImage(str(case_dir(name) / n)) for n in label_names]
    labels = _labels_on_image(image.to_sitk(), references)
    assert np.count_nonzero(labels) > 100

    out = write_labels(labels, tmp_path / f"labels{ext}", image)
    assert out == tmp_path / f"labels{ext}"
    back = read_volume(out)
    on_disk = sitk.ReadImage(str(out))

    np.testing.assert_allclose(back.spacing, image.spacing, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.origin, image.origin, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.direction, image.direction, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(back.array, labels)
    assert back.is_label_map

    # Labelled voxels of the written file sit at the physical points where the original
    # reference masks have the same label.
    zyx = np.argwhere(labels > 0)
    rng = np.random.default_rng(0)
    for z, y, x in zyx[rng.choice(len(zyx), size=min(200, len(zyx)), replace=False)]:
        point = on_disk.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        assert _expected_at(point, references) == labels[z, y, x]
        image_point = image.to_sitk().TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        np.testing.assert_allclose(point, image_point, atol=1e-4)


def _relabelled(n_ids: int) -> tuple[np.ndarray, object]:
    """The real pelvis CT mask with its labelled voxels renumbered 1..n_ids (cyclically)."""
    image = read_volume(case_dir("totalseg_ct_abdomen_pelvis") / "image.nii.gz")
    mask = read_volume(case_dir("totalseg_ct_abdomen_pelvis") / "label.nii.gz").array
    labels = np.zeros(mask.shape, dtype=np.int64)
    where = np.flatnonzero(mask)
    assert where.size > n_ids
    labels.flat[where] = np.arange(where.size) % n_ids + 1
    return labels, image


@pytest.mark.parametrize(
    ("n_ids", "pixel_id", "dtype"),
    [
        (255, sitk.sitkUInt8, np.uint8),
        (256, sitk.sitkUInt16, np.uint16),
        (300, sitk.sitkUInt16, np.uint16),
        (65535, sitk.sitkUInt16, np.uint16),
        (70_001, sitk.sitkUInt32, np.uint32),
    ],
)
@pytest.mark.parametrize("ext", FORMATS)
def test_smallest_unsigned_dtype_without_overflow(tmp_path, n_ids, pixel_id, dtype, ext):
    labels, image = _relabelled(n_ids)
    out = write_labels(labels, tmp_path / f"many{ext}", image)
    on_disk = sitk.ReadImage(str(out))
    assert on_disk.GetPixelID() == pixel_id, on_disk.GetPixelIDTypeAsString()
    back = read_volume(out).array
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, labels)
    assert np.unique(back).size == n_ids + 1


def test_bool_and_whole_float_labels(tmp_path):
    image = read_volume(case_dir("msd_hippocampus_mr") / "hippocampus_003_image.nii.gz")
    float_mask = read_volume(case_dir("msd_hippocampus_mr") / "hippocampus_003_label.nii.gz")
    assert float_mask.array.dtype == np.float32
    out = write_labels(float_mask.array, tmp_path / "hippo.nii.gz", image)
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(read_volume(out).array, float_mask.array)
    out = write_labels(float_mask.array > 0, tmp_path / "hippo_any.nrrd", image)
    np.testing.assert_array_equal(read_volume(out).array, float_mask.array > 0)


def test_bad_label_values_are_refused_and_nothing_written(tmp_path):
    image = read_volume(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz")
    mask = read_volume(case_dir("totalseg_ct_abdomen_sm") / "label.nii.gz").array.astype(np.int64)
    negative = mask.copy()
    negative[mask == 5] = -5
    with pytest.raises(VolumeWriteError, match=">= 0, found -5"):
        write_labels(negative, tmp_path / "neg.nii.gz", image)
    huge = mask.copy()
    huge[mask == 5] = 2**32
    with pytest.raises(VolumeWriteError, match="too large"):
        write_labels(huge, tmp_path / "huge.nii.gz", image)
    fractional = mask.astype(np.float32)
    fractional[mask == 5] = 0.5
    with pytest.raises(VolumeWriteError, match="whole numbers"):
        write_labels(fractional, tmp_path / "frac.nii.gz", image)
    assert list(tmp_path.iterdir()) == []


def test_shape_mismatch_names_both_shapes_and_writes_nothing(tmp_path):
    image = read_volume(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz")
    pelvis_mask = read_volume(case_dir("totalseg_ct_abdomen_pelvis") / "label.nii.gz").array
    with pytest.raises(VolumeWriteError) as info:
        write_labels(pelvis_mask, tmp_path / "wrong.nii.gz", image)
    message = str(info.value)
    assert str(pelvis_mask.shape) in message
    assert str(image.shape) in message
    # The same check works with a metadata dict as geometry.
    with pytest.raises(VolumeWriteError, match=r"\(30, 101, 122\)"):
        write_labels(pelvis_mask, tmp_path / "wrong.nrrd", image.metadata())
    assert list(tmp_path.iterdir()) == []


def test_geometry_from_metadata_dict_after_json(tmp_path):
    image = read_volume(case_dir("pyradiomics_brain1_mr") / "image.nrrd")
    mask = read_volume(case_dir("pyradiomics_brain1_mr") / "label.nrrd").array
    meta = json.loads(json.dumps(image.metadata()))
    out = write_labels(mask, tmp_path / "tumour.mha", meta)
    back = sitk.ReadImage(str(out))
    assert back.GetDirection() == pytest.approx(image.direction, abs=1e-12)
    assert back.GetOrigin() == pytest.approx(image.origin, abs=1e-9)
    # Without a "shape" entry no shape check is possible, but the geometry is still used.
    meta.pop("shape")
    out = write_labels(mask, tmp_path / "tumour2.nii.gz", meta)
    assert sitk.ReadImage(str(out)).GetSpacing() == pytest.approx(image.spacing, abs=1e-6)


@pytest.mark.parametrize("name", ["labels.png", "labels.nhdr", "labels", ".nii.gz"])
def test_unsupported_target_names(tmp_path, name):
    image = read_volume(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz")
    with pytest.raises(VolumeWriteError, match="saved as"):
        write_labels(np.zeros(image.shape, np.uint8), tmp_path / name, image)


def test_missing_folder(tmp_path):
    image = read_volume(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz")
    with pytest.raises(VolumeWriteError, match="does not exist"):
        write_labels(np.zeros(image.shape, np.uint8), tmp_path / "no" / "x.nii.gz", image)


def test_plain_nii_is_uncompressed(tmp_path):
    image = read_volume(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz")
    mask = read_volume(case_dir("totalseg_ct_abdomen_sm") / "label.nii.gz").array
    out = write_labels(mask, tmp_path / "plain.nii", image)
    assert out.read_bytes()[:2] != b"\x1f\x8b"
    np.testing.assert_array_equal(read_volume(out).array, mask)


# -- atomic writes -----------------------------------------------------------------------------
@pytest.fixture
def existing_target(tmp_path):
    image = read_volume(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz")
    mask = read_volume(case_dir("totalseg_ct_abdomen_sm") / "label.nii.gz").array
    target = write_labels(mask, tmp_path / "seg.nii.gz", image)
    return image, mask, target, target.read_bytes()


@pytest.mark.parametrize("partial", [True, False], ids=["fails-after-partial-write", "fails"])
def test_failed_write_leaves_old_file_and_no_temp_file(existing_target, monkeypatch, partial):
    image, mask, target, before = existing_target
    calls = []

    def broken_write(img, filename, *args, **kwargs):
        calls.append(filename)
        if partial:
            with open(filename, "wb") as fh:
                fh.write(b"\x1f\x8b partial data")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(VolumeWriteError, match="disk full"):
        write_labels(mask[::-1].copy(), target, image)
    assert calls, "the writer was not called"
    # The temporary file was in the same folder, kept the real extension, and is gone.
    assert os.path.dirname(calls[0]) == str(target.parent)
    assert calls[0].endswith(".nii.gz") and calls[0] != str(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]


def test_failed_rename_leaves_old_file(existing_target, monkeypatch):
    image, mask, target, before = existing_target

    def broken_replace(src, dst):
        raise OSError("permission denied (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(VolumeWriteError, match="permission denied"):
        write_labels(mask[::-1].copy(), target, image)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]


def test_overwrite_replaces_content(existing_target):
    image, mask, target, before = existing_target
    flipped = mask[:, ::-1].copy()
    write_labels(flipped, target, image)
    assert target.read_bytes() != before
    np.testing.assert_array_equal(read_volume(target).array, flipped)
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]

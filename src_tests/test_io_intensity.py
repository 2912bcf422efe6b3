"""Intensity windows: CT presets, MR percentiles, uint8 mapping without float64 copies."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
from helpers import case_dir

from napari_medsam.io import read_volume
from napari_medsam.io.intensity import (
    CT_WINDOWS,
    IntensityMapping,
    auto_mapping,
    mapping_from_name,
)

CT_SCANS = [
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz"),
    ("totalseg_ct_abdomen_sm", "image.nii.gz"),
    ("totalseg_ct_dicom", "dicom"),
    ("dcmqi_ct_3slice", "dicom"),
]
MR_SCANS = [
    ("totalseg_mr_abdomen_sm", "image.nii.gz"),
    ("pyradiomics_brain1_mr", "image.nrrd"),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz"),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz"),
]


def test_ct_presets_use_standard_values():
    required = {"soft_tissue", "abdomen", "liver", "lung", "bone", "brain", "mediastinum"}
    assert required <= set(CT_WINDOWS)
    assert CT_WINDOWS["abdomen"] == (40, 400)
    assert CT_WINDOWS["liver"] == (30, 150)
    assert CT_WINDOWS["lung"] == (-600, 1500)
    assert CT_WINDOWS["bone"] == (400, 1800)
    assert CT_WINDOWS["brain"] == (40, 80)
    assert CT_WINDOWS["mediastinum"] == (50, 350)
    abdomen = mapping_from_name("abdomen")
    assert abdomen.contrast_limits == (-160.0, 240.0)
    assert abdomen.key == "ct_window:abdomen:-160:240"
    assert mapping_from_name("Soft tissue").name == "soft_tissue"
    assert mapping_from_name("lung").contrast_limits == (-1350.0, 150.0)


@pytest.mark.parametrize(("case", "name"), CT_SCANS)
def test_auto_mapping_picks_a_ct_window_for_ct(case, name):
    volume = read_volume(case_dir(case) / name)
    assert volume.modality == "CT"
    for modality in (volume.modality, None):  # from the tag, and from HU alone
        mapping = auto_mapping(volume.array, modality)
        assert mapping.name in CT_WINDOWS
        assert mapping.name == "abdomen"


@pytest.mark.parametrize(("case", "name"), MR_SCANS)
def test_auto_mapping_uses_percentiles_for_mr(case, name):
    volume = read_volume(case_dir(case) / name)
    for modality in (volume.modality, None):
        mapping = auto_mapping(volume.array, modality)
        assert mapping.name == "mr_percentile"
    foreground = volume.array[volume.array != 0].astype(np.float64)
    low, high = np.percentile(foreground, [0.5, 99.5])
    span = float(volume.array.max() - volume.array.min())
    assert mapping.low == pytest.approx(low, abs=0.02 * span)
    assert mapping.high == pytest.approx(high, abs=0.02 * span)
    assert mapping.low < mapping.high
    # Computed on a deterministic subsample: the key is stable.
    assert auto_mapping(volume.array).key == mapping.key
    assert mapping.key.startswith("mr_percentile:")


def test_modality_overrides_the_intensity_guess():
    ct = read_volume(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz").array
    assert auto_mapping(ct, "MR").name == "mr_percentile"
    mr = read_volume(case_dir("pyradiomics_brain1_mr") / "image.nrrd").array
    assert auto_mapping(mr, "CT").name == "abdomen"


def test_apply_clips_scales_and_returns_uint8():
    ct = read_volume(case_dir("totalseg_ct_abdomen_pelvis") / "image.nii.gz").array
    mapping = mapping_from_name("abdomen")
    out = mapping.apply(ct)
    assert out.dtype == np.uint8 and out.shape == ct.shape
    reference = np.clip((ct.astype(np.float64) + 160.0) / 400.0 * 255.0, 0, 255)
    assert np.abs(out.astype(int) - np.rint(reference).astype(int)).max() <= 1
    assert (out[ct <= -160] == 0).all()
    assert (out[ct >= 240] == 255).all()
    assert out.min() == 0 and out.max() == 255


def test_apply_maps_nan_to_zero():
    mr = read_volume(case_dir("msd_hippocampus_mr") / "hippocampus_003_image.nii.gz").array
    data = mr.copy()
    data[0] = np.nan
    mapping = auto_mapping(mr)
    out = mapping.apply(data)
    assert (out[0] == 0).all()
    np.testing.assert_array_equal(out[1:], mapping.apply(mr)[1:])


def _naive_apply(mapping, array):
    scaled = (array.astype(np.float64) - mapping.low) / (mapping.high - mapping.low) * 255
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _peak(func, *args):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = func(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_apply_does_not_upcast_the_volume():
    # The 512 x 512 x 20 DICOM CT as float32: 21 MB in, 5 MB out.
    ct = read_volume(case_dir("totalseg_ct_dicom") / "dicom").array.astype(np.float32)
    mapping = mapping_from_name("abdomen")
    out, peak = _peak(mapping.apply, ct)
    budget = out.nbytes + ct.nbytes // 2  # less than one full float32 copy on top
    assert peak < budget, (peak, budget)
    assert peak < 5 * (out.nbytes + ct.nbytes)
    # The check can fail: a float64 implementation goes far over the budget.
    naive, naive_peak = _peak(_naive_apply, mapping, ct)
    assert naive_peak > budget
    assert np.abs(naive.astype(int) - out.astype(int)).max() <= 1


def test_mapping_validation_and_names():
    with pytest.raises(ValueError, match="high > low"):
        IntensityMapping("custom", 10, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mapping_from_name("liver").low = 0  # type: ignore[misc]
    with pytest.raises(ValueError) as info:
        mapping_from_name("cardiac")
    for valid in ("abdomen", "lung", "mr_percentile", "minmax"):
        assert valid in str(info.value)
    with pytest.raises(ValueError, match="pass array"):
        mapping_from_name("mr_percentile")
    mr = read_volume(case_dir("pyradiomics_brain1_mr") / "image.nrrd").array
    minmax = mapping_from_name("minmax", mr)
    assert minmax.contrast_limits == (float(mr.min()), float(mr.max()))
    assert mapping_from_name("mr_percentile", mr) == auto_mapping(mr, "MR")
    assert IntensityMapping("custom", -1, 1.5).key == "custom:-1:1.5"

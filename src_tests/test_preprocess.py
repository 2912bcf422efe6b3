"""Preprocessing reproduces the LiteMedSAM reference recipe (OpenCV + PyTorch) exactly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from helpers import case_dir

from napari_medsam.engine.preprocess import (
    PromptError,
    postprocess_logits,
    preprocess_slice,
    prompt_arrays,
)
from napari_medsam.engine.resize import resize_area_uint8


def _real_slices():
    """uint8 slices of several real shapes (CT 101x122, MR 256x256, hippocampus 36x52...)."""
    out = []
    for case, name in [("totalseg_ct_abdomen_pelvis", "image.nii.gz"),
                       ("pyradiomics_brain1_mr", "image.nrrd"),
                       ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz"),
                       ("totalseg_ct_dicom", None)]:
        folder = case_dir(case)
        if name is None:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "dicom")))
            array = sitk.GetArrayFromImage(reader.Execute())
        else:
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
        for z in (array.shape[0] // 3, array.shape[0] // 2):
            s = array[z].astype(np.float32)
            lo, hi = np.percentile(s, [0.5, 99.5])
            out.append((case, np.clip((s - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8)))
            out.append((case + "-transposed", out[-1][1].T.copy()))
    return out


def _reference_recipe(image: np.ndarray, size: int = 256):
    """The LiteMedSAM inference script's steps, with OpenCV."""
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = cv2.resize(np.repeat(image[:, :, None], 3, -1), (nw, nh),
                         interpolation=cv2.INTER_AREA)
    norm = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
    padded = np.pad(norm, ((0, size - nh), (0, size - nw), (0, 0)))
    return padded.transpose(2, 0, 1)[None].astype(np.float32), (nh, nw)


@pytest.mark.parametrize("case,image", _real_slices(), ids=lambda v: v if isinstance(v, str)
                         else str(getattr(v, "shape", "")))
def test_slice_preprocessing_matches_reference(case, image):
    ours, resized = preprocess_slice(image, 256)
    ref, ref_resized = _reference_recipe(image)
    assert resized == ref_resized
    assert ours.shape == (1, 3, 256, 256)
    assert np.abs(ours - ref).max() < 1e-6


def test_area_resize_is_bit_exact_with_opencv_up_and_integer_down():
    rng = np.random.default_rng(7)
    for rows, cols, out in [(101, 122, (212, 256)), (512, 512, (256, 256)),
                            (36, 52, (177, 256)), (768, 1024, (192, 256)), (52, 35, (256, 172))]:
        image = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
        ref = cv2.resize(image, out[::-1], interpolation=cv2.INTER_AREA)
        assert np.array_equal(resize_area_uint8(image, *out), ref)


def test_area_resize_non_integer_downscale_within_one_grey_level():
    rng = np.random.default_rng(8)
    for rows, cols, out in [(700, 300, (256, 110)), (640, 476, (256, 190)),
                            (1115, 614, (256, 141))]:
        image = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
        ref = cv2.resize(image, out[::-1], interpolation=cv2.INTER_AREA).astype(int)
        diff = np.abs(resize_area_uint8(image, *out).astype(int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_logit_postprocessing_matches_torch():
    rng = np.random.default_rng(3)
    low = rng.normal(0, 4, (256, 256)).astype(np.float32)
    for original, resized in [((101, 122), (212, 256)), ((512, 512), (256, 256)),
                              ((36, 52), (177, 256))]:
        ref = F.interpolate(torch.from_numpy(low)[None, None, : resized[0], : resized[1]],
                            size=original, mode="bilinear", align_corners=False)[0, 0].numpy()
        ours = postprocess_logits(low, resized, original, 256)
        assert ours.shape == original
        assert np.abs(ours - ref).max() < 1e-3


def test_box_is_scaled_like_the_reference():
    coords, labels = prompt_arrays((10, 20, 60, 80), None, (101, 122), 256)
    assert labels.tolist() == [[2.0, 3.0]]
    assert np.allclose(coords, np.array([[[10, 20], [60, 80]]]) * 256 / 122)


def test_clicks_then_box_and_padding_point():
    coords, labels = prompt_arrays(None, [(5, 6, 1), (7, 8, 0)], (100, 100), 256)
    assert labels.tolist() == [[1.0, 0.0, -1.0]]
    coords, labels = prompt_arrays((1, 1, 50, 50), [(5, 6, 1)], (100, 100), 256)
    assert labels.tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize("box,points,message", [
    ((200, 200, 300, 300), None, "outside the slice"),
    ((10, 10, 10, 40), None, "no area"),
    ((1, 2, 3), None, "4 finite numbers"),
    (None, [(500, 5, 1)], "outside the slice"),
    (None, [(5, 5, 7)], "label must be 1"),
    (None, None, "needs a box or at least one click"),
])
def test_bad_prompts_are_refused_clearly(box, points, message):
    with pytest.raises(PromptError, match=message):
        prompt_arrays(box, points, (100, 120), 256)

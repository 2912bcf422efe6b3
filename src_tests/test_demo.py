"""`make demo`'s headless workflow: sample CT, a box on the liver, accept, screenshot, NIfTI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medsam._sample_data import sample_label_path, sample_path

pytestmark = pytest.mark.gui


def test_headless_demo_writes_screenshot_and_labels_on_the_scan_geometry(tmp_path, litemedsam):
    result = subprocess.run([sys.executable, "-m", "napari_medsam.demo", "--headless",
                             "--device", "cpu", "--out", str(tmp_path)],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dice" in result.stdout
    shot = tmp_path / "demo_screenshot.png"
    assert shot.is_file() and shot.stat().st_size > 20_000
    labels = sitk.ReadImage(str(tmp_path / "demo_labels.nii.gz"))
    image = sitk.ReadImage(str(sample_path("ct")))
    assert labels.GetSize() == image.GetSize()
    assert np.allclose(labels.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert np.allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-6)
    assert np.allclose(labels.GetDirection(), image.GetDirection(), atol=1e-6)
    got = sitk.GetArrayFromImage(labels) == 1
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_label_path("ct")))) == 5
    z = int(got.sum(axis=(1, 2)).argmax())
    dice = 2 * (got[z] & truth[z]).sum() / (got[z].sum() + truth[z].sum())
    assert dice >= 0.85

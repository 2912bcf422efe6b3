"""totalseg_ct_dicom: the label file is flipped in y relative to the DICOM array.

Matching it to the scan in physical space (resampling) puts the liver on the liver;
matching by array index does not.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from helpers import case_dir, label_names

from napari_medsam.io import read_volume, write_labels

LIVER = 5


def _soft_tissue_fraction(hu: np.ndarray) -> float:
    return float(np.mean((hu >= -50) & (hu <= 200)))


def test_liver_label_lands_on_liver_only_in_physical_space(tmp_path):
    assert label_names("totalseg_ct_dicom")[LIVER] == "liver"
    ct = read_volume(case_dir("totalseg_ct_dicom") / "dicom")
    label_image = sitk.ReadImage(str(case_dir("totalseg_ct_dicom") / "label.nii.gz"))
    by_index = sitk.GetArrayFromImage(label_image)
    assert by_index.shape == ct.shape  # same grid size, so index matching "works" silently
    # The label file's direction differs from the scan's (y axis flipped).
    assert label_image.GetDirection()[4] == -ct.direction[4]

    resampled = sitk.Resample(
        label_image,
        ct.to_sitk(),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        label_image.GetPixelID(),
    )
    physical = sitk.GetArrayFromImage(resampled)
    liver_hu = ct.array[physical == LIVER]
    assert liver_hu.size > 100_000
    assert 30 <= liver_hu.mean() <= 120
    assert _soft_tissue_fraction(liver_hu) > 0.95

    index_hu = ct.array[by_index == LIVER]
    assert not 30 <= index_hu.mean() <= 120
    assert _soft_tissue_fraction(liver_hu) > _soft_tissue_fraction(index_hu) + 0.1
    np.testing.assert_array_equal(physical, by_index[:, ::-1, :])

    # Saved onto the scan's geometry, the resampled liver still sits on the liver.
    out = write_labels(physical, tmp_path / "liver_on_dicom.nrrd", ct)
    again = read_volume(out)
    assert 30 <= ct.array[again.array == LIVER].mean() <= 120

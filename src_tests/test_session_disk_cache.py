"""The session's disk cache: re-opening the same scan needs no encoder run (real MRI)."""

from __future__ import annotations

import numpy as np
from conftest import load_case

from napari_medsam.io.intensity import auto_mapping
from napari_medsam.segmentation import SegmentationSession, SliceRef


def test_second_open_of_a_scan_needs_no_encoder_call(litemedsam):
    volume, _, _ = load_case("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", None)
    array = np.asarray(volume.array)[:4]
    mapping = auto_mapping(array, volume.modality)
    first = SegmentationSession(litemedsam, array, mapping, disk_cache=True)
    refs = [SliceRef(0, i) for i in range(array.shape[0])]
    embedded = [first.embedding(ref).features for ref in refs]
    assert first.encoder_calls == len(refs)

    reopened = SegmentationSession(litemedsam, array.copy(), mapping, disk_cache=True)
    again = [reopened.embedding(ref).features for ref in refs]
    assert reopened.encoder_calls == 0
    for a, b in zip(embedded, again, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-2 * float(np.abs(a).max()))

    # another axis or another mapping is another key: it is computed, not mixed up
    other = SegmentationSession(litemedsam, array, mapping, disk_cache=True)
    other.embedding(SliceRef(1, 3))
    assert other.encoder_calls == 1

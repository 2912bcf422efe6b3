"""The session's disk cache: re-opening the same scan needs no encoder run (real MRI), and
a corrupt slice file is computed again rather than used (real CT)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from helpers import CORRUPTIONS, corrupt_slice_file, dice, largest_slice, load_case, tight_box

from napari_medsam.engine import disk_cache
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


@pytest.fixture(scope="module")
def kidney_on_disk(litemedsam, tmp_path_factory):
    """Real CT embedded by a session into a disk cache of its own: the right kidney's
    largest slice (with its box and mask) and slice 0 (another slice's embedding)."""
    volume, reference, _ = load_case("totalseg_ct_abdomen_sm")
    array = volume.array
    mapping = auto_mapping(array, volume.modality)
    z = largest_slice(reference, 2)
    box = tight_box(reference[z] == 2)
    root = tmp_path_factory.mktemp("embeddings")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(disk_cache, "embeddings_dir", lambda: root)
        first = SegmentationSession(litemedsam, array, mapping, disk_cache=True)
        mask = first.predict(SliceRef(0, z), box=box, zoom=False).mask
        first.embedding(SliceRef(0, 0))
    assert first.encoder_calls == 2 and dice(mask, reference[z] == 2) >= 0.85
    return array, mapping, z, box, mask, root


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_slice_file_is_computed_again_not_used(kind, kidney_on_disk, litemedsam,
                                                         monkeypatch, tmp_path, caplog):
    """A damaged, overwritten or swapped slice file never reaches the decoder (real CT)."""
    array, mapping, z, box, expected, template = kidney_on_disk
    root = tmp_path / "embeddings"
    shutil.copytree(template, root)
    monkeypatch.setattr(disk_cache, "embeddings_dir", lambda: root)
    ref = SliceRef(0, z)
    store = SegmentationSession(litemedsam, array, mapping, disk_cache=True).disk_store(0)
    assert store.indices() == [0, z]
    corrupt_slice_file(store, z, kind, other=0)

    reopened = SegmentationSession(litemedsam, array.copy(), mapping, disk_cache=True)
    with caplog.at_level(logging.WARNING, logger=disk_cache.__name__):
        mask = reopened.predict(ref, box=box, zoom=False).mask
    assert reopened.encoder_calls == 1  # computed again, not taken from the bad file
    assert dice(mask, expected) >= 0.99
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"slice {z} " in warnings[0]
    # the file was replaced by a good one: a third opening reads it
    third = SegmentationSession(litemedsam, array.copy(), mapping, disk_cache=True)
    assert dice(third.predict(ref, box=box, zoom=False).mask, expected) >= 0.99
    assert third.encoder_calls == 0

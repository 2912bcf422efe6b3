"""Propagation of a multi-part object: the colon on a real CT (16 slices of the pelvis).

On axial slice 70 (the colon's largest) the model's mask holds two cross-sections of the
colon. Before issue 18 the run prompted one box around both, the next slice's mask grew by
more than 1.5x and the run ended one slice after the anchor (3D Dice 0.267 on this crop);
each piece now runs with its own box and the run covers the whole crop (0.542).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import dice, load_case, tight_box

from napari_medsam.io.intensity import auto_mapping
from napari_medsam.segmentation import SegmentationSession, SliceRef
from napari_medsam.segmentation.propagation import (
    PropagationParams,
    StopReason,
    propagate,
    propagate_volume,
)
from napari_medsam.segmentation.propagation_runs import anchor_parts

CASE = "totalseg_ct_abdomen_pelvis"
#: Axial slices 62..77; the colon is on all of them, largest on slice 70 (crop index 8).
CROP = slice(62, 78)
COLON = 20


@pytest.fixture(scope="module")
def colon_crop(litemedsam):
    volume, reference, _ = load_case(CASE)
    image = np.ascontiguousarray(volume.array[CROP])
    session = SegmentationSession(litemedsam, image, auto_mapping(volume.array, volume.modality))
    colon = np.asarray(reference[CROP]) == COLON
    index = int(np.argmax(colon.sum(axis=(1, 2))))
    anchor = np.asarray(session.predict_prompts(SliceRef(0, index), [tight_box(colon[index])]),
                        dtype=bool)
    return session, colon, index, anchor


def test_each_piece_of_the_colon_runs_on_its_own(colon_crop):
    session, colon, index, anchor = colon_crop
    assert index == 8 and len(anchor_parts(anchor)) == 2
    run = propagate(session, 0, {index: anchor})
    results = list(run)
    assert not any(r.stopped for r in results)  # before issue 18: "area jump" at slice 7
    assert sorted(r.index for r in results) == [i for i in range(16) if i != index]
    assert sorted((s.direction, s.reason) for s in run.stops) == [
        (-1, StopReason.END), (+1, StopReason.END)]
    assert all(len(s.parts) == 2 for s in run.stops)
    volume = propagate_volume(session, 0, {index: anchor})
    assert dice(volume, colon) > 0.5  # measured 0.542 (before issue 18: 0.267)
    whole = propagate_volume(session, 0, {index: anchor},
                             params=PropagationParams(split_parts=False))
    assert dice(volume, colon) > dice(whole, colon) + 0.1  # one box for both: 0.267


def test_anchor_parts_ignore_specks():
    mask = np.zeros((30, 30), bool)
    mask[2:12, 2:12] = True  # 100 px
    assert len(anchor_parts(mask)) == 1
    mask[20:24, 20:24] = True  # 16 px: a part
    mask[0, 29] = True  # 1 px: a speck
    parts = anchor_parts(mask)
    assert [int(p.sum()) for p in parts] == [100, 16]
    mask[20:24, 20:24] = False
    mask[20:22, 20:22] = True  # 4 px < 10 % of the largest: whole mask again
    assert len(anchor_parts(mask)) == 1 and anchor_parts(mask)[0].sum() == mask.sum()

"""The Qt-free annotation model (issue 19) on a real abdominal CT: preview -> accept payload
(which voxels change from what to what), the keep/overwrite rule, anchors, the pending 3D
result of a propagation and of a refine, the assembly of the 3D edit, and its events.

No Qt and no napari here: the model is driven the way the widget drives it, with plain
arrays standing in for the Labels layer's data.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from napari_medsam.io import read_volume
from napari_medsam.io.intensity import auto_mapping
from napari_medsam.segmentation import SegmentationSession, SliceRef
from napari_medsam.segmentation.annotation import AnnotationModel
from napari_medsam.segmentation.annotation_edits import (
    ADDED,
    KEPT,
    REMOVED,
    PendingRefine,
    PendingSlices,
    displayed_slice,
    label_counts,
    label_name,
    mapping_for_limits,
    pending_change,
    refine_diff,
)
from napari_medsam.segmentation.annotation_jobs import Progress, SliceDone, propagate_job
from napari_medsam.segmentation.bulk import RefineResult

CASE = "totalseg_ct_abdomen_sm"
SPLEEN, LIVER = 1, 5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _box(mask2d: np.ndarray, pad: int = 0) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask2d)
    return (float(xs.min() - pad), float(ys.min() - pad), float(xs.max() + pad),
            float(ys.max() + pad))


@pytest.fixture(scope="module")
def ct(data_dir):
    """(image volume, reference labels as uint16) of the small abdominal CT."""
    folder = data_dir / CASE
    image = read_volume(folder / "image.nii.gz")
    reference = read_volume(folder / "label.nii.gz").array.astype(np.uint16)
    return image, reference


@pytest.fixture
def annotation(ct, litemedsam):
    """A model with a session on the CT (as the widget makes it) and no labels yet."""
    image, _ = ct
    model = AnnotationModel()
    model.session = SegmentationSession(litemedsam, image.array,
                                        auto_mapping(image.array, image.modality))
    return model


def _largest(reference, label: int) -> int:
    return int((reference == label).sum(axis=(1, 2)).argmax())


def _preview(model: AnnotationModel, ref: SliceRef, truth2d: np.ndarray, pad: int = 0):
    mask = model.session.predict_prompts(ref, [_box(truth2d, pad)], [], [])
    model.set_preview(ref, mask)
    return mask


def test_accept_payload_keep_rule_overwrite_and_anchor(annotation, ct):
    _, reference = ct
    z = _largest(reference, SPLEEN)
    ref = SliceRef(0, z)
    labels = np.zeros(reference.shape, dtype=np.uint16)
    accepted = []
    annotation.events.accepted.connect(accepted.append)
    assert annotation.preview_change(labels) is None  # nothing previewed yet

    mask = _preview(annotation, ref, reference[z] == SPLEEN)
    assert _dice(mask, reference[z] == SPLEEN) >= 0.85
    change = annotation.preview_change(labels)
    assert change.label == SPLEEN and change.count == int(mask.sum())
    assert not change.old.any() and set(np.unique(change.new)) == {SPLEEN}
    assert set(np.unique(change.indices[0])) == {z}  # only the previewed slice
    change.apply(labels)
    annotation.accepted(change, ref)
    assert accepted == [change] and annotation.anchors == {(SPLEEN, 0): {z}}
    first = labels.copy()

    # object 2: a box over the whole slice; the default keep rule protects object 1
    annotation.new_object(labels)
    assert annotation.label == SPLEEN + 1
    everything = np.ones(reference.shape[1:], dtype=bool)
    everything[[0, -1], :] = everything[:, [0, -1]] = False
    _preview(annotation, ref, everything)
    kept = annotation.preview_change(labels)
    assert not (kept.old == SPLEEN).any()
    annotation.overwrite = True
    over = annotation.preview_change(labels)
    assert (over.old == SPLEEN).any() and over.count > kept.count
    over.apply(labels)
    assert (labels[first == SPLEEN] == SPLEEN + 1).any()
    over.revert(labels)  # the payload says what was there: undo restores it exactly
    assert np.array_equal(labels, first)


def test_label_that_does_not_fit_the_labels_is_an_error(annotation, ct):
    _, reference = ct
    z = _largest(reference, SPLEEN)
    _preview(annotation, SliceRef(0, z), reference[z] == SPLEEN)
    annotation.label = 300
    with pytest.raises(ValueError, match="does not fit"):
        annotation.preview_change(np.zeros(reference.shape, dtype=np.uint8))


@pytest.mark.slow
def test_propagation_job_pending_slices_and_the_3d_edit(annotation, ct):
    """Accept one slice of the spleen, propagate it as the 3D panel does, accept in 3D."""
    _, reference = ct
    spleen = reference == SPLEEN
    z = _largest(reference, SPLEEN)
    ref = SliceRef(0, z)
    labels = np.zeros(reference.shape, dtype=np.uint16)
    _preview(annotation, ref, spleen[z])
    change = annotation.preview_change(labels)
    change.apply(labels)
    annotation.accepted(change, ref)
    after_2d = labels.copy()

    anchors = annotation.anchor_masks(labels, SPLEEN, ref)
    assert list(anchors) == [z]
    job = propagate_job(annotation.session, ref, anchors, SPLEEN, cancel=lambda: False)
    items = []
    while True:
        try:
            items.append(next(job))
        except StopIteration as stop:
            pending = stop.value
            break
    slices = [i for i in items if isinstance(i, SliceDone)]
    progress = [i for i in items if isinstance(i, Progress)]
    assert slices and len(progress) == len(slices)
    assert progress[-1].total == reference.shape[0]
    assert isinstance(pending, PendingSlices) and pending.kind == "slices"
    assert z not in pending.masks  # the anchor is never re-segmented
    assert len([m for m in pending.masks.values() if m.any()]) >= 10
    assert f"Object {SPLEEN}:" in pending.summary

    pendings = []
    annotation.events.pending.connect(pendings.append)
    annotation.pending = pending
    change = annotation.pending_change(labels)
    touched = set(np.unique(change.indices[0]).tolist())
    assert touched <= set(pending.masks) and z not in touched  # only propagated slices
    change.apply(labels)
    annotation.accepted(change)  # a 3D accept ends the pending result
    assert annotation.pending is None and pendings == [pending, None]
    assert np.array_equal(labels[z], after_2d[z])
    assert _dice(labels == SPLEEN, spleen) >= 0.8
    change.revert(labels)
    assert np.array_equal(labels, after_2d)


def test_pending_refine_replaces_the_object_and_keeps_others(ct):
    """A refine's result (here the reference itself) written over a damaged object."""
    _, reference = ct
    spleen = reference == SPLEEN
    damaged = reference.copy()
    z = _largest(reference, SPLEEN)
    damaged[z][spleen[z]] = 0  # a hole in the spleen
    grown = np.zeros_like(spleen)
    grown[z - 1] = np.roll(spleen[z - 1], 3, axis=1)  # and a spill next to it
    damaged[grown & (reference == 0)] = SPLEEN
    current = damaged == SPLEEN
    result = RefineResult(SPLEEN, spleen, spleen & ~current, current & ~spleen)
    pending = PendingRefine(SPLEEN, result, "Refine of object 1")
    assert pending.kind == "refine"
    diff = refine_diff(result)
    assert set(np.unique(diff)) == {0, KEPT, ADDED, REMOVED}
    assert np.array_equal(diff == REMOVED, result.removed)

    change = pending_change(damaged, pending, overwrite=False)
    assert set(np.unique(change.old)) <= {0, SPLEEN} and set(np.unique(change.new)) <= {0,
                                                                                           SPLEEN}
    out = damaged.copy()
    change.apply(out)
    assert np.array_equal(out == SPLEEN, spleen)
    others = (reference != SPLEEN) & (reference != 0)
    assert np.array_equal(out[others], reference[others])


def test_events_follow_the_state_and_close_forgets_the_views():
    model = AnnotationModel()
    seen = []
    model.events.label.connect(lambda value: seen.append(("label", value)))
    model.events.overwrite.connect(lambda value: seen.append(("overwrite", value)))
    model.events.zoom.connect(lambda value: seen.append(("zoom", value)))
    model.events.anchors.connect(lambda *args: seen.append(("anchor", args)))
    model.events.preview.connect(lambda old, new, mask: seen.append(("preview", old, new)))
    model.label = 1  # unchanged: no event
    model.label = 4
    model.overwrite = True
    model.zoom = "off"
    model.add_anchor(4, 0, 7)
    ref = SliceRef(0, 7)
    model.set_preview(ref, np.ones((2, 2), bool))
    model.clear_preview()
    assert seen == [("label", 4), ("overwrite", True), ("zoom", "off"),
                    ("anchor", (4, 0, 7)), ("preview", None, ref), ("preview", ref, None)]
    with pytest.raises(ValueError, match="zoom"):
        model.zoom = "on"
    made = SimpleNamespace(data=np.zeros((2, 2, 2), np.uint16))
    model.create_target = lambda: made
    assert model.target_labels(create=False) is None
    assert model.target_labels(create=True) is made and model.target is made
    model.close()
    model.label = 9
    assert seen[-1] == ("preview", ref, None) and model.create_target is None

    # a disconnected view is not called again; disconnecting twice is harmless
    calls = []
    model = AnnotationModel()
    model.events.label.connect(calls.append)
    model.label = 5
    model.events.label.disconnect(calls.append)
    model.events.label.disconnect(calls.append, missing_ok=True)
    model.label = 6
    assert calls == [5]


def test_small_helpers():
    assert displayed_slice(2, (1, 2), (3.4, 0, 0), (10, 5, 5)) == SliceRef(0, 3)
    assert displayed_slice(2, (0, 2), (0, 99.0, 0), (10, 5, 5)) == SliceRef(1, 4)  # clipped
    assert displayed_slice(3, (0, 1, 2), (0, 0, 0), (10, 5, 5)) is None
    assert mapping_for_limits(-160, 240).name == "abdomen"
    assert mapping_for_limits(0, 0).high == 1.0
    data = np.array([[[0, 2, 2, 7]]], dtype=np.uint16)
    assert label_counts(data) == {2: 2, 7: 1}
    assert label_counts(data.astype(np.int32)) == {2: 2, 7: 1}
    assert label_name({"label_names": {"2": "spleen"}}, 2) == "spleen"
    assert label_name(None, 2) == ""


def test_the_model_imports_neither_qt_nor_napari():
    code = ("import sys\n"
            "import napari_medsam.segmentation.annotation\n"
            "import napari_medsam.segmentation.annotation_jobs\n"
            "import napari_medsam.segmentation.annotation_paint\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr

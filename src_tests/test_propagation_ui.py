"""Where a propagation stopped, Continue past a stop, Cut here and the Slices range (issue
18), on the upper-abdomen CT crop and the sample CT: the Qt-free jobs and pending result, then
the 3D panel (stop lines, Go to, Continue, Cut here, Only within Slices, Accept 3D as one undo
step).

The left kidney accepted on crop slice 3 (scan slice 101) stops towards lower slices after
one slice by the area rule although the kidney goes on (measured: the next slices hold it):
continuing past that stop follows it down to the range's end.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import ABDOMEN_CROP, KIDNEY_LEFT, LIVER, crop_session, dice, rectangle, tight_box

from napari_medsam.segmentation import SliceRef
from napari_medsam.segmentation.annotation import AnnotationModel
from napari_medsam.segmentation.annotation_edits import (
    CONTINUABLE,
    PendingSlices,
    cut_pending,
    pending_change,
    slices_pending,
    stop_text,
)
from napari_medsam.segmentation.annotation_jobs import (
    Progress,
    SliceDone,
    continue_job,
    continue_mask,
    propagate_job,
)
from napari_medsam.segmentation.propagation_steps import PropagationParams
from napari_medsam.segmentation.propagation_stops import DirectionStop, StopReason

#: The kidney's anchor slice in the crop: one slice below it the stop rules alone (without the
#: tight retry, which carries this run on) stop the run, although the kidney goes on.
KIDNEY_ANCHOR = 3
RULES_ONLY = PropagationParams(retries=0)


def _drain(job) -> tuple[list, PendingSlices]:
    """Every item a job yields, and what it returns."""
    items = []
    while True:
        try:
            items.append(next(job))
        except StopIteration as stop:
            return items, stop.value


def _filled(pending: PendingSlices) -> set[int]:
    return {i for i, m in pending.masks.items() if m.any()}


@pytest.fixture
def ct_crop(litemedsam):
    return crop_session(litemedsam)


def test_stops_are_data_and_a_run_continues_past_a_rule_stop(ct_crop):
    session, reference = ct_crop
    kidney = reference == KIDNEY_LEFT
    z = KIDNEY_ANCHOR
    anchors = {z: session.predict(SliceRef(0, z), box=tight_box(kidney[z])).mask}
    _, pending = _drain(propagate_job(session, SliceRef(0, z), anchors, KIDNEY_LEFT,
                                      cancel=lambda: False, params=RULES_ONLY))
    stops = {s.direction: s for s in pending.stops}
    assert set(stops) == {-1, +1} and all(isinstance(s, DirectionStop) for s in pending.stops)
    down, up = stops[-1], stops[+1]
    assert down.reason in CONTINUABLE and down.last == z  # stopped next to the anchor
    assert down.index == z - 1 and kidney[z - 1].any()  # although the kidney goes on
    assert up.reason in CONTINUABLE and kidney[up.last].any()
    assert stop_text(down) == f"towards lower slices stopped at {z - 1} ({down.reason})"
    assert stop_text(down) in pending.summary and stop_text(up) in pending.summary
    assert pending.lines[1:] == (stop_text(down).capitalize() + ".",
                                 stop_text(up).capitalize() + ".")
    before = _filled(pending)
    assert before and min(before) > down.index
    _, retried = _drain(propagate_job(session, SliceRef(0, z), anchors, KIDNEY_LEFT,
                                      cancel=lambda: False))
    assert min(_filled(retried)) < down.index  # with the tight retry the run goes on

    # continue past the lower stop from the anchor's mask, bounded to slices 1..11
    assert continue_mask(pending, down, anchors) is not None
    items, more = _drain(continue_job(session, pending, down, anchors, cancel=lambda: False,
                                      stop_at=(1, 11), params=RULES_ONLY))
    assert [i.index for i in items if isinstance(i, SliceDone)] == [2, 1]
    assert [i.done for i in items if isinstance(i, Progress)] == [1, 2]
    assert _filled(more) == before | {1, 2}  # the new slices join the old ones
    new = {s.direction: s for s in more.stops}
    assert new[+1] == up  # the other direction's stop is kept
    assert new[-1] == DirectionStop(-1, 0, StopReason.END, 1)  # the range ends the run
    assert "towards lower slices went to 1 (end of range)" in more.summary
    with pytest.raises(ValueError, match="cannot be continued"):
        continue_mask(more, new[-1], anchors)
    with pytest.raises(ValueError, match="not one of"):
        continue_mask(more, down, anchors)

    # the whole result is one edit; the continued slices follow the kidney
    labels = np.zeros(reference.shape, dtype=np.uint16)
    labels[z][anchors[z]] = KIDNEY_LEFT
    change = pending_change(labels, more, overwrite=False)
    change.apply(labels)
    assert set(np.unique(change.indices[0]).tolist()) <= _filled(more)
    assert dice(labels[1:3] == KIDNEY_LEFT, kidney[1:3]) > 0.9  # measured 0.98


def test_a_slice_cut_at_bounds_later_runs_and_continues_of_the_object(ct_crop):
    """*Cut here* marks the slice in the annotation model; propagation and Continue of the
    same object end there ("marked outside"), other objects and other labels do not."""
    session, reference = ct_crop
    kidney = reference == KIDNEY_LEFT
    z = KIDNEY_ANCHOR
    labels = SimpleNamespace(data=np.zeros(reference.shape, dtype=np.uint16))
    labels.data[z][session.predict(SliceRef(0, z), box=tight_box(kidney[z])).mask] = KIDNEY_LEFT
    model = AnnotationModel(label=KIDNEY_LEFT)
    model.target = labels
    model.add_anchor(KIDNEY_LEFT, 0, z)
    seen: list[int] = []
    model.events.outside.connect(seen.append)
    model.params = RULES_ONLY
    _, first = _drain(propagate_job(session, SliceRef(0, z), model.propagation_anchors(
        labels.data, KIDNEY_LEFT, SliceRef(0, z)), KIDNEY_LEFT, lambda: False,
        params=model.params))
    up = next(s for s in first.stops if s.direction == +1)
    assert up.last >= z + 2  # the kidney run goes at least two slices up
    model.mark_outside(KIDNEY_LEFT, 0, z + 2)  # as Cut here on slice z + 2
    assert seen == [KIDNEY_LEFT] and model.outside_slices(KIDNEY_LEFT, 0) == {z + 2}
    assert model.outside_slices(LIVER, 0) == frozenset()

    # shown on the cut slice itself (it holds no object): the mark wins, the run stops there
    anchors = model.propagation_anchors(labels.data, KIDNEY_LEFT, SliceRef(0, z + 2))
    assert sorted(anchors) == [z, z + 2] and not anchors[z + 2].any()
    _, again = _drain(propagate_job(session, SliceRef(0, z), anchors, KIDNEY_LEFT,
                                    lambda: False, params=model.params))
    assert DirectionStop(+1, z + 2, StopReason.BARRIER, z + 1) in again.stops
    assert _filled(again) & set(range(z + 2, reference.shape[0])) == set()
    assert f"towards higher slices stopped at {z + 2} (marked outside)" in again.summary

    # Continue past the lower rule stop ends on a mark below as well
    down = next(s for s in again.stops if s.direction == -1)
    assert down.reason in CONTINUABLE and down.index == z - 1
    model.mark_outside(KIDNEY_LEFT, 0, z - 2)
    _, more = _drain(continue_job(session, again, down, anchors, lambda: False,
                                  params=model.params,
                                  outside=model.outside_slices(KIDNEY_LEFT, 0)))
    assert min(_filled(more)) == z - 1  # the forced slice past the stop, then the mark
    assert DirectionStop(-1, z - 2, StopReason.BARRIER, z - 1) in more.stops

    # accepting the object on a marked slice takes the mark back; other labels drop them all
    model.add_anchor(KIDNEY_LEFT, 0, z - 2)
    assert model.outside_slices(KIDNEY_LEFT, 0) == {z + 2}
    model.target = SimpleNamespace(data=labels.data.copy())
    assert model.outside == {} and seen[-1] == KIDNEY_LEFT
    model.mark_outside(KIDNEY_LEFT, 0, z + 2)
    model.clear_outside(KIDNEY_LEFT)
    assert model.outside_slices(KIDNEY_LEFT, 0) == frozenset()


def test_the_slices_range_bounds_a_propagation(ct_crop):
    session, reference = ct_crop
    liver = reference == LIVER
    anchors = {6: session.predict(SliceRef(0, 6), box=tight_box(liver[6])).mask}
    items, pending = _drain(propagate_job(session, SliceRef(0, 6), anchors, LIVER,
                                          cancel=lambda: False, stop_at=(4, 8)))
    assert sorted(pending.masks) == [4, 5, 7, 8]
    assert sorted((s.direction, s.index, s.reason, s.last) for s in pending.stops) == [
        (-1, 3, StopReason.END, 4), (+1, 9, StopReason.END, 8)]
    progress = [i for i in items if isinstance(i, Progress)]
    assert progress[-1] == Progress(5, 5)  # the range's 5 slices, the anchor included
    assert pending.lines == (f"Object {LIVER}: 4 slices segmented along axis 0.",
                             "Towards lower slices went to 4 (end of range).",
                             "Towards higher slices went to 8 (end of range).")


def test_cut_drops_the_slice_and_everything_beyond_it_away_from_the_anchors():
    full = np.ones((4, 4), bool)
    masks = {i: full for i in (3, 4, 6, 7, 8, 9)}  # anchors on 5 and 10 are not pending
    stops = (DirectionStop(-1, 2, StopReason.EMPTY, 3), DirectionStop(+1, 12, StopReason.AREA, 11))
    masks[11] = full
    pending = slices_pending(LIVER, 0, masks, stops)
    up = cut_pending(pending, 11, anchors={5, 10})
    assert sorted(up.masks) == [3, 4, 6, 7, 8, 9]
    assert set(up.stops) == {stops[0], DirectionStop(+1, 11, StopReason.CUT, 10)}
    down = cut_pending(pending, 4, anchors={5, 10})
    assert sorted(down.masks) == [6, 7, 8, 9, 11]
    assert set(down.stops) == {DirectionStop(-1, 4, StopReason.CUT, 5), stops[1]}
    assert stop_text(DirectionStop(-1, 4, StopReason.CUT, 5)) == (
        "towards lower slices stopped at 4 (cut by you)")
    assert StopReason.CUT not in CONTINUABLE  # the user said the object ends there
    for index, words in ((10, "one of your accepted slices"), (7, "between your accepted"),
                         (13, "no slice of the preview")):
        with pytest.raises(ValueError, match=words):
            cut_pending(pending, index, anchors={5, 10})
    with pytest.raises(ValueError, match="applies to a propagation"):
        cut_pending(slices_pending(LIVER, 0, masks), 11, anchors={5, 10})  # a 3D box


def test_stop_words_name_the_slice_the_reason_and_the_parts():
    end = DirectionStop(+1, 142, StopReason.END, 141,
                        ((130, StopReason.EMPTY), (142, StopReason.END)))
    assert stop_text(end) == ("towards higher slices went to 141 (end of range) [parts "
                              "stopped at 130 (empty), 142 (end of range)]")
    barrier = DirectionStop(-1, 9, StopReason.BARRIER, 10)
    assert stop_text(barrier) == "towards lower slices stopped at 9 (marked outside)"
    assert {StopReason.END, StopReason.BARRIER, StopReason.CANCELLED}.isdisjoint(CONTINUABLE)


# ---------------------------------------------------------------------------- the panel
def _accept_box(viewer, widget, layer, qtbot, z, mask2d):
    """A box around ``mask2d`` on axial slice ``z``, accepted (an anchor)."""
    from napari_medsam._qt.widget import BOXES_LAYER

    viewer.dims.order = (0, 1, 2)
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    ys, xs = np.nonzero(mask2d)
    widget.preview_mask = None
    viewer.layers[BOXES_LAYER].add_rectangles(
        rectangle(0, z, (ys.min(), ys.max()), (xs.min(), xs.max())))
    qtbot.waitUntil(lambda: widget.preview_mask is not None, timeout=60_000)
    assert widget.accept() > 0


def test_panel_shows_stops_continues_within_the_range_and_accepts_once(sample_ct_widget, qtbot,
                                                                       monkeypatch):
    from napari_medsam._qt import volume_panel

    warnings: list[str] = []
    monkeypatch.setattr(volume_panel, "show_warning", warnings.append)
    viewer, widget, layer, reference = sample_ct_widget
    reference = np.asarray(reference)
    z = ABDOMEN_CROP.start + KIDNEY_ANCHOR  # scan slice 101
    _accept_box(viewer, widget, layer, qtbot, z, reference[z] == KIDNEY_LEFT)
    target = widget.target_labels()
    after_2d = target.data.copy()
    panel = widget.volume_panel
    widget.annotation.params = RULES_ONLY
    panel.range_check.setChecked(True)

    # the displayed slice outside the range: a warning, nothing runs
    panel.first_spin.setValue(z + 2)
    panel.last_spin.setValue(z + 6)
    panel.propagate()
    assert not panel.running and panel.pending is None
    assert warnings == [f"MedSAM: slice {z} is outside the range {z + 2}..{z + 6}; change "
                        "Slices or turn off Only within Slices"]

    first, last = z - 4, z + 5
    panel.first_spin.setValue(first)
    panel.last_spin.setValue(last)
    panel.propagate()
    qtbot.waitUntil(lambda: not panel.running, timeout=300_000)
    pending = panel.pending
    stops = {s.direction: s for s in pending.stops}
    down, up = stops[-1], stops[+1]
    assert down.reason in CONTINUABLE and down.index == z - 1
    assert first <= min(pending.masks) and max(pending.masks) <= last
    lines = panel.info.text().splitlines()
    assert lines[1:] == [stop_text(down).capitalize() + ".", stop_text(up).capitalize() + "."]
    rows = {stop.direction: (go, more) for stop, go, more in panel.stops_view.rows}
    assert rows[-1][1].isEnabled() and rows[-1][1].text() == f"Continue past {z - 1}"
    assert rows[+1][1].isEnabled() == (up.reason in CONTINUABLE)
    rows[-1][0].click()  # Go to: the slice where the run stopped
    assert widget.current_slice() == SliceRef(0, z - 1)

    before = {i for i, m in pending.masks.items() if m.any()}
    rows[-1][1].click()  # Continue past it: bounded by the range
    qtbot.waitUntil(lambda: not panel.running, timeout=300_000)
    more = panel.pending
    filled = {i for i, m in more.masks.items() if m.any()}
    assert filled == before | set(range(first, z))
    assert set(more.stops) == {up, DirectionStop(-1, first - 1, StopReason.END, first)}
    assert "went to" in panel.info.text()
    lower = {stop.direction: more_button for stop, _, more_button in panel.stops_view.rows}
    assert not lower[-1].isEnabled()  # the range's end: nothing to continue
    preview = viewer.layers["MedSAM preview"].data
    assert all(preview[i].any() for i in filled)  # the continued slices streamed in too
    assert np.array_equal(target.data, after_2d)  # nothing written before Accept 3D

    # Cut here: the object "ends" on the second slice above the anchor
    upper = sorted(i for i in filled if i > z)
    assert len(upper) >= 2 and panel.cut_button.isEnabled()
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    panel.cut_here()  # on the accepted slice: refused
    assert "one of your accepted slices" in warnings[-1] and panel.pending is more
    cut_at = upper[1]
    viewer.dims.set_point(0, layer.data_to_world((cut_at, 0, 0))[0])
    panel.cut_here()
    cut = panel.pending
    kept = {i for i, m in cut.masks.items() if m.any()}
    assert kept == {i for i in filled if i < cut_at}
    assert set(cut.stops) == {DirectionStop(+1, cut_at, StopReason.CUT, cut_at - 1),
                              DirectionStop(-1, first - 1, StopReason.END, first)}
    assert f"Towards higher slices stopped at {cut_at} (cut by you)." in panel.info.text()
    assert widget.annotation.outside_slices(more.label, 0) == {cut_at}  # remembered
    assert panel.marks.text() == (f"Cut at {cut_at} (axis 0): runs of object {more.label} "
                                  "stop there.") and panel.forget_button.isEnabled()
    assert not any(preview[i].any() for i in filled - kept)  # gone from the preview
    assert all(preview[i].any() for i in kept)
    filled = kept

    assert panel.accept() > 0
    assert panel.stops_view.rows == [] and not panel.cut_button.isEnabled()
    written = {int(i) for i in np.flatnonzero((target.data == more.label).any(axis=(1, 2)))}
    assert written == filled | {z}
    assert widget.annotation.anchors[(more.label, 0)] == {z}  # Accept 3D painted no anchor

    # Propagate again: the run upwards ends on the slice cut at, not past it
    panel.propagate()
    qtbot.waitUntil(lambda: not panel.running, timeout=300_000)
    again = panel.pending
    assert DirectionStop(+1, cut_at, StopReason.BARRIER, cut_at - 1) in again.stops
    assert max(_filled(again)) < cut_at
    assert f"Towards higher slices stopped at {cut_at} (marked outside)." in panel.info.text()
    panel.reject()

    # another object drawn (never accepted) only on a slice it was cut at: one message
    other, kept_slice = more.label + 1, target.data[cut_at].copy()
    target.data[cut_at][reference[cut_at] == KIDNEY_LEFT] = other
    widget.annotation.mark_outside(other, 0, cut_at)
    widget.annotation.label = other
    panel.propagate()
    assert not panel.running and panel.pending is None
    assert warnings[-1].startswith(f"MedSAM: you cut object {other} at slice {cut_at}: it is "
                                   "marked outside the object")
    target.data[cut_at] = kept_slice
    widget.annotation.label = more.label

    panel.forget_cuts()
    assert widget.annotation.outside_slices(more.label, 0) == frozenset()
    assert panel.marks.text() == "" and not panel.forget_button.isEnabled()

    target.undo()  # one step takes the propagation and its continuation back
    assert np.array_equal(target.data, after_2d)


def test_learning_from_too_few_accepted_slices_says_so_and_propagates_as_before(
        sample_ct_widget, qtbot):
    viewer, widget, layer, reference = sample_ct_widget
    reference = np.asarray(reference)
    z = ABDOMEN_CROP.start + KIDNEY_ANCHOR
    _accept_box(viewer, widget, layer, qtbot, z, reference[z] == KIDNEY_LEFT)
    panel = widget.volume_panel
    assert panel.learn_check.isEnabled()  # the test extra holds the export extra (torch)
    panel.learn_check.setChecked(True)
    panel.range_check.setChecked(True)
    panel.first_spin.setValue(z - 2)
    panel.last_spin.setValue(z + 2)
    panel.propagate()
    qtbot.waitUntil(lambda: not panel.running, timeout=300_000)
    pending = panel.pending
    assert pending is not None and any(m.any() for m in pending.masks.values())
    lines = panel.info.text().splitlines()
    assert lines[-1] == ("Not adapted: learning needs 3 accepted slices of the object along "
                         "this axis (two to learn from, one to check); it has 1")
    assert lines == list(pending.lines) and lines[0].startswith(f"Object {pending.label}: ")

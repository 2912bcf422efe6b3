"""Crash recovery on a real CT: the store (no Qt), the row mirror, and autosave -> crash ->
restore in real napari viewers with the Segment widget."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
from helpers import case_dir, label_names

from napari_medsam.engine.disk_cache import array_digest
from napari_medsam.io import read_volume
from napari_medsam.io import recovery as recovery_mod
from napari_medsam.io.labels_mirror import LabelsMirror
from napari_medsam.io.recovery import (
    RecoveryError,
    RecoverySnapshot,
    RecoveryStore,
)

CASE = "totalseg_ct_abdomen_sm"
SPLEEN, KIDNEY_R, LIVER = 1, 2, 5
GEOMETRY = ("spacing", "origin", "direction", "shape")


@pytest.fixture(scope="module")
def scan():
    """(image Volume, reference labels as uint16, label names) of the small abdomen CT."""
    folder = case_dir(CASE)
    image = read_volume(folder / "image.nii.gz")
    reference = read_volume(folder / "label.nii.gz").array.astype(np.uint16)
    return image, reference, label_names(CASE)


def _snapshot(image, labels, names, **extra) -> RecoverySnapshot:
    metadata = image.metadata()
    metadata["label_names"] = names
    return RecoverySnapshot(image_digest=array_digest(image.array), labels=labels,
                            layer_name="image labels", metadata=metadata, **extra)


# ---------------------------------------------------------------- store (no Qt)
def test_round_trip_is_exact_with_names_colours_and_geometry(scan, tmp_path):
    image, reference, names = scan
    store = RecoveryStore(tmp_path)
    colors = {None: (0.0, 0.0, 0.0, 0.0), LIVER: (0.9, 0.5, 0.4, 1.0), SPLEEN: (0.2, 0.3, 1, 1)}
    snapshot = _snapshot(image, reference, names, colors=colors, scale=image.display_scale,
                         translate=image.display_translate)
    path = store.save(snapshot)
    assert path == tmp_path / f"{snapshot.image_digest}.npz"
    assert path.stat().st_size < reference.nbytes / 20  # compressed

    info = store.find(snapshot.image_digest)
    assert info is not None and info.layer_name == "image labels"
    assert info.object_count == len(np.unique(reference)) - 1
    assert info.voxel_count == int(np.count_nonzero(reference))
    assert info.shape == reference.shape and info.time == pytest.approx(snapshot.time)

    back = store.load(snapshot.image_digest)
    assert back is not None
    assert back.labels.dtype == reference.dtype and np.array_equal(back.labels, reference)
    assert back.label_names == names and back.metadata["label_names"] == names
    for key in GEOMETRY:
        assert back.metadata[key] == image.metadata()[key]
    assert back.colors == {k: tuple(float(c) for c in v) for k, v in colors.items()}
    assert back.scale == pytest.approx(image.display_scale)
    assert back.translate == pytest.approx(image.display_translate)

    assert store.find("0" * 32) is None  # another scan has none
    assert store.discard(snapshot.image_digest) and not path.exists()
    assert store.find(snapshot.image_digest) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_file_is_ignored_with_one_warning(scan, tmp_path, caplog, damage):
    image, reference, names = scan
    store = RecoveryStore(tmp_path)
    snapshot = _snapshot(image, reference, names)
    path = store.save(snapshot)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) * 2 // 3]
    elif damage == "flip":  # inside the compressed labels: the zip CRC catches it
        middle = len(raw) // 2
        raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    else:
        raw = bytearray(b"not a recovery file at all" * 10)
    path.write_bytes(bytes(raw))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_medsam.io.recovery"):
        found = store.find(snapshot.image_digest)
        loaded = store.load(snapshot.image_digest)
    assert loaded is None
    if damage != "flip":  # a flip in the labels leaves the small JSON part readable
        assert found is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "damaged recovery file" in warnings[0].getMessage()
    assert warnings[0].exc_info is None  # a line, not a traceback


def test_short_write_keeps_the_previous_good_file(scan, tmp_path, monkeypatch):
    image, reference, names = scan
    store = RecoveryStore(tmp_path)
    first = store.save(_snapshot(image, reference, names))
    before = first.read_bytes()
    edited = reference.copy()
    edited[edited == SPLEEN] = 0

    real = recovery_mod.write_payload

    def short_write(file, labels, meta_json):
        real(file, labels, meta_json)
        file.truncate(file.tell() // 2)  # the disk filled up half way

    monkeypatch.setattr(recovery_mod, "write_payload", short_write)
    with pytest.raises(RecoveryError):
        store.save(_snapshot(image, edited, names))
    assert first.read_bytes() == before
    back = store.load(array_digest(image.array))
    assert back is not None and np.array_equal(back.labels, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temporary left

    monkeypatch.setattr(recovery_mod, "write_payload", real)
    crashed = tmp_path / f".{first.stem}.0123456789.tmp"  # left by a crash during a write
    crashed.write_bytes(before[:100])
    os.utime(crashed, (time.time() - 7200, time.time() - 7200))
    store.save(_snapshot(image, edited, names))
    assert not crashed.exists()
    assert np.array_equal(store.load(array_digest(image.array)).labels, edited)


def test_mirror_copies_only_the_changed_rows(scan):
    _, reference, _ = scan
    data = reference.copy()
    mirror = LabelsMirror.of(data)
    assert np.array_equal(mirror.base, data) and mirror.base is not data
    z = int((reference == LIVER).sum(axis=(1, 2)).argmax())
    data[z][data[z] == LIVER] = 50  # one slice edited...
    mirror.mark_rows(z, z + 1)
    assert mirror.refresh(data) == (False, 1)  # ...one row copied
    assert np.array_equal(mirror.base, data)

    data[z][data[z] == 50] = LIVER  # an undo: napari does not say where
    mirror.mark_unknown()
    assert mirror.refresh(data) == (True, 1)  # found and copied that one row
    assert np.array_equal(mirror.base, data)
    mirror.mark_unknown()  # only a new slice on display: nothing differs
    assert mirror.refresh(data) == (False, 0)

    data[:] = 0
    mirror.mark_all()
    mirror.refresh(data)
    assert not mirror.base.any()


def test_mirror_made_while_the_labels_are_edited(scan):
    """The copy is made on a worker: edits made meanwhile are marked, refresh fixes them."""
    _, reference, _ = scan
    data = np.zeros_like(reference)
    mirror = LabelsMirror(data.shape, data.dtype)
    assert not mirror.ready
    copy_of_empty = LabelsMirror.copy_of(data)
    spleen = reference == SPLEEN
    data[spleen] = SPLEEN  # an accept while the copy was being made
    mirror.mark_row_mask(spleen.any(axis=(1, 2)))
    mirror.set_base(*copy_of_empty)
    assert mirror.ready and not mirror.base.any()
    differed, copied = mirror.refresh(data)
    assert not differed and copied == int(spleen.any(axis=(1, 2)).sum())
    assert np.array_equal(mirror.base, data)
    data[spleen] = 0  # the undo of that accept is found among the rows edited before
    mirror.mark_unknown()
    assert mirror.refresh(data)[0] and not mirror.base.any()


def test_rows_of_napari_paint_events(scan):
    from napari.layers import Labels

    from napari_medsam.segmentation.annotation_paint import rows_of_edit

    _, reference, _ = scan
    layer = Labels(reference.copy())
    seen = []
    layer.events.paint.connect(lambda event: seen.append(rows_of_edit(event.value, 30)))

    def changed_rows(edit):
        before = layer.data.copy()
        seen.clear()
        edit()
        rows = np.flatnonzero((before != layer.data).any(axis=(1, 2)))
        (ranges,) = seen
        covered = set()
        for start, stop in ranges:
            covered.update(range(start, stop))
        assert set(rows.tolist()) <= covered and len(covered) <= len(rows) + 2
        return ranges

    spleen = np.nonzero(reference == SPLEEN)
    changed_rows(lambda: layer.data_setitem(spleen, 60))  # the widget's accept
    layer.selected_label = 61
    layer.brush_size = 5
    z = int(spleen[0][0])
    changed_rows(lambda: layer.paint((z, 50, 60), 61))  # a brush dab on slice z
    changed_rows(lambda: layer.fill((z, 50, 60), 62))


# ---------------------------------------------------------------- widget (real viewers)
@pytest.fixture
def store(tmp_path, monkeypatch):
    """Recovery files of this test only (the model stays in the session's cache)."""
    root = tmp_path / "recovery"
    monkeypatch.setattr(recovery_mod, "recovery_dir", lambda: root)
    return RecoveryStore(root)


def _open(make_napari_viewer, qtbot):
    """A fresh viewer with the real scan read from disk and the Segment widget."""
    from napari_medsam._qt.widget import SegmentWidget
    from napari_medsam._reader import read_layers

    viewer = make_napari_viewer()
    ((data, kwargs, kind),) = read_layers(case_dir(CASE) / "image.nii.gz")
    assert kind == "image"
    image = viewer.add_image(data, **kwargs)
    widget = SegmentWidget(viewer, device="cpu")
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.session is not None, timeout=120_000)
    qtbot.waitUntil(lambda: widget.recovery.autosaver.digest is not None, timeout=30_000)
    return viewer, widget, image


def _rows(mask):
    return np.flatnonzero(mask.any(axis=(1, 2)))


@pytest.mark.gui
def test_autosave_crash_restore_then_save(make_napari_viewer, qtbot, litemedsam, store, scan,
                                          tmp_path):
    from napari.utils.colormaps import DirectLabelColormap
    from qtpy.QtCore import Qt

    _, reference, _ = scan
    viewer, widget, image = _open(make_napari_viewer, qtbot)
    assert widget.recovery.isHidden()  # nothing to offer for this scan
    digest = widget.recovery.autosaver.digest
    assert digest == array_digest(image.data)
    labels = widget.target_labels()
    labels.metadata["label_names"] = {LIVER: "liver", SPLEEN: "spleen"}
    colors = {None: "transparent", LIVER: "orange", SPLEEN: "blue"}
    labels.colormap = DirectLabelColormap(color_dict=colors)

    # five accepted slices (two objects): the batch rule autosaves on its own
    autosaver = widget.recovery.autosaver
    edited = [(LIVER, z) for z in _rows(reference == LIVER)[:3]]
    edited += [(SPLEEN, z) for z in _rows(reference == SPLEEN)[-2:]]
    with qtbot.waitSignal(autosaver.written, timeout=60_000):
        for label, z in edited:
            ys, xs = np.nonzero(reference[z] == label)
            labels.data_setitem((np.full_like(ys, z), ys, xs), label)
    assert autosaver.last_rows == len(edited)  # the snapshot copied only the edited slices
    info = store.find(digest)
    assert info is not None and info.object_count == 2

    # the rest of the liver, then a direct autosave (the timer's job)
    labels.data_setitem(np.nonzero(reference == LIVER), LIVER)
    with qtbot.waitSignal(autosaver.written, timeout=60_000):
        autosaver.autosave()
    expected = labels.data.copy()
    assert not autosaver.needs_write
    with qtbot.assertNotEmitted(autosaver.written, wait=500):
        autosaver.autosave()  # nothing new to write
    assert set(np.unique(expected)) == {0, SPLEEN, LIVER}

    viewer.close()  # the crash: no Save labels, no shutdown

    viewer2, widget2, image2 = _open(make_napari_viewer, qtbot)
    bar = widget2.recovery
    qtbot.waitUntil(lambda: bar.offered, timeout=30_000)
    assert not bar.isHidden() and "2 objects" in bar.text.text()
    assert bar.autosaver.paused
    layers_before = len(viewer2.layers)
    qtbot.mouseClick(bar.restore_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(viewer2.layers) == layers_before + 1 and not bar.offered,
                    timeout=30_000)
    restored = widget2.target_labels(create=False)
    assert restored is viewer2.layers[-1] and restored.name == labels.name
    assert widget2.labels_combo.currentText() == restored.name
    assert restored.data.dtype == expected.dtype and np.array_equal(restored.data, expected)
    assert restored.scale.tolist() == image2.scale.tolist()
    assert restored.translate.tolist() == image2.translate.tolist()
    for key in GEOMETRY:
        assert restored.metadata[key] == image2.metadata[key]
    assert restored.metadata["label_names"] == {LIVER: "liver", SPLEEN: "spleen"}
    assert isinstance(restored.colormap, DirectLabelColormap)
    for label in (LIVER, SPLEEN):
        assert np.allclose(restored.get_color(label), labels.get_color(label))
    assert bar.isHidden() and not bar.autosaver.paused
    assert store.find(digest) is not None  # kept until the labels are saved

    saved = widget2.save(tmp_path / "restored.nii.gz")
    assert saved is not None and read_volume(saved).array.tolist() == expected.tolist()
    assert store.find(digest) is None and not store.path_for(digest).exists()
    widget2.shutdown()
    assert store.find(digest) is None  # saved: closing writes no autosave

    _, widget3, _ = _open(make_napari_viewer, qtbot)
    assert not widget3.recovery.offered and widget3.recovery.isHidden()
    widget3.shutdown()


@pytest.mark.gui
def test_close_autosaves_only_when_changed_and_discard(make_napari_viewer, qtbot, litemedsam,
                                                       store, scan):
    from qtpy.QtCore import Qt

    _, reference, _ = scan
    viewer, widget, image = _open(make_napari_viewer, qtbot)
    digest = widget.recovery.autosaver.digest
    labels = widget.target_labels()
    kidney = np.nonzero(reference == KIDNEY_R)
    labels.data_setitem(kidney, KIDNEY_R)  # one edit: below the batch, timer not run out
    assert store.find(digest) is None
    widget.shutdown()  # closing: the last autosave
    back = store.load(digest)
    assert back is not None and np.array_equal(back.labels, labels.data)
    mtime = store.path_for(digest).stat().st_mtime_ns

    viewer2, widget2, _ = _open(make_napari_viewer, qtbot)
    bar = widget2.recovery
    qtbot.waitUntil(lambda: bar.offered, timeout=30_000)
    assert "1 object " in bar.text.text()
    # edits while the offer is open never overwrite the offered file
    labels2 = widget2.target_labels()
    spleen = np.nonzero(reference == SPLEEN)
    labels2.data_setitem(spleen, SPLEEN)
    assert not bar.autosaver.autosave()
    assert store.path_for(digest).stat().st_mtime_ns == mtime
    qtbot.mouseClick(bar.discard_button, Qt.LeftButton)
    assert bar.isHidden() and not store.path_for(digest).exists()
    with qtbot.waitSignal(bar.autosaver.written, timeout=60_000):
        bar.autosaver.autosave()  # autosave resumed: the new work is kept
    assert np.array_equal(store.load(digest).labels, labels2.data)
    qtbot.wait(50)  # Ctrl+Z comes in a later event-loop pass
    labels2.undo()  # napari does not say which slices an undo changed: a worker finds them
    assert not labels2.data.any()
    with qtbot.waitSignal(bar.autosaver.written, timeout=60_000):
        bar.autosaver.autosave()
    assert bar.autosaver.last_rows == len(_rows(reference == SPLEEN))
    assert store.find(digest).object_count == 0 and not store.load(digest).labels.any()
    mtime = store.path_for(digest).stat().st_mtime_ns
    viewer2.dims.set_current_step(0, 3)  # looking at other slices changes nothing
    widget2.shutdown()
    assert store.path_for(digest).stat().st_mtime_ns == mtime

"""The on-disk embedding cache: content keys, float16 round trips, size, clearing, pruning."""

from __future__ import annotations

import logging
import os
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fakes import FakeModel
from helpers import CORRUPTIONS, corrupt_slice_file, dice, largest_slice, load_case, tight_box

from napari_medsam.engine import backends, cache_lock, disk_cache
from napari_medsam.engine.disk_cache import DiskEmbeddingStore, array_digest, volume_key
from napari_medsam.engine.protocol import Embedding


@pytest.fixture(scope="module")
def ct():
    volume, reference, mapped = load_case("totalseg_ct_abdomen_sm")
    return volume.array, reference, mapped


def _fake_model(precision: str = "f32") -> FakeModel:
    return FakeModel(precision=precision)


def test_digest_follows_content_not_identity(ct):
    array = ct[0]
    digest = array_digest(array)
    assert digest == array_digest(array.copy())
    changed = array.copy()
    changed[5, 50, 60] += 1
    assert array_digest(changed) != digest
    # dtype and shape are part of the content
    assert array_digest(array.view(np.uint16)) != digest
    assert array_digest(array.reshape(array.shape[0], -1)) != digest
    # a non-contiguous view hashes like its contiguous copy (no full copy needed)
    view = array[:, ::2]
    assert not view.flags.c_contiguous
    assert array_digest(view) == array_digest(np.ascontiguousarray(view))


def test_key_depends_on_axis_mapping_model_and_precision(ct):
    array = ct[0]
    digest = array_digest(array)
    base = volume_key(array, 0, "ct_window:abdomen:-160:240", _fake_model(), image_digest=digest)
    others = [
        volume_key(array, 1, "ct_window:abdomen:-160:240", _fake_model(), image_digest=digest),
        volume_key(array, 0, "ct_window:liver:-45:105", _fake_model(), image_digest=digest),
        volume_key(array, 0, "ct_window:abdomen:-160:240", _fake_model("bf16"),
                   image_digest=digest),
    ]
    assert len({base.digest, *(k.digest for k in others)}) == 4
    assert base == volume_key(array.copy(), 0, "ct_window:abdomen:-160:240", _fake_model())
    assert len(base.model_sha256) == 64


def test_store_round_trip_keeps_the_mask(ct, litemedsam, tmp_path):
    array, reference, mapped = ct
    z = largest_slice(reference, 5)
    box = tight_box(reference[z] == 5)
    store = DiskEmbeddingStore.for_volume(array, 0, "abdomen", litemedsam, root=tmp_path)
    fresh = litemedsam.embed(mapped[z])
    assert store.get(z) is None and z not in store
    store.put(z, fresh)
    assert z in store and store.indices() == [z]
    assert not [p for p in store.directory.iterdir() if "tmp" in p.name]  # atomic writes

    again = DiskEmbeddingStore.for_volume(array, 0, "abdomen", litemedsam, root=tmp_path)
    loaded = again.get(z)
    assert loaded.features.dtype == np.float16 and loaded.features.shape == (1, 256, 64, 64)
    assert loaded.original_size == fresh.original_size == mapped[z].shape
    assert loaded.resized_size == fresh.resized_size and loaded.model == fresh.model
    assert np.abs(loaded.features.astype(np.float32) - fresh.features).max() <= 2e-3
    ref_mask = litemedsam.predict(fresh, box=box).mask
    assert dice(litemedsam.predict(loaded, box=box).mask, ref_mask) >= 0.99
    assert again.hits == 1 and (store.directory / "meta.json").is_file()


def test_damaged_or_foreign_files_are_misses(tmp_path):
    array = np.zeros((4, 20, 30), dtype=np.int16)
    store = DiskEmbeddingStore(volume_key(array, 0, "k", _fake_model()), 256, tmp_path)
    store.put(1, np.ones((1, 256, 64, 64), np.float32))
    store.slice_path(2).write_bytes(b"not a numpy file")
    with open(store.slice_path(3), "wb") as fh:  # a plain .npy under the slice's name
        np.save(fh, np.ones((1, 256, 64, 64), np.float16))
    assert store.get(1) is not None
    assert store.get(2) is None and store.get(3) is None
    assert store.indices() == [1]  # the bad files are gone
    with pytest.raises(IndexError):
        store.put(4, np.ones((1, 256, 64, 64), np.float32))
    wrong = Embedding(np.ones((1, 256, 64, 64), np.float32), (20, 30), (171, 256), 256, "other")
    with pytest.raises(ValueError, match="other"):
        store.put(0, wrong)


def _filled(root, n_volumes: int, slices: int = 2) -> list[DiskEmbeddingStore]:
    stores = []
    for v in range(n_volumes):
        array = np.full((slices, 8, 8), v, dtype=np.int16)
        store = DiskEmbeddingStore(volume_key(array, 0, "k", _fake_model()), 256, root)
        for i in range(slices):
            store.put(i, np.zeros((1, 256, 64, 64), np.float16))
        stamp = time.time() - 100 * (n_volumes - v)  # volume 0 is the oldest
        os.utime(store.directory / "meta.json", (stamp, stamp))
        stores.append(store)
    return stores


def test_size_info_clear(tmp_path):
    stores = _filled(tmp_path, 2)
    one = 256 * 64 * 64 * 2
    total = disk_cache.cache_size(tmp_path)
    assert 4 * one <= total <= 4 * one + 8192
    entries = disk_cache.cache_entries(tmp_path)
    assert [e.path for e in entries] == [stores[1].directory, stores[0].directory]
    assert entries[0].slices == 2 and entries[0].meta["shape"] == [2, 8, 8]
    assert disk_cache.clear_cache(tmp_path) == total
    assert disk_cache.cache_size(tmp_path) == 0 and stores[0].get(0) is None


def test_prune_removes_least_recently_used_first(tmp_path):
    stores = _filled(tmp_path, 3)
    per_volume = stores[0].nbytes
    freed = disk_cache.prune(int(1.5 * per_volume), tmp_path, keep=stores[0].directory)
    # oldest first, but volume 0 is protected (the one being filled): 1 goes, then 2
    assert [e.path for e in disk_cache.cache_entries(tmp_path)] == [stores[0].directory]
    assert freed == 2 * per_volume
    stores = _filled(tmp_path / "other", 3)
    disk_cache.prune(2 * per_volume, tmp_path / "other")
    assert [e.path for e in disk_cache.cache_entries(tmp_path / "other")] == [
        stores[2].directory, stores[1].directory]
    disk_cache.prune(0, tmp_path)
    assert disk_cache.cache_entries(tmp_path) == []


def test_embeddings_live_under_the_user_cache(model_cache):
    assert disk_cache.embeddings_dir() == model_cache / "embeddings"


def test_default_cache_budget_from_available_memory(monkeypatch, tmp_path):
    gib = 1024**3
    assert backends.default_cache_bytes(1 * gib) == 256 * 1024**2  # clamped up
    assert backends.default_cache_bytes(3 * gib) == 768 * 1024**2  # a quarter
    assert backends.default_cache_bytes(64 * gib) == 2 * gib  # clamped down
    monkeypatch.setattr(backends, "available_memory_bytes", lambda: None)
    assert backends.default_cache_bytes() == 512 * 1024**2
    monkeypatch.undo()
    real = backends.default_cache_bytes()
    assert 256 * 1024**2 <= real <= 2 * gib


def test_meminfo_is_read_without_psutil(monkeypatch, tmp_path):
    import builtins

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemAvailable:   3145728 kB\n")
    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    assert backends.available_memory_bytes(meminfo) == 3 * 1024**3
    assert backends.available_memory_bytes(tmp_path / "missing") is None


# -- corrupt slice files -----------------------------------------------------------------------
# (helpers.corrupt_slice_file damages them in each of the ways of helpers.CORRUPTIONS)

@pytest.fixture(scope="module")
def kidney(ct, litemedsam):
    """The right kidney's largest CT slice: its box, real embeddings of that slice and of
    slice 0, and the mask from the fresh embedding (slice 0's embedding gives Dice ~0.26)."""
    array, reference, mapped = ct
    z = largest_slice(reference, 2)
    box = tight_box(reference[z] == 2)
    fresh, far = litemedsam.embed(mapped[z]), litemedsam.embed(mapped[0])
    mask = litemedsam.predict(fresh, box=box).mask
    assert dice(mask, reference[z] == 2) >= 0.85
    assert dice(litemedsam.predict(far, box=box).mask, mask) < 0.5
    return SimpleNamespace(array=array, z=z, box=box, fresh=fresh, far=far, mask=mask)


REASONS = {"nan": "damaged", "zeros": "damaged", "random": "damaged", "other_slice": "damaged",
           "copied_file": "it holds slice 0", "rewritten": "checksum mismatch",
           "truncated": "damaged"}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_bad_slice_file_is_reported_deleted_and_missed(kind, kidney, litemedsam, tmp_path,
                                                          caplog):
    store = DiskEmbeddingStore.for_volume(kidney.array, 0, "abdomen", litemedsam,
                                          root=tmp_path)
    z = kidney.z
    store.put(z, kidney.fresh)
    store.put(0, kidney.far)
    corrupt_slice_file(store, z, kind, other=0)
    with caplog.at_level(logging.WARNING, logger=disk_cache.__name__):
        assert store.get(z) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"slice {z} " in warnings[0] and REASONS[kind] in warnings[0]
    assert not store.slice_path(z).exists() and store.discarded == 1
    assert store.indices() == [0] and store.get(0) is not None  # the other slice is fine
    # stored again (as the session or `embed` does after the miss), it gives the right mask
    store.put(z, kidney.fresh)
    again = DiskEmbeddingStore.for_volume(kidney.array, 0, "abdomen", litemedsam,
                                          root=tmp_path).get(z)
    assert dice(litemedsam.predict(again, box=kidney.box).mask, kidney.mask) >= 0.99


def test_a_file_of_another_volume_is_rejected(kidney, litemedsam, tmp_path, caplog):
    store = DiskEmbeddingStore.for_volume(kidney.array, 0, "abdomen", litemedsam,
                                          root=tmp_path)
    other = DiskEmbeddingStore.for_volume(kidney.array, 0, "liver", litemedsam, root=tmp_path)
    other.put(kidney.z, kidney.far)
    store.directory.mkdir(parents=True)
    shutil.copyfile(other.slice_path(kidney.z), store.slice_path(kidney.z))
    with caplog.at_level(logging.WARNING, logger=disk_cache.__name__):
        assert store.get(kidney.z) is None
    assert "another volume" in caplog.text and other.get(kidney.z) is not None


def test_non_finite_embeddings_are_neither_written_nor_read(kidney, litemedsam, tmp_path,
                                                            caplog):
    store = DiskEmbeddingStore.for_volume(kidney.array, 0, "abdomen", litemedsam,
                                          root=tmp_path)
    bad = kidney.fresh.features.copy()
    bad[0, 5, 10, 10] = np.nan
    huge = kidney.fresh.features * 1e5  # finite in float32, inf in float16
    with caplog.at_level(logging.WARNING, logger=disk_cache.__name__):
        assert store.put(kidney.z, bad) is False and store.put(kidney.z, huge) is False
    assert store.indices() == [] and caplog.text.count("NaN or inf") == 2
    # a well-formed file with a valid checksum over non-finite values (another writer)
    store.put(kidney.z, kidney.fresh)
    disk_cache.write_slice_file(store.slice_path(kidney.z), huge, kidney.z, store.key.digest)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=disk_cache.__name__):
        assert store.get(kidney.z) is None
    assert "non-finite" in caplog.text


def test_put_recreates_a_removed_folder_and_its_meta(kidney, litemedsam, tmp_path):
    store = DiskEmbeddingStore.for_volume(kidney.array, 0, "abdomen", litemedsam,
                                          root=tmp_path / "embeddings")
    store.put(0, kidney.far)
    shutil.rmtree(store.directory)  # e.g. removed by hand while a session is open
    store.put(1, kidney.far)
    assert (store.directory / "meta.json").is_file() and store.verified_indices() == [1]
    shutil.rmtree(tmp_path / "embeddings")  # the whole root, lock file included
    store.put(2, kidney.far)
    assert (store.directory / "meta.json").is_file() and store.verified_indices() == [2]


# -- writers, clear and prune in two processes -------------------------------------------------

#: A second napari-medsam process writing embeddings of a real scan: ``embed`` runs a
#: VolumeEmbedder (the run holds the writer lock) and stops after its first slice until a
#: line arrives on stdin; ``puts`` writes slices one at a time like a session (the lock held
#: only while a slice is written); ``hold-exclusive`` holds the lock as a clear does.
WORKER = r'''
import sys
import time

import numpy as np

from fakes import FakeModel  # src_tests is on PYTHONPATH (the worker fixture)

from napari_medsam.engine.disk_cache import DiskEmbeddingStore
from napari_medsam.engine.volume_embedding import VolumeEmbedder
from napari_medsam.io import auto_mapping, read_volume

mode, root, image, features_path = sys.argv[1:5]

volume = read_volume(image)
mapping = auto_mapping(volume.array, volume.modality)
model = FakeModel(features=np.load(features_path))  # a real stored embedding
store = DiskEmbeddingStore.for_volume(volume.array, 0, mapping.key, model, root=root)
if mode == "embed":
    def progress(p):
        if p.done == 1:
            print("running", flush=True)
            sys.stdin.readline()

    summary = VolumeEmbedder(model, volume.array, mapping, 0, store=store).run(
        0, progress=progress)
    print("encoded", summary.encoded, flush=True)
elif mode == "puts":
    print("writing", flush=True)
    for n in range(int(sys.argv[5])):
        store.put(n % store.size, model.features)
        time.sleep(0.01)
    print("last", flush=True)
    sys.stdin.readline()
    store.put(store.size - 1, model.features)
elif mode == "hold-exclusive":
    from napari_medsam.engine.disk_cache import CacheLock

    with CacheLock(root, exclusive=True):
        print("holding", flush=True)
        sys.stdin.readline()
print("done", flush=True)
'''


@pytest.fixture
def worker(tmp_path, kidney):
    """Start :data:`WORKER` in a second process; every process started is ended."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    features = tmp_path / "features.npy"
    np.save(features, kidney.fresh.features.astype(np.float16))
    image = load_case.__globals__["case_dir"]("totalseg_ct_abdomen_sm") / "image.nii.gz"
    started = []
    tests = os.path.dirname(os.path.abspath(__file__))  # the worker imports the fakes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [tests, *filter(None, [os.environ.get("PYTHONPATH")])])}

    def start(mode: str, root, *extra) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(script), mode, str(root), str(image),
                                 str(features), *map(str, extra)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, encoding="utf-8",
                                errors="replace", env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_clear_is_refused_while_another_process_embeds(worker, tmp_path, monkeypatch,
                                                       capsys):
    from napari_medsam.cli import main
    from napari_medsam.paths import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # `embed --clear` and the panel clear it
    root = disk_cache.embeddings_dir()
    proc = worker("embed", root)
    assert proc.stdout.readline().strip() == "running"  # one slice stored, the run goes on
    (entry,) = disk_cache.cache_entries(root)
    assert entry.slices == 1 and (entry.path / "meta.json").is_file()

    with pytest.raises(disk_cache.CacheBusyError) as error:
        disk_cache.clear_cache(root, wait=0.2)
    message = (f"another napari-medsam process is writing embeddings in {root}; "
               "try again when it has finished")
    assert str(error.value) == message
    assert disk_cache.prune(0, root, wait=0.1) == 0  # pruning skips too
    # `napari-medsam embed --clear`: one line, exit code 1
    capsys.readouterr()
    assert main(["embed", "--clear"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"napari-medsam embed: error: {message}\n"
    assert "cleared" not in captured.out
    # the Embed panel's clear button: a notification, not a traceback
    notes = _clear_with_the_panel(monkeypatch)
    assert notes["warnings"] == [f"MedSAM: disk cache not cleared: {message}"]
    assert notes["image_changes"] == 0 and "not cleared" in notes["info"]
    assert disk_cache.cache_entries(root)[0].slices >= 1

    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "encoded 30" in out
    (entry,) = disk_cache.cache_entries(root)
    store = DiskEmbeddingStore(_key_of(entry), 256, root)
    assert (entry.path / "meta.json").is_file() and store.verified_indices() == list(range(30))
    # once it has finished, clearing works
    assert main(["embed", "--clear"]) == 0 and "cleared" in capsys.readouterr().out
    assert disk_cache.cache_size(root) == 0
    notes = _clear_with_the_panel(monkeypatch)
    assert notes["warnings"] == [] and notes["image_changes"] == 1


def _key_of(entry) -> disk_cache.VolumeKey:
    meta = entry.meta
    key = disk_cache.VolumeKey(meta["image_blake2b"], tuple(meta["shape"]), meta["axis"],
                               meta["mapping"], meta["model"], meta["model_sha256"],
                               meta["precision"])
    assert key.digest == entry.path.name
    return key


def _clear_with_the_panel(monkeypatch) -> dict:
    """Press the Embed panel's clear button (its handler on a stand-in panel)."""
    from napari_medsam._qt import embed_panel as _embed_panel

    notes = {"warnings": [], "image_changes": 0, "info": ""}
    monkeypatch.setattr(_embed_panel, "show_warning", notes["warnings"].append)
    monkeypatch.setattr(_embed_panel, "show_error", notes["warnings"].append)

    def image_change() -> None:
        notes["image_changes"] += 1

    def set_info(text: str) -> None:
        notes["info"] = text

    panel = SimpleNamespace(running=False, session_reset=SimpleNamespace(emit=image_change),
                            info=SimpleNamespace(setText=set_info),
                            refresh_disk_size=lambda: None)
    _embed_panel.EmbedPanel.clear_disk_cache(panel)
    return notes


def test_meta_json_is_in_every_slice_folder_after_clears_during_writes(worker, tmp_path):
    import threading

    root = tmp_path / "embeddings"
    proc = worker("puts", root, 60)  # 60 slices, one every ~15 ms, then one more when told
    assert proc.stdout.readline().strip() == "writing"
    stop = threading.Event()
    counts = {"cleared": 0, "busy": 0}

    def clear_again_and_again() -> None:
        while not stop.is_set():
            try:
                disk_cache.clear_cache(root, wait=0.05)
            except disk_cache.CacheBusyError:
                counts["busy"] += 1
            else:
                counts["cleared"] += 1
            time.sleep(0.005)

    clearer = threading.Thread(target=clear_again_and_again)
    clearer.start()
    try:
        assert proc.stdout.readline().strip() == "last"
    finally:
        stop.set()
        clearer.join()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "done"
    assert counts["cleared"] >= 3  # clears really ran between the writes
    entries = disk_cache.cache_entries(root)
    assert len(entries) == 1  # the slice written after the last clear
    for entry in entries:
        assert (entry.path / "meta.json").is_file() and entry.slices >= 1
        store = DiskEmbeddingStore(_key_of(entry), 256, root)
        assert store.verified_indices() == store.indices()
        assert not [p for p in entry.path.iterdir() if "tmp" in p.name]


def test_a_writer_waits_for_a_clear_by_another_process(worker, kidney, litemedsam, tmp_path,
                                                       monkeypatch, caplog):
    from napari_medsam.io.intensity import mapping_from_name
    from napari_medsam.segmentation import SegmentationSession, SliceRef

    mapping = mapping_from_name("abdomen")
    root = tmp_path / "embeddings"
    monkeypatch.setattr(disk_cache, "embeddings_dir", lambda: root)
    monkeypatch.setattr(cache_lock, "WRITE_LOCK_TIMEOUT", 0.3)
    store = DiskEmbeddingStore.for_volume(kidney.array, 0, "abdomen", litemedsam, root=root)
    proc = worker("hold-exclusive", root)
    assert proc.stdout.readline().strip() == "holding"
    with pytest.raises(disk_cache.CacheBusyError, match="clearing the embeddings"):
        store.put(0, kidney.far)
    # a session still segments (the slice is just not written to disk)
    session = SegmentationSession(litemedsam, kidney.array, mapping, disk_cache=True)
    with caplog.at_level(logging.WARNING):
        mask = session.predict(SliceRef(0, kidney.z), box=kidney.box, zoom=False).mask
    assert "not written to the disk cache" in caplog.text and mask.sum() > 100
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.communicate(timeout=60)
    assert store.put(0, kidney.far) and store.verified_indices() == [0]


def test_without_fcntl_there_is_no_lock(monkeypatch, tmp_path):
    monkeypatch.setattr(cache_lock, "fcntl", None)
    lock = disk_cache.CacheLock(tmp_path, exclusive=True, timeout=0).acquire()
    assert not lock.held
    with disk_cache.CacheLock(tmp_path, exclusive=True, timeout=0) as other:
        assert not other.held
    lock.release()

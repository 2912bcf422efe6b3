"""The on-disk embedding cache: content keys, float16 round trips, size, clearing, pruning."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import dice, largest_slice, load_case, tight_box

from napari_medsam.engine import backends, disk_cache
from napari_medsam.engine.disk_cache import DiskEmbeddingStore, array_digest, volume_key
from napari_medsam.engine.protocol import Embedding
from napari_medsam.models.registry import get_spec


@pytest.fixture(scope="module")
def ct():
    volume, reference, mapped = load_case("totalseg_ct_abdomen_sm")
    return volume.array, reference, mapped


def _fake_model(precision: str = "f32"):
    return SimpleNamespace(name="litemedsam", spec=get_spec("litemedsam"), precision=precision)


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
    (store.directory / "00002.npy").write_bytes(b"not a numpy file")
    np.save(store.directory / "00003.npy", np.ones((3, 3), np.float16))
    assert store.get(1) is not None
    assert store.get(2) is None and store.get(3) is None
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

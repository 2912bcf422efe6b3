"""Whole-volume embedding: order, disk cache reuse, cancelling, memory cache, encode plans."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import CountingModel, FakeAsyncEncoder, FakeModel
from helpers import corrupt_slice_file, dice, load_case, tight_box

from napari_medsam.engine import load_model
from napari_medsam.engine import providers as prov
from napari_medsam.engine.cache import EmbeddingCache
from napari_medsam.engine.disk_cache import DiskEmbeddingStore
from napari_medsam.engine.preprocess import preprocess_slice
from napari_medsam.engine.volume_embedding import (
    EncodePlan,
    VolumeEmbedder,
    embed_volume,
    encode_plan,
    slice_order,
)
from napari_medsam.io.intensity import mapping_from_name

MB2 = 256 * 64 * 64 * 2  # one LiteMedSAM embedding in float16


@pytest.fixture(scope="module")
def ct(ct_liver_crop):
    """Six real CT slices through the liver, their reference labels and the CT mapping."""
    return ct_liver_crop


@pytest.fixture(scope="module")
def ov_model(litemedsam):
    from napari_medsam.engine.backends import openvino_available

    if not openvino_available():
        pytest.skip("openvino not installed (napari-medsam[openvino])")
    return load_model("litemedsam", device="cpu", backend="openvino")


def test_slice_order_is_current_first_then_outward():
    assert slice_order(7, 3) == [3, 4, 2, 5, 1, 6, 0]
    assert slice_order(4, 0) == [0, 1, 2, 3]
    assert slice_order(4, 3) == [3, 2, 1, 0]
    assert slice_order(3, 99) == [2, 1, 0] and slice_order(0, 0) == []


def test_reopening_a_scan_needs_no_encoder_call(ct, ov_model, tmp_path):
    array, reference, mapping = ct
    model = CountingModel(ov_model)
    seen = []
    first = embed_volume(model, array, mapping, 0, start=2,
                         store=DiskEmbeddingStore.for_volume(array, 0, mapping.key, model,
                                                             root=tmp_path),
                         progress=seen.append)
    assert first.encoded == model.calls == 6 and not first.cancelled
    assert seen[0].index == 2 and {p.index for p in seen} == set(range(6))
    assert seen[-1].done == 6 and seen[-1].eta_s == 0 and seen[-1].rate > 0
    assert "6/6 slices" in seen[-1].describe()

    # the same scan read again (a new array with the same content) in a new embedder
    model.calls = 0
    reopened = array.copy()
    store = DiskEmbeddingStore.for_volume(reopened, 0, mapping.key, model, root=tmp_path)
    again = VolumeEmbedder(model, reopened, mapping, 0, store=store)
    summary = again.run(start=0)
    assert summary.encoded == 0 and summary.from_disk == 6 and model.calls == 0
    assert again.missing() == []

    # stored embeddings give the same masks as a fresh interactive embedding
    z = int((reference == 5).sum(axis=(1, 2)).argmax())
    box = tight_box(reference[z] == 5)
    fresh = ov_model.predict(ov_model.embed(mapping.apply(array[z])), box=box).mask
    assert dice(ov_model.predict(store.get(z), box=box).mask, fresh) >= 0.99

    # another window is another cache entry
    other = mapping_from_name("liver")
    assert other.key != mapping.key
    assert DiskEmbeddingStore.for_volume(array, 0, other.key, model, root=tmp_path
                                         ).indices() == []


def test_cancel_keeps_what_is_done_and_resumes(ct, tmp_path):
    array, _, mapping = ct
    model = FakeModel([prov.CPU])
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    progress = []
    summary = VolumeEmbedder(model, array, mapping, 0, store=store).run(
        start=5, progress=progress.append, cancel=lambda: len(progress) >= 2)
    assert summary.cancelled and summary.done == 2 == summary.encoded == len(model.shapes)
    assert store.indices() == [4, 5]
    model.shapes.clear()
    resumed = VolumeEmbedder(model, array, mapping, 0, store=store).run(start=5)
    assert resumed.from_disk == 2 and resumed.encoded == len(model.shapes) == 4
    assert store.indices() == list(range(6)) and not resumed.cancelled


def test_closing_the_generator_stops_it(ct, ov_model, tmp_path):
    array, _, mapping = ct
    model = CountingModel(ov_model)
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    steps = VolumeEmbedder(model, array, mapping, 0, store=store).iter_embed(start=0)
    first = next(steps)
    steps.close()  # what napari's worker.quit() does between yields
    assert first.done == 1
    assert 1 <= model.calls <= 1 + ov_model.parallel_requests
    assert len(store.indices()) <= model.calls < 6


def test_pause_holds_the_encoder_until_resumed(ct):
    import threading

    array, _, mapping = ct
    model = FakeModel([prov.CPU])
    embedder = VolumeEmbedder(model, array, mapping, 0, store=None)
    steps = embedder.iter_embed(start=0)
    next(steps)
    embedder.pause()
    assert embedder.paused
    calls_while_paused = []

    def resume() -> None:
        calls_while_paused.append(len(model.shapes))
        embedder.resume()

    threading.Timer(0.3, resume).start()
    rest = list(steps)  # blocks until resumed
    assert calls_while_paused == [1] and len(rest) == 5 and len(model.shapes) == 6
    # cancelling while paused ends it
    embedder = VolumeEmbedder(model, array, mapping, 0, store=None)
    embedder.pause()
    summary = embedder.run(0, cancel=lambda: True)
    assert summary.cancelled and summary.encoded == 0


def test_memory_cache_gets_the_nearest_slices_and_interactive_ones_are_reused(ct, tmp_path):
    array, _, mapping = ct
    model = FakeModel([prov.CPU])
    cache = EmbeddingCache(max_bytes=3 * MB2)
    held = model.embed_preprocessed(*model.preprocess(mapping.apply(array[3]))[:1],
                                    array.shape[1:], (212, 256))
    cache.put(("scan", 3), held)  # embedded interactively before
    model.shapes.clear()
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    summary = VolumeEmbedder(model, array, mapping, 0, store=store, cache=cache,
                             cache_key=lambda i: ("scan", i)).run(start=3)
    assert summary.encoded == len(model.shapes) == 5  # slice 3 came from memory
    assert store.indices() == list(range(6))
    assert sorted(k[1] for k in cache._items) == [2, 3, 4]  # the nearest ones
    assert cache.nbytes <= cache.max_bytes


@pytest.mark.parametrize("providers,kind", [
    ([prov.CUDA, prov.CPU], "pipelined-loop"),
    ([prov.TENSORRT, prov.CUDA, prov.CPU], "pipelined-loop"),
    ([prov.CPU], "loop"),
])
def test_onnxruntime_plans_feed_batch_one_in_order(ct, tmp_path, providers, kind):
    """GPU plans (mocked providers) call the batch-1 encoder once per slice, nearest first."""
    array, _, mapping = ct
    model = FakeModel(providers)
    plan = encode_plan(model)
    assert plan == EncodePlan(kind, 1, (1, 3, 256, 256))
    progress = []
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    summary = embed_volume(model, array, mapping, 0, start=1, store=store,
                           progress=progress.append)
    assert summary.encoded == 6 and summary.plan.kind == kind
    assert model.shapes == [(1, 3, 256, 256)] * 6
    assert [p.index for p in progress] == [1, 2, 0, 3, 4, 5]
    # each slice's features went to its own index (the fake encoder's output is the mean)
    for index in range(6):
        tensor, _ = preprocess_slice(mapping.apply(array[index]), 256)
        assert np.isclose(float(store.get(index).features.flat[0]), tensor.mean(), atol=1e-3)


def test_openvino_plan(ov_model):
    plan = encode_plan(ov_model)
    assert plan.kind == "openvino-async" and plan.in_flight >= 1
    assert plan.input_shape == (1, 3, 256, 256)
    assert encode_plan(ov_model, parallel=False).kind == "loop"


def test_parallel_requests_only_with_enough_free_memory(monkeypatch):
    from napari_medsam.engine import backends

    model = FakeModel([prov.CPU])
    model.async_encoder = FakeAsyncEncoder(model, parallel_requests=2)
    monkeypatch.setattr(backends, "available_memory_bytes", lambda: 1024**3)
    assert encode_plan(model).kind == "loop"
    monkeypatch.setattr(backends, "available_memory_bytes", lambda: 8 * 1024**3)
    assert encode_plan(model) == EncodePlan("openvino-async", 2, (1, 3, 256, 256))
    assert encode_plan(model, parallel=False).kind == "loop"


def test_bad_arguments(ct):
    array, _, mapping = ct
    model = FakeModel([prov.CPU])
    with pytest.raises(ValueError, match="3D"):
        VolumeEmbedder(model, array[0], mapping, store=None)
    with pytest.raises(ValueError, match="axis"):
        VolumeEmbedder(model, array, mapping, 3, store=None)
    with pytest.raises(ValueError, match="cache_key"):
        VolumeEmbedder(model, array, mapping, store=None, cache=EmbeddingCache())


def test_other_axes_store_their_own_sizes(ct, tmp_path):
    array, _, mapping = ct
    small = np.ascontiguousarray(array[:, :, 40:44])
    model = FakeModel([prov.CPU])
    store = DiskEmbeddingStore.for_volume(small, 2, mapping.key, model, root=tmp_path)
    summary = embed_volume(model, small, mapping, 2, store=store)
    assert summary.encoded == 4 == store.size
    embedding = store.get(3)
    direct = model.embed_preprocessed(*preprocess_slice(mapping.apply(small[:, :, 3]), 256)[:1],
                                      small[:, :, 3].shape,
                                      preprocess_slice(small[:, :, 3], 256)[1])
    assert embedding.original_size == direct.original_size == (6, array.shape[1])
    assert embedding.resized_size == direct.resized_size


def test_embed_command_fills_shows_and_clears_the_cache(monkeypatch, capsys, tmp_path):
    """``napari-medsam embed`` on a real scan (a cheap stand-in encoder), then --info, --clear."""
    import argparse

    import napari_medsam.engine as engine
    from napari_medsam.cli.embed import add_parser as add_embed_parser
    from napari_medsam.engine.disk_cache import cache_size
    from napari_medsam.paths import CACHE_ENV

    model_cache = tmp_path  # a cache of its own: other tests' embeddings are not listed
    monkeypatch.setenv(CACHE_ENV, str(model_cache))
    fake = FakeModel([prov.CPU])
    fake.device_name = "CPU (test)"
    monkeypatch.setattr(engine, "load_model", lambda *a, **k: fake)
    parser = argparse.ArgumentParser(prog="napari-medsam")
    add_embed_parser(parser.add_subparsers(dest="command"))
    image = str(load_case.__globals__["case_dir"]("totalseg_mr_abdomen_sm") / "image.nii.gz")

    def run(*argv) -> str:
        args = parser.parse_args(["embed", *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    out = run(image, "--axis", "0")
    assert "20 of 20 slices to encode" in out and "done: 20 encoded" in out
    assert str(model_cache / "embeddings") in out and "MiB" in out
    assert len(fake.shapes) == 20
    out = run(image)
    assert "0 of 20 slices to encode" in out and "20 already cached" in out
    assert len(fake.shapes) == 20  # nothing encoded again
    out = run("--info")
    assert "1 volume(s)" in out and "20 slices" in out and "mr_percentile" in out
    out = run("--clear")
    assert "cleared" in out and cache_size() == 0


def test_only_slices_that_verify_count_as_embedded(ct, tmp_path, caplog):
    """Corrupt files are neither counted by ``missing()`` nor skipped by a run (real CT)."""
    import logging

    array, _, mapping = ct
    model = FakeModel([prov.CPU])
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    assert VolumeEmbedder(model, array, mapping, 0, store=store).run(start=0).encoded == 6
    good = {index: store.get(index) for index in range(6)}
    corrupt_slice_file(store, 1, "nan", other=0)
    corrupt_slice_file(store, 4, "copied_file", other=2)
    embedder = VolumeEmbedder(model, array, mapping, 0, store=store)
    with caplog.at_level(logging.WARNING, logger="napari_medsam.engine.disk_cache"):
        assert embedder.missing() == [1, 4]
    assert "slice 1 " in caplog.text and "slice 4 " in caplog.text
    assert store.indices() == [0, 2, 3, 5]  # the bad files are gone

    # a run checks every stored file itself (here damaged after missing() looked)
    store.put(1, good[1])
    store.put(4, good[4])
    corrupt_slice_file(store, 1, "other_slice", other=0)
    corrupt_slice_file(store, 4, "rewritten", other=0)
    model.shapes.clear()
    summary = embedder.run(start=0)
    assert summary.encoded == len(model.shapes) == 2 and summary.from_disk == 4
    assert not summary.cancelled and embedder.missing() == []
    for index in range(6):  # each slice holds its own features (the fake encoder's mean)
        tensor, _ = preprocess_slice(mapping.apply(array[index]), 256)
        assert np.isclose(float(store.get(index).features.flat[0]), tensor.mean(), atol=1e-3)


def test_embed_command_encodes_corrupt_slices_again(monkeypatch, capsys, tmp_path):
    """``napari-medsam embed`` on a real scan: damaged slices are not "already cached"."""
    import argparse

    import napari_medsam.engine as engine
    from napari_medsam.cli.embed import add_parser as add_embed_parser
    from napari_medsam.engine.disk_cache import cache_entries
    from napari_medsam.paths import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    fake = FakeModel([prov.CPU])
    fake.device_name = "CPU (test)"
    monkeypatch.setattr(engine, "load_model", lambda *a, **k: fake)
    parser = argparse.ArgumentParser(prog="napari-medsam")
    add_embed_parser(parser.add_subparsers(dest="command"))
    image = str(load_case.__globals__["case_dir"]("totalseg_mr_abdomen_sm") / "image.nii.gz")

    def run(*argv) -> str:
        args = parser.parse_args(["embed", *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    run(image)
    (entry,) = cache_entries()
    volume = load_case("totalseg_mr_abdomen_sm", label=None)[0]
    store = DiskEmbeddingStore.for_volume(volume.array, 0, entry.meta["mapping"], fake,
                                          root=entry.path.parent)
    assert store.directory == entry.path
    for index, kind in ((3, "nan"), (10, "zeros"), (17, "copied_file")):
        corrupt_slice_file(store, index, kind, other=0)
    fake.shapes.clear()
    out = run(image)
    assert "3 of 20 slices to encode" in out and "done: 3 encoded, 17 already cached" in out
    assert len(fake.shapes) == 3 and store.verified_indices() == list(range(20))

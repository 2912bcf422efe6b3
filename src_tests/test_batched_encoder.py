"""The batch-dynamic encoder and the GPU plan, checked on the CPU.

No GPU is available to the tests: the plan choice is a function of the providers that run
(made-up provider lists here), the batched ONNX file runs on ONNX Runtime's CPU provider
(same graph as on CUDA), and the fallbacks are forced by removing, corrupting or breaking
the batched encoder.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from fakes import FakeModel
from helpers import tight_box

from napari_medsam.engine import providers as prov
from napari_medsam.engine.disk_cache import DiskEmbeddingStore
from napari_medsam.engine.onnx_model import (
    BATCHED_FILENAME,
    OnnxPromptModel,
    verified_batched_encoder,
)
from napari_medsam.engine.preprocess import preprocess_slice
from napari_medsam.engine.volume_embedding import (
    EncodePlan,
    VolumeEmbedder,
    embed_volume,
    encode_plan,
    plan_for_providers,
)
from napari_medsam.models.registry import get_spec
from napari_medsam.paths import CACHE_ENV

GPU = [prov.CUDA, prov.CPU]
TRT = [prov.TENSORRT, prov.CUDA, prov.CPU]


# -- plan choice and settings: no model needed ------------------------------------------------


@pytest.mark.parametrize("providers,batched,batch,kind,shape", [
    (GPU, True, 8, "batched", (8, 3, 256, 256)),
    (TRT, True, 4, "batched", (4, 3, 256, 256)),
    (GPU, False, 8, "pipelined-loop", (1, 3, 256, 256)),  # no batched file: batch-1 loop
    (TRT, True, 1, "pipelined-loop", (1, 3, 256, 256)),  # batching turned off
    ([prov.CPU], True, 8, "loop", (1, 3, 256, 256)),  # CPU: today's plain loop
    ([], True, 8, "loop", (1, 3, 256, 256)),
])
def test_plan_for_providers(providers, batched, batch, kind, shape):
    plan = plan_for_providers(providers, 256, batch_size=batch, batched=batched)
    assert plan == EncodePlan(kind, shape[0], shape)


def test_gpu_batch_size_setting(monkeypatch, caplog):
    monkeypatch.delenv(prov.GPU_BATCH_ENV, raising=False)
    assert prov.gpu_batch_size() == prov.DEFAULT_GPU_BATCH == 8
    monkeypatch.setenv(prov.GPU_BATCH_ENV, "16")
    assert prov.gpu_batch_size() == 16
    assert prov.gpu_batch_size(2) == 2  # an explicit value wins
    monkeypatch.setenv(prov.GPU_BATCH_ENV, "0")
    assert prov.gpu_batch_size() == 1
    monkeypatch.setenv(prov.GPU_BATCH_ENV, "100000")
    assert prov.gpu_batch_size() == prov.MAX_GPU_BATCH
    monkeypatch.setenv(prov.GPU_BATCH_ENV, "lots")
    with caplog.at_level(logging.WARNING):
        assert prov.gpu_batch_size() == prov.DEFAULT_GPU_BATCH
    assert prov.GPU_BATCH_ENV in caplog.text


def test_tensorrt_gets_a_batch_profile(tmp_path):
    profile = prov.trt_batch_profile("image", 8, 256)
    assert profile == {"trt_profile_min_shapes": "image:1x3x256x256",
                       "trt_profile_opt_shapes": "image:8x3x256x256",
                       "trt_profile_max_shapes": "image:8x3x256x256"}
    opts = prov.provider_options(TRT, str(tmp_path), trt_profile=profile)
    assert opts[0]["trt_engine_cache_path"] == str(tmp_path)
    assert opts[0]["trt_profile_max_shapes"] == "image:8x3x256x256"
    assert opts[1] == {} and opts[2] == {}  # CUDA and CPU take no profile
    assert prov.runs_on_gpu(TRT) and prov.runs_on_gpu(GPU)
    assert not prov.runs_on_gpu([prov.CPU]) and not prov.runs_on_gpu([])


@pytest.fixture(scope="module")
def ct(ct_liver_crop):
    """Six real CT slices through the liver, their reference labels and the CT mapping."""
    return ct_liver_crop


def _check_stored(store, array, mapping) -> None:
    for index in range(len(array)):
        tensor, _ = preprocess_slice(mapping.apply(array[index]), 256)
        assert np.isclose(float(store.get(index).features.flat[0]), tensor.mean(), atol=1e-3)


@pytest.mark.parametrize("providers", [GPU, TRT])
def test_gpu_plan_feeds_batches_nearest_first(ct, tmp_path, providers):
    array, _, mapping = ct
    model = FakeModel(providers, batch_size=4)
    assert encode_plan(model) == EncodePlan("batched", 4, (4, 3, 256, 256))
    progress = []
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    summary = embed_volume(model, array, mapping, 0, start=1, store=store,
                           progress=progress.append)
    assert summary.encoded == 6 and summary.plan.kind == "batched"
    assert model.shapes == [(4, 3, 256, 256), (2, 3, 256, 256)]
    assert [p.index for p in progress] == [1, 2, 0, 3, 4, 5]
    assert progress[-1].rate > 0 and progress[-1].done == 6
    _check_stored(store, array, mapping)  # each slice's features went to its own index


def test_cpu_keeps_the_plain_loop_even_with_a_batched_encoder(ct):
    model = FakeModel([prov.CPU], batch_size=4)
    assert encode_plan(model).kind == "loop"


def test_gpu_plan_switches_to_single_slices_when_batching_fails(ct, tmp_path):
    array, _, mapping = ct
    model = FakeModel(GPU, batch_size=2, fail_after=1)
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    embedder = VolumeEmbedder(model, array, mapping, 0, store=store)
    summary = embedder.run(start=0)
    assert summary.encoded == 6 and not summary.cancelled
    assert summary.plan == EncodePlan("pipelined-loop", 1, (1, 3, 256, 256))
    assert store.indices() == list(range(6))
    _check_stored(store, array, mapping)


def test_gpu_batches_can_be_cancelled(ct, tmp_path):
    array, _, mapping = ct
    model = FakeModel(GPU, batch_size=2)
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    progress = []
    summary = VolumeEmbedder(model, array, mapping, 0, store=store).run(
        start=0, progress=progress.append, cancel=lambda: len(progress) >= 2)
    assert summary.cancelled and 2 <= summary.encoded < 6
    assert store.indices() == sorted(p.index for p in progress)


def test_dynamic_batch_patch_traces_a_symbolic_batch_and_is_undone():
    """TinyViT's PatchMerging takes B from len(x): traced, B is a constant; patched, not."""
    import torch
    from torch import nn

    from napari_medsam.models.onnx_wrappers import dynamic_batch

    class PatchMerging(nn.Module):  # the vendored layer's reshape, without its convolutions
        input_resolution = (2, 3)

        def forward(self, x):
            if x.ndim == 3:
                x = x.view(len(x), 2, 3, -1).permute(0, 3, 1, 2)
            return x * 2

    holder = nn.Sequential(PatchMerging())
    one, three = torch.rand(1, 6, 4), torch.rand(3, 6, 4)
    with pytest.warns(torch.jit.TracerWarning):
        fixed = torch.jit.trace(holder, (one,))
    assert fixed(three).shape == (1, 12, 2, 3)  # batch 1 baked in: the batch became channels
    with dynamic_batch(holder):
        assert "forward" in holder[0].__dict__
        traced = torch.jit.trace(holder, (one,))
    assert "forward" not in holder[0].__dict__  # restored
    assert torch.equal(traced(three), holder(three))
    assert traced(three).shape == (3, 4, 2, 3)


# -- the real batched encoder on ONNX Runtime's CPU provider ----------------------------------


@pytest.fixture(scope="module")
def batched_export(litemedsam_ort):
    """``encoder_batched.onnx`` of LiteMedSAM, exported into the test cache."""
    from napari_medsam.models.export import export_batched_encoder

    return export_batched_encoder("litemedsam")


@pytest.fixture
def private_model_dir(tmp_path, monkeypatch, litemedsam_ort, model_cache):
    """A cache of its own holding a copy of the exported LiteMedSAM (without batched file)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    target = tmp_path / "models" / "litemedsam"
    shutil.copytree(model_cache / "models" / "litemedsam", target,
                    ignore=shutil.ignore_patterns(BATCHED_FILENAME))
    return target


def _on_fake_gpu(model: OnnxPromptModel) -> OnnxPromptModel:
    """Make a CPU model report CUDA, as it would on a GPU machine (its sessions stay CPU)."""
    model._providers = list(GPU)
    return model


@pytest.mark.slow
def test_batched_export_is_recorded_and_checked(batched_export, model_cache):
    folder = model_cache / "models" / "litemedsam"
    info = json.loads((folder / "export.json").read_text())
    record = info["batched"]
    assert record["filename"] == BATCHED_FILENAME and record["checked_batch"] == 3
    assert record["max_abs_diff_batch"] <= 1e-4  # batch-3 vs three batch-1 calls
    assert record["max_abs_diff_torch"] <= 1e-3  # vs PyTorch, the export tolerance
    assert batched_export.batch_diff == record["max_abs_diff_batch"]
    # the pinned batch-1 files are untouched, and listed as before
    assert set(info["sha256"]) == {"encoder", "decoder"}
    assert verified_batched_encoder(get_spec("litemedsam")) == folder / BATCHED_FILENAME
    from napari_medsam.models.export import export_model

    again = export_model("litemedsam", batched=True)  # both exist: nothing is exported
    assert again.batched.path == folder / BATCHED_FILENAME and again.batched.seconds == 0.0

    import onnx

    graph = onnx.load(str(folder / BATCHED_FILENAME), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 256, 256]
    # the same weights as the batch-1 encoder (names differ: compared by content)
    def tensors(model_graph) -> dict[bytes, int]:
        found = {}
        for tensor in model_graph.initializer:
            array = onnx.numpy_helper.to_array(tensor)
            if array.size >= 64:  # weights, not shape constants
                found[array.tobytes() + str(array.shape).encode()] = array.size
        return found

    weights = tensors(onnx.load(str(folder / "encoder.onnx")).graph)
    assert sum(weights.values()) > 5e6  # TinyViT's ~5.7 million (folded) parameters
    assert set(weights) <= set(tensors(graph))


@pytest.mark.slow
def test_embed_batch_equals_embed_on_real_slices(batched_export, litemedsam_ort, ct):
    array, reference, mapping = ct
    model = OnnxPromptModel(get_spec("litemedsam"), "cpu", batch_size=3, auto_export=False)
    images = [mapping.apply(array[i]) for i in range(4)]
    assert model.batched_session() is not None and model.batching
    batch = model.embed_batch(images)  # one call of 3 slices, then one of 1
    assert len(batch) == 4
    worst = 0.0
    for image, label, got in zip(images, reference[:4], batch, strict=True):
        want = litemedsam_ort.embed(image)
        assert got.features.shape == want.features.shape == (1, 256, 64, 64)
        assert got.original_size == want.original_size
        assert got.resized_size == want.resized_size and got.model == want.model
        worst = max(worst, float(np.abs(got.features - want.features).max()))
        box = tight_box(label == 5)
        assert np.array_equal(litemedsam_ort.predict(got, box=box).mask,
                              litemedsam_ort.predict(want, box=box).mask)
    assert worst <= 1e-4, worst
    logging.getLogger(__name__).info("embed_batch vs embed: max |diff| %.2e", worst)
    assert model.embed_batch([]) == []
    with pytest.raises(ValueError, match="preprocessed slices"):
        model.encode_batch(np.zeros((2, 3, 64, 64), np.float32))


@pytest.mark.slow
def test_volume_embedding_on_a_fake_gpu_runs_the_batched_encoder(batched_export, litemedsam_ort,
                                                                 ct, tmp_path):
    array, _, mapping = ct
    model = _on_fake_gpu(OnnxPromptModel(get_spec("litemedsam"), "cpu", batch_size=4,
                                         auto_export=False))
    calls = []
    real = model.encode_batch

    def counting(tensor):
        calls.append(tensor.shape)
        return real(tensor)

    model.encode_batch = counting
    store = DiskEmbeddingStore.for_volume(array, 0, mapping.key, model, root=tmp_path)
    summary = embed_volume(model, array, mapping, 0, start=2, store=store)
    assert summary.plan == EncodePlan("batched", 4, (4, 3, 256, 256)) and summary.encoded == 6
    assert calls == [(4, 3, 256, 256), (2, 3, 256, 256)]
    for index in (0, 2, 5):
        want = litemedsam_ort.embed(mapping.apply(array[index])).features
        got = store.get(index).features.astype(np.float32)
        assert np.abs(got - want).max() <= 2e-3  # the disk store keeps float16


def test_without_the_batched_file_embed_batch_loops(private_model_dir, ct, caplog,
                                                     monkeypatch):
    array, _, mapping = ct
    spec = get_spec("litemedsam")
    model = OnnxPromptModel(spec, "cpu", auto_export=False)
    assert verified_batched_encoder(spec) is None
    assert model.batched_session() is None and not model.batching
    images = [mapping.apply(array[i]) for i in (0, 1)]
    got = model.embed_batch(images)
    for image, embedding in zip(images, got, strict=True):  # the batch-1 encoder: identical
        assert np.array_equal(embedding.features, model.embed(image).features)
    # on a GPU without the export extra: the pipelined batch-1 loop, and one line saying why
    gpu = _on_fake_gpu(OnnxPromptModel(spec, "cpu", auto_export=True))
    import napari_medsam.models.export as export_mod

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(export_mod, "missing_export_packages", lambda: ["torch"])
    assert not gpu.batching and encode_plan(gpu).kind == "pipelined-loop"
    assert gpu.batched_session() is None
    assert "no export extra" in caplog.text


@pytest.mark.slow
def test_gpu_exports_the_batched_file_on_demand(private_model_dir, batched_export,
                                                model_cache, monkeypatch, ct):
    """On CUDA a missing batched encoder is exported on first use (the export is faked
    here by copying the one made for this session: a real one takes ~10-40 s)."""
    import napari_medsam.models.export as export_mod

    spec = get_spec("litemedsam")
    source = model_cache / "models" / "litemedsam"
    made = []

    def fake_export(name, force=False):
        shutil.copy(source / BATCHED_FILENAME, private_model_dir / BATCHED_FILENAME)
        info = json.loads((private_model_dir / "export.json").read_text())
        info["batched"] = json.loads((source / "export.json").read_text())["batched"]
        (private_model_dir / "export.json").write_text(json.dumps(info))
        made.append(name)
        return export_mod.BatchedExportResult(spec, private_model_dir / BATCHED_FILENAME,
                                              0.0, 0.0, 0.0)

    monkeypatch.setattr(export_mod, "export_batched_encoder", fake_export)
    cpu = OnnxPromptModel(spec, "cpu", auto_export=True)
    assert cpu.batched_session() is None and made == []  # never on the CPU
    gpu = _on_fake_gpu(OnnxPromptModel(spec, "cpu", auto_export=True))
    assert gpu.batching and encode_plan(gpu).kind == "batched"
    assert gpu.batched_session() is not None and made == ["litemedsam"]
    array, _, mapping = ct
    images = [mapping.apply(array[i]) for i in (2, 3)]
    for image, embedding in zip(images, gpu.embed_batch(images), strict=True):
        assert np.abs(embedding.features - gpu.embed(image).features).max() <= 1e-4


@pytest.mark.slow
def test_a_wrong_batched_file_is_ignored(private_model_dir, batched_export, model_cache,
                                         caplog):
    source = model_cache / "models" / "litemedsam"
    shutil.copy(source / "decoder.onnx", private_model_dir / BATCHED_FILENAME)
    info = json.loads((private_model_dir / "export.json").read_text())
    info["batched"] = json.loads((source / "export.json").read_text())["batched"]
    (private_model_dir / "export.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING):
        assert verified_batched_encoder(get_spec("litemedsam")) is None
    assert "does not match the exporter's record" in caplog.text


@pytest.mark.slow
def test_a_failing_batched_encoder_falls_back_to_batch_one(batched_export, ct, caplog):
    """A batched call that raises (e.g. out of GPU memory) turns batching off, once."""
    array, _, mapping = ct
    model = _on_fake_gpu(OnnxPromptModel(get_spec("litemedsam"), "cpu", auto_export=False))
    assert model.batched_session() is not None

    class Broken:
        def run(self, *args, **kwargs):
            raise RuntimeError("CUDA failure 2: out of memory")

    model._batched = Broken()
    images = [mapping.apply(array[i]) for i in (0, 1, 2)]
    with caplog.at_level(logging.WARNING):
        got = model.embed_batch(images)
        again = model.embed_batch(images[:2])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "batched encoder off" in r.getMessage()]
    assert len(warnings) == 1 and "out of memory" in warnings[0].getMessage()
    assert not model.batching and model.batched_session() is None
    assert encode_plan(model).kind == "pipelined-loop"
    for image, embedding in zip(images, got, strict=True):
        assert np.array_equal(embedding.features, model.embed(image).features)
    assert len(again) == 2

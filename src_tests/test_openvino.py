"""The OpenVINO backend: selection (mocked availability), precision, and masks vs ONNX Runtime."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import DATA_DIR, cache_with_models, dice

from napari_medsam.engine import backends, load_model
from napari_medsam.engine import providers as prov

GPU_BUILD = [prov.TENSORRT, prov.CUDA, prov.CPU]
CPU_BUILD = [prov.CPU]
needs_openvino = pytest.mark.skipif(not backends.openvino_available(),
                                    reason="openvino not installed (napari-medsam[openvino])")


# -- backend selection (no real GPU or package needed) ----------------------------------------

@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_auto_runs_onnxruntime_when_a_cuda_gpu_really_runs(device):
    got = backends.choose_backend("auto", device, available=GPU_BUILD, gpu_count=1,
                                  has_openvino=True)
    assert got == backends.ONNXRUNTIME


def test_auto_prefers_openvino_on_the_cpu():
    # a GPU build of onnxruntime without a GPU, a CPU-only build, or device="cpu"
    for available, gpus, device in ((GPU_BUILD, 0, "auto"), (CPU_BUILD, 1, "auto"),
                                    (GPU_BUILD, 1, "cpu")):
        got = backends.choose_backend("auto", device, available=available, gpu_count=gpus,
                                      has_openvino=True)
        assert got == backends.OPENVINO, (available, gpus, device)


def test_auto_without_openvino_is_onnxruntime_on_the_cpu():
    got = backends.choose_backend("auto", "auto", available=GPU_BUILD, gpu_count=0,
                                  has_openvino=False)
    assert got == backends.ONNXRUNTIME


def test_explicit_backends():
    assert backends.choose_backend("onnxruntime", "cpu", has_openvino=True) == "onnxruntime"
    assert backends.choose_backend("openvino", "cpu", has_openvino=True) == "openvino"
    assert backends.choose_backend("openvino", "auto", available=GPU_BUILD, gpu_count=1,
                                   has_openvino=True) == "openvino"


def test_openvino_asked_but_missing_falls_back_with_the_fix(caplog):
    with caplog.at_level(logging.WARNING):
        got = backends.choose_backend("openvino", "cpu", has_openvino=False)
    assert got == backends.ONNXRUNTIME
    assert "napari-medsam[openvino]" in caplog.text


def test_bad_combinations_are_errors():
    with pytest.raises(ValueError, match="not on NVIDIA GPUs"):
        backends.choose_backend("openvino", "cuda", has_openvino=True)
    with pytest.raises(ValueError, match="auto, onnxruntime, openvino"):
        backends.choose_backend("tensorflow", "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        backends.choose_backend("auto", "tpu")


@needs_openvino
def test_load_model_follows_the_selection(monkeypatch, litemedsam):
    from napari_medsam.engine.onnx_model import OnnxPromptModel
    from napari_medsam.engine.openvino_model import OpenVINOPromptModel

    assert isinstance(load_model(device="cpu", backend="onnxruntime"), OnnxPromptModel)
    assert isinstance(load_model(device="cpu"), OpenVINOPromptModel)
    # a machine with a working CUDA GPU: auto means ONNX Runtime (its CUDA provider is asked
    # for; here it then runs on the CPU, as the provider tests check)
    monkeypatch.setattr(backends, "cuda_runs", lambda *a, **k: True)
    assert isinstance(load_model(device="auto"), OnnxPromptModel)
    monkeypatch.setattr(backends, "cuda_runs", lambda *a, **k: False)
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert isinstance(load_model(device="auto"), OnnxPromptModel)


# -- precision ------------------------------------------------------------------------------

def test_precision_choice():
    assert backends.DEFAULT_PRECISION == backends.F32
    assert backends.choose_precision("auto", ["BF16", "FP32"]).hint == "f32"
    assert backends.choose_precision("bf16", ["BF16", "FP32"]).hint == "bf16"
    with pytest.raises(ValueError, match="auto, f32, bf16"):
        backends.choose_precision("int4", ["FP32"])


def test_bf16_without_native_support_runs_f32(caplog):
    with caplog.at_level(logging.WARNING):
        choice = backends.choose_precision("bf16", ["FP32", "INT8"])
    assert choice.hint == "f32" and not choice.native_bf16
    assert "no native bf16" in caplog.text


@needs_openvino
def test_compiled_precision_is_what_runs(ov_f32):
    native = "BF16" in backends.cpu_capabilities()
    bf16 = load_model(device="cpu", backend="openvino", precision="bf16")
    assert ov_f32.precision == "f32" and ov_f32.providers == ["OpenVINO-CPU-f32"]
    assert bf16.precision == ("bf16" if native else "f32")
    assert bf16.native_bf16 == native
    assert "OpenVINO" in bf16.device_name


_F32_THEN_BF16 = """
import sys
import numpy as np
from napari_medsam.engine import load_model
from napari_medsam.io import read_volume
from napari_medsam.io.intensity import auto_mapping

volume = read_volume(sys.argv[1])
image = auto_mapping(volume.array, volume.modality).apply(volume.array[15])
features = {}
for precision in ("f32", "bf16"):
    model = load_model("litemedsam", "cpu", backend="openvino", precision=precision)
    features[precision] = model.embed(image).features.astype(np.float64).ravel()
a, b = features["f32"], features["bf16"]
print("cosine", a @ b / np.linalg.norm(a) / np.linalg.norm(b))
"""


@pytest.mark.slow
@needs_openvino
def test_f32_then_bf16_with_the_compile_cache_does_not_crash(litemedsam, model_cache, tmp_path):
    """f32 then bf16, twice, with the compile cache on.

    OpenVINO's cache key ignores the precision hint: with one cache folder, the second
    compile imported the f32 blob for bf16 and OpenVINO 2026.4 crashed (SIGSEGV) at the first
    inference on CPUs with AMX. It runs in a child process so that a crash fails this test
    only. Each precision gets a folder of its own; bf16 only on CPUs that compute it.
    """
    import os
    import subprocess
    import sys

    cache = cache_with_models(model_cache, tmp_path)
    env = {**os.environ, "NAPARI_MEDSAM_CACHE": str(cache)}
    scan = str(DATA_DIR / "totalseg_ct_abdomen_sm" / "image.nii.gz")
    for run in ("compiles", "imports the blobs"):
        done = subprocess.run([sys.executable, "-c", _F32_THEN_BF16, scan], env=env,
                              capture_output=True, encoding="utf-8", errors="replace", timeout=600)
        assert done.returncode == 0, f"{run}: exit {done.returncode}\n{done.stderr[-2000:]}"
        assert float(done.stdout.split()[-1]) > 0.99, done.stdout
    native = backends.choose_precision("bf16").native_bf16
    folders = sorted(p.name.split("-", 1)[1] for p in (cache / "openvino").iterdir())
    assert folders == (["bf16-latency", "f32-latency"] if native else ["f32-latency"])
    assert all(any(p.iterdir()) for p in (cache / "openvino").iterdir())  # blobs were cached


def test_compile_cache_folder_names_version_precision_and_hint(tmp_path):
    from napari_medsam.engine.openvino_model import compile_cache_folder

    a = compile_cache_folder(tmp_path, "f32", "LATENCY", "2026.4.1-22982-e213a14-releases/2026/4")
    b = compile_cache_folder(tmp_path, "bf16", "LATENCY", "2026.4.1-22982-e213a14-releases/2026/4")
    c = compile_cache_folder(tmp_path, "f32", "THROUGHPUT", "2025.3.0-19807-44526285f24")
    assert a.name == "ov2026.4.1-f32-latency" and a.parent == tmp_path
    assert len({a, b, c}) == 3


# -- masks on real slices against ONNX Runtime fp32 -----------------------------------------

@pytest.fixture(scope="module")
def ov_f32(litemedsam):
    return load_model("litemedsam", device="cpu", backend="openvino")


@pytest.fixture(scope="module")
def ort_cpu(litemedsam):
    return load_model("litemedsam", device="cpu", backend="onnxruntime")


@pytest.fixture(scope="module")
def agreement():
    from napari_medsam.bench import agreement_slices

    slices = agreement_slices(DATA_DIR)
    # 12 of them, spread over every case (CT and MRI); `bench --agreement` checks all 32
    picks = np.linspace(0, len(slices) - 1, 12).round().astype(int)
    return [slices[i] for i in picks]


def test_agreement_slices_cover_ct_and_mri(agreement):
    cases = {s.case for s in agreement}
    assert len(agreement) >= 12 and len(cases) >= 4
    assert any("_ct" in c for c in cases) and any("_mr" in c for c in cases)


@pytest.mark.slow
@needs_openvino
def test_default_openvino_masks_match_onnxruntime(ov_f32, ort_cpu, agreement):
    """The default (f32) OpenVINO engine gives the fp32 ONNX Runtime masks on 12 slices."""
    assert ov_f32.precision == "f32"  # the default
    scores = []
    for s in agreement:
        ref_emb = ort_cpu.embed(s.image)
        emb = ov_f32.embed(s.image)
        assert emb.features.shape == ref_emb.features.shape == (1, 256, 64, 64)
        assert np.abs(emb.features - ref_emb.features).max() <= 1e-3
        ref = ort_cpu.predict(ref_emb, box=s.box)
        got = ov_f32.predict(emb, box=s.box)
        assert ref.mask.any(), f"{s.case}:{s.label}: empty reference mask"
        assert np.abs(got.logits - ref.logits).max() <= 1e-3
        assert abs(got.iou - ref.iou) <= 1e-3
        scores.append(dice(got.mask, ref.mask))
    assert min(scores) >= 0.99, scores


@needs_openvino
def test_openvino_decoder_takes_clicks_and_mask_input(ov_f32, ort_cpu, agreement):
    s = agreement[0]
    emb = ov_f32.embed(s.image)
    x0, y0, x1, y1 = s.box
    click = [((x0 + x1) / 2, (y0 + y1) / 2, 1)]
    first = ov_f32.predict(emb, box=s.box, points=click)
    again = ov_f32.predict(emb, box=s.box, mask_input=first.low_res_logits)
    ref_first = ort_cpu.predict(ort_cpu.embed(s.image), box=s.box, points=click)
    assert np.abs(first.logits - ref_first.logits).max() <= 1e-3
    assert again.mask.shape == s.image.shape and again.mask.any()
    # an fp16 embedding (as cached) gives the same mask
    half = type(emb)(emb.features.astype(np.float16), emb.original_size, emb.resized_size,
                     emb.input_size, emb.model)
    full = ov_f32.predict(emb, box=s.box)
    assert dice(ov_f32.predict(half, box=s.box).mask, full.mask) >= 0.99


@pytest.mark.slow
@needs_openvino
def test_both_decoder_runtimes_give_the_same_masks(ov_f32, agreement, monkeypatch, caplog):
    """OpenVINO's encoder with ONNX Runtime's decoder (default) or OpenVINO's own decoder:
    same logits on real CT and MRI slices; a failing ONNX Runtime decoder falls back."""
    from napari_medsam.engine import openvino_model

    assert ov_f32.decoder_runtime == openvino_model.DEFAULT_DECODER == "onnxruntime"
    own = openvino_model.OpenVINOPromptModel(ov_f32.spec, "cpu", decoder="openvino")
    assert own.decoder_runtime == "openvino"
    for s in agreement[::4]:
        emb = ov_f32.embed(s.image)
        a, b = ov_f32.predict(emb, box=s.box), own.predict(emb, box=s.box)
        assert np.abs(a.logits - b.logits).max() <= 1e-3 and abs(a.iou - b.iou) <= 1e-3
        assert dice(a.mask, b.mask) >= 0.999
    with pytest.raises(ValueError, match="decoder must be one of"):
        openvino_model.OpenVINOPromptModel(ov_f32.spec, "cpu", decoder="tensorrt")

    def broken(*_args, **_kwargs):
        raise RuntimeError("no ONNX Runtime here")

    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", broken)
    with caplog.at_level("WARNING"):
        fallback = openvino_model.OpenVINOPromptModel(ov_f32.spec, "cpu")
    assert fallback.decoder_runtime == "openvino"
    assert "OpenVINO runs it" in caplog.text
    s = agreement[0]
    emb = fallback.embed(s.image)
    assert dice(fallback.predict(emb, box=s.box).mask, ov_f32.predict(emb, box=s.box).mask) \
        >= 0.999

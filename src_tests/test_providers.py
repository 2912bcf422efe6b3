"""Provider selection: what is asked for, what really runs, and the CPU fallback."""

from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

from napari_medsam.engine import load_model
from napari_medsam.engine import providers as prov

GPU_BUILD = [prov.TENSORRT, prov.CUDA, prov.CPU]


def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    got = prov.requested_providers("auto", GPU_BUILD, gpu_count=1, has_tensorrt=True)
    assert got == [prov.TENSORRT, prov.CUDA, prov.CPU]
    got = prov.requested_providers("auto", GPU_BUILD, gpu_count=1, has_tensorrt=False)
    assert got == [prov.CUDA, prov.CPU]


def test_cuda_forces_cuda_without_tensorrt():
    got = prov.requested_providers("cuda", GPU_BUILD, gpu_count=2, has_tensorrt=True)
    assert got == [prov.CUDA, prov.CPU]


def test_cpu_forces_cpu_even_with_a_gpu():
    assert prov.requested_providers("cpu", GPU_BUILD, gpu_count=1, has_tensorrt=True) == [
        prov.CPU]


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_missing_gpu_is_a_one_line_warning(device, caplog):
    with caplog.at_level(logging.WARNING):
        got = prov.requested_providers(device, GPU_BUILD, gpu_count=0, has_tensorrt=False)
    assert got == [prov.CPU]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "CPU" in warnings[0].getMessage()


def test_cpu_only_build_warns_and_falls_back(caplog):
    with caplog.at_level(logging.WARNING):
        assert prov.requested_providers("cuda", [prov.CPU], gpu_count=1) == [prov.CPU]
    assert "onnxruntime-gpu" in caplog.text


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        prov.requested_providers("tpu", GPU_BUILD)


def test_tensorrt_keeps_engines_in_the_cache(tmp_path):
    opts = prov.provider_options([prov.TENSORRT, prov.CUDA, prov.CPU], str(tmp_path))
    assert opts[0]["trt_engine_cache_path"] == str(tmp_path)
    assert opts[1] == {} and opts[2] == {}


def test_real_session_reports_what_runs(litemedsam_ort, caplog):
    """On this machine (no GPU) 'cuda' runs on the CPU and says so; sessions tell the truth."""
    assert litemedsam_ort.providers == [prov.CPU]
    with caplog.at_level(logging.WARNING):
        model = load_model("litemedsam", device="cuda")
    assert model.providers[-1] == prov.CPU
    if prov.cuda_device_count() == 0:
        assert model.providers == [prov.CPU]
        assert "CPU" in caplog.text
    assert model.providers == model._encoder.get_providers()
    assert set(ort.get_available_providers()) >= {prov.CPU}

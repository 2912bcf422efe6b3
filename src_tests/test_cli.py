"""The napari-medsam command line: clear errors and exit codes, export and bench output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA_DIR

from napari_medsam.cli import main


def run_cli(*args: str, env_cache: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_cache is not None:
        env["NAPARI_MEDSAM_CACHE"] = str(env_cache)
    return subprocess.run([sys.executable, "-m", "napari_medsam.cli", *args],
                          capture_output=True, encoding="utf-8", errors="replace", env=env)


def test_export_model_reports_files_and_parity(litemedsam, model_cache, capsys):
    assert main(["export-model"]) == 0
    out = capsys.readouterr().out
    assert "encoder" in out and "decoder" in out and "parity" in out


def test_models_lists_litemedsam_ready(litemedsam, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "litemedsam" in out and "ready" in out


def test_export_of_a_missing_checkpoint_is_an_error(tmp_path):
    result = run_cli("export-model", "--name", "mine", "--checkpoint",
                     str(tmp_path / "missing.pth"), env_cache=tmp_path)
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_model_refuses_a_name_that_is_a_path(tmp_path):
    """`--name ..` once deleted the whole cache (models, embeddings); `.` the built-in model."""
    keep = tmp_path / "embeddings" / "x" / "meta.json"
    keep.parent.mkdir(parents=True)
    keep.write_text("{}")
    for name in ("..", "."):
        result = run_cli("export-model", "--name", name, env_cache=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"napari-medsam export-model: error: --name: invalid model name {name!r}: use 1 to "
            "64 letters, digits, '_', '-' or '.', starting with a letter, digit or '_' (no "
            "folders, '.' or '..')"]
    assert keep.is_file()


def test_bench_without_data_is_a_usage_error(tmp_path):
    result = run_cli("bench", "--data", str(tmp_path / "nothing"), env_cache=tmp_path)
    assert result.returncode == 2
    assert "--data" in result.stderr


@pytest.mark.slow
def test_bench_json_has_engine_and_torch_keys(litemedsam, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--data", str(DATA_DIR), "--slices", "2", "--repeats", "1",
                 "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("provider", "encoder_ms", "decoder_ms", "torch_encoder_ms", "torch_decoder_ms",
                "encoder_speedup", "decoder_speedup"):
        assert key in result
    assert result["provider"] == "CPUExecutionProvider"
    assert result["encoder_ms"] > 0 and result["torch_encoder_ms"] > 0
    assert "speed-up" in capsys.readouterr().out
    # every engine row of this machine, in one run (the f32 row ran before the bf16 one: on
    # CPUs with AMX that order once crashed the whole process in OpenVINO's compile cache)
    from napari_medsam.bench import default_rows

    assert [r["row"] for r in result["rows"]] == default_rows()
    assert result["failed_rows"] == []
    assert all(r["encoder_ms"] > 0 and r["mask_dice_min_bench_slices"] > 0.8
               for r in result["rows"])


def test_a_row_that_crashes_is_reported_not_fatal(monkeypatch):
    """A native crash in a row's engine ends its child process only, and is named."""
    from napari_medsam import bench

    monkeypatch.setattr(bench, "_PROBE_CODE",
                        "import os, signal, sys\n"
                        "if sys.argv[1] == 'openvino-bf16': os.kill(os.getpid(), signal.SIGSEGV)")
    assert bench.probe_row("onnxruntime", "litemedsam", "cpu", None) is None
    reason = bench.probe_row("openvino-bf16", "litemedsam", "cpu", None)
    assert reason == "the engine crashed (SIGSEGV) on its first slice"


@pytest.mark.slow
def test_bench_reports_a_failed_row_and_exits_non_zero(litemedsam, tmp_path, monkeypatch,
                                                       capsys):
    from napari_medsam import bench

    monkeypatch.setattr(bench, "default_rows", lambda: ["onnxruntime", "openvino-bf16"])
    monkeypatch.setattr(bench, "probe_row", lambda row, *a: "the engine crashed (SIGSEGV) on "
                        "its first slice" if row == "openvino-bf16" else None)
    out = tmp_path / "bench.json"
    code = main(["bench", "--data", str(DATA_DIR), "--slices", "1", "--repeats", "1",
                 "--no-torch", "--json", str(out)])
    assert code == 1
    result = json.loads(out.read_text())
    assert [r["row"] for r in result["rows"]] == ["onnxruntime"]
    assert result["failed_rows"] == [{"row": "openvino-bf16",
                                      "error": "the engine crashed (SIGSEGV) on its first slice"}]
    captured = capsys.readouterr()
    assert "openvino-bf16    FAILED" in captured.out and "openvino-bf16" in captured.err

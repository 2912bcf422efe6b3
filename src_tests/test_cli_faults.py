"""Bad input and interruptions on the command line: one clear line, the right exit code,
nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import cache_with_models, case_dir

from napari_medsam.cli import main
from napari_medsam.engine import PromptError
from napari_medsam.segmentation import SegmentationSession, SliceRef
from napari_medsam.segmentation.prompts_file import MAX_OBJECTS

MR = case_dir("totalseg_mr_abdomen_sm")  # (20, 91, 117), 23 structures
CT = case_dir("totalseg_ct_abdomen_sm")


def _one_error_line(stderr: str, command: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"napari-medsam {command}: ")
    return lines[0]


def test_a_deeply_nested_prompt_file_is_a_usage_error(tmp_path, capsys):
    """100,000 levels of nesting raised RecursionError (a traceback, exit 1)."""
    prompts = tmp_path / "deep.json"
    prompts.write_text('{"objects": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code = main(["segment", str(MR / "image.nii.gz"), "--prompts", str(prompts),
                 "--out", str(tmp_path / "seg.nii.gz")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert "nested too deeply" in line
    assert not (tmp_path / "seg.nii.gz").exists()


def test_too_many_objects_are_refused_before_any_work(tmp_path, capsys):
    objects = [{"label": i + 1, "slice": 10, "box": [10, 10, 40, 40]}
               for i in range(MAX_OBJECTS + 1)]
    prompts = tmp_path / "many.json"
    prompts.write_text(json.dumps({"objects": objects}))
    code = main(["segment", str(MR / "image.nii.gz"), "--prompts", str(prompts),
                 "--out", str(tmp_path / "seg.nii.gz")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert f"{MAX_OBJECTS + 1} objects; a prompt file holds at most {MAX_OBJECTS}" in line


def test_eval_with_a_scan_as_the_reference_names_the_mistake(tmp_path, capsys):
    """It said "expected non-negative integer"."""
    code = main(["eval", str(CT / "image.nii.gz"), str(CT / "image.nii.gz"), "--mode", "box"])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert "image.nii.gz is not a label map: it looks like a scan (CT" in line
    assert "must be a segmentation of IMAGE" in line


def test_a_box_on_a_slice_without_image_data_is_refused(litemedsam):
    """A box on an all-NaN slice gave a 256-pixel mask and no warning."""
    from napari_medsam.io import read_volume
    from napari_medsam.io.intensity import auto_mapping

    volume = read_volume(MR / "image.nii.gz")
    array = volume.array.astype(np.float32)
    array[3] = np.nan
    session = SegmentationSession(litemedsam, array, auto_mapping(array, "MR"))
    with pytest.raises(PromptError, match="slice 3 .axis 0. holds no image data"):
        session.predict_prompts(SliceRef(0, 3), [(20, 20, 60, 60)])
    assert session.predict_prompts(SliceRef(0, 10), [(20, 20, 60, 60)]).any()


def _fresh_cache(model_cache, tmp_path, monkeypatch):
    """A cache with the session's exported models but no embeddings: whatever other tests
    embedded before, the interrupted command has all its encoding still to do."""
    cache = cache_with_models(model_cache, tmp_path)
    monkeypatch.setenv("NAPARI_MEDSAM_CACHE", str(cache))
    return cache


def _interrupt(args: list[str], wait_for: str, cache) -> subprocess.CompletedProcess:
    """Run the CLI, send SIGINT once ``wait_for`` appears on stderr, collect the rest."""
    env = {**os.environ, "NAPARI_MEDSAM_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    # SIGINT's default action restored in the child: a parent that ignores SIGINT (a test
    # runner's worker process) would otherwise pass that on, and Ctrl-C would do nothing
    proc = subprocess.Popen([sys.executable, "-m", "napari_medsam.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                            errors="replace",
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.monotonic() + 240
    stream = proc.stderr if wait_for.startswith("[") else proc.stdout
    for line in stream:
        seen.append(line)
        if wait_for in line or time.monotonic() > deadline:
            break
    assert any(wait_for in ln for ln in seen), "".join(seen)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    other = "".join(seen)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       (other if stream is proc.stdout else "") + out,
                                       (other if stream is proc.stderr else "") + err)


@pytest.mark.slow
def test_ctrl_c_during_segment_is_one_line_exit_130_and_writes_nothing(litemedsam, model_cache,
                                                                       tmp_path, monkeypatch):
    # the first object is quick (its progress line is the cue); the others take long enough
    # (about 18 slices each, nothing embedded yet) that SIGINT always comes while they run
    objects = [{"label": i + 1, "slice": 4 + i, "box": [20, 20, 70, 90],
                "slice_range": [4 + i, 5 + i] if i == 0 else [1, 18]} for i in range(12)]
    work = tmp_path / "work"
    work.mkdir()
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps({"objects": objects}))
    out = work / "seg.nii.gz"
    done = _interrupt(["segment", str(MR / "image.nii.gz"), "--prompts", str(prompts),
                       "--out", str(out), "--backend", "onnxruntime"], "[1/12]",
                      _fresh_cache(model_cache, tmp_path, monkeypatch))
    assert done.returncode == 130
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "napari-medsam segment: interrupted (Ctrl-C); no output was written")
    assert "about" in done.stderr  # the progress shows the time left
    assert sorted(p.name for p in work.iterdir()) == ["prompts.json"]


def test_ctrl_c_during_embed_keeps_a_valid_cache(litemedsam, model_cache, tmp_path,
                                                 monkeypatch):
    done = _interrupt(["embed", str(CT / "image.nii.gz"), "--backend", "onnxruntime"],
                      "to encode", _fresh_cache(model_cache, tmp_path, monkeypatch))
    assert done.returncode == 130
    assert "Traceback" not in done.stderr + done.stdout
    from napari_medsam.engine.disk_cache import cache_entries

    assert all(entry.meta for entry in cache_entries())  # every folder has its meta.json


def test_segment_on_a_dicom_series_with_a_missing_slice(litemedsam, tmp_path, capsys):
    """Refused with the position by default; --slice-gaps fill segments it on the true grid."""
    import shutil

    import SimpleITK as sitk

    from napari_medsam.io import read_volume

    series = tmp_path / "dicom"
    shutil.copytree(case_dir("totalseg_ct_dicom") / "dicom", series)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series))
    os.remove(files[10])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [
        {"label": 1, "name": "body", "slice": 4, "box": [100, 100, 400, 400]}]}))
    out = tmp_path / "seg.nii.gz"
    args = ["segment", str(series), "--prompts", str(prompts), "--out", str(out),
            "--backend", "onnxruntime"]
    assert main(args) == 1
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert "1 slice is missing at" in line and "2 mm apart" in line
    assert not out.exists()
    assert main([*args, "--slice-gaps", "fill"]) == 0
    full = read_volume(case_dir("totalseg_ct_dicom") / "dicom")
    written = read_volume(out)
    assert written.shape == full.shape
    np.testing.assert_allclose(written.spacing, full.spacing, atol=1e-4)
    assert written.array[4].any() and not written.array[10].any()

"""Cohorts (issue 17): ``napari-medsam segment`` and ``embed`` over many real scans, here and
as Ray tasks; one bad scan never stops the others; runs resume where they stopped."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import PROJECT_ROOT, cache_with_models, case_dir, dice, largest_slice, tight_box

from napari_medsam.cli import main
from napari_medsam.cohort.records import record_path
from napari_medsam.cohort.scans import CohortError, embed_jobs, is_many, segment_jobs
from napari_medsam.io import read_volume

HIPPO = case_dir("msd_hippocampus_mr")
MR = case_dir("totalseg_mr_abdomen_sm")  # (20, 91, 117)
DICOM_3 = case_dir("dcmqi_ct_3slice") / "dicom"  # 512 x 512 x 3
SCANS = {"hippo_003": HIPPO / "hippocampus_003_image.nii.gz",
         "hippo_004": HIPPO / "hippocampus_004_image.nii.gz",
         "mr_abdomen": MR / "image.nii.gz"}
REFERENCES = {"hippo_003": (HIPPO / "hippocampus_003_label.nii.gz", 1),
              "hippo_004": (HIPPO / "hippocampus_004_label.nii.gz", 2),
              "mr_abdomen": (MR / "label.nii.gz", 5)}


@functools.cache
def _reference(name: str) -> np.ndarray:
    return read_volume(REFERENCES[name][0]).array


def _prompt(name: str) -> dict:
    """A box around the reference object on its largest slice (rows, columns)."""
    label = REFERENCES[name][1]
    reference = _reference(name)
    z = largest_slice(reference, label)
    x0, y0, x1, y1 = tight_box(reference[z] == label)
    return {"objects": [{"label": label, "name": name, "slice": z, "box": [y0, x0, y1, x1]}]}


def _cohort(tmp_path: Path, names=tuple(SCANS), broken: bool = True) -> tuple[Path, Path]:
    """A folder of scans (links to the real ones, a truncated copy, a label map that is
    left out) and a folder of prompt files."""
    scans, prompts = tmp_path / "scans", tmp_path / "prompts"
    scans.mkdir()
    prompts.mkdir()
    for name in names:
        (scans / f"{name}.nii.gz").symlink_to(SCANS[name])
        (prompts / f"{name}.json").write_text(json.dumps(_prompt(name)))
    if broken:
        data = SCANS["hippo_004"].read_bytes()
        (scans / "broken.nii.gz").write_bytes(data[:len(data) // 2])
        (prompts / "broken.json").write_text(json.dumps(_prompt("hippo_004")))
    (scans / "hippo_003_label.nii.gz").symlink_to(REFERENCES["hippo_003"][0])
    (scans / "notes.txt").write_text("not a scan")
    return scans, prompts


def _summary(out: str) -> dict[str, str]:
    """scan name -> outcome, from the summary table on stdout."""
    rows = out.strip().splitlines()[1:-1]
    return {row.split()[0]: row.split()[1] for row in rows}


def _check_output(name: str, out: Path) -> np.ndarray:
    """The written label map reads back with the scan's geometry and holds the object."""
    image = read_volume(SCANS[name])
    written = sitk.ReadImage(str(out))
    assert written.GetSpacing() == image.spacing and written.GetOrigin() == image.origin
    assert written.GetDirection() == image.direction
    labels = sitk.GetArrayFromImage(written)
    assert labels.shape == image.shape
    label = REFERENCES[name][1]
    z = _prompt(name)["objects"][0]["slice"]
    assert dice(labels[z] == label, _reference(name)[z] == label) > 0.5
    return labels


# -- listing the scans ------------------------------------------------------------------------
def test_folder_glob_and_csv_rules(tmp_path):
    scans, prompts = _cohort(tmp_path)
    (scans / ".hidden.nii.gz").write_bytes(b"")
    series = scans / "ct_series"
    series.symlink_to(DICOM_3, target_is_directory=True)
    jobs = embed_jobs(str(scans))
    assert [j.name for j in jobs] == ["broken", "ct_series", "hippo_003", "hippo_004",
                                      "mr_abdomen"]  # no label map, text or hidden file
    assert not is_many(str(DICOM_3)) and embed_jobs(str(DICOM_3))[0].name == "dicom"
    assert not is_many(str(SCANS["mr_abdomen"]))
    assert [j.name for j in embed_jobs(str(scans / "hippo_*.nii.gz"))] == [
        "hippo_003", "hippo_004"]
    jobs = segment_jobs(str(scans), str(prompts), str(tmp_path / "out"))
    assert jobs[2].prompts == str(prompts / "hippo_003.json")
    assert jobs[2].out == str(tmp_path / "out" / "hippo_003.nii.gz")
    assert (tmp_path / "out").is_dir()

    table = tmp_path / "list.csv"
    table.write_text("image,prompts,out,note\nscans/mr_abdomen.nii.gz,p.json,o/mr.nrrd,x\n"
                     ",,,\n")
    (job,) = segment_jobs(str(table), None, None)
    assert (job.name, job.image, job.out) == ("mr_abdomen", str(scans / "mr_abdomen.nii.gz"),
                                              str(tmp_path / "o" / "mr.nrrd"))
    with pytest.raises(CohortError, match="leave out --prompts and --out"):
        segment_jobs(str(table), str(prompts), None)
    listed = tmp_path / "embed.csv"
    listed.write_text("image\nscans/hippo_003_label.nii.gz\n")  # a CSV keeps label names
    assert [j.image for j in embed_jobs(str(listed))] == [str(scans / "hippo_003_label.nii.gz")]
    bare = tmp_path / "bare.csv"
    bare.write_text("image\nx.nii.gz\n")
    with pytest.raises(CohortError, match="missing prompts, out"):
        segment_jobs(str(bare), None, None)
    with pytest.raises(CohortError, match="no scans in folder"):
        embed_jobs(str(prompts))
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "mr_abdomen.nrrd").write_bytes(b"")
    (twin / "mr_abdomen.nii.gz").write_bytes(b"")
    with pytest.raises(CohortError, match="share the scan name 'mr_abdomen'"):
        segment_jobs(str(twin), str(prompts), str(tmp_path / "out"))


def test_usage_errors_and_a_missing_ray(tmp_path, capsys, monkeypatch):
    scans, prompts = _cohort(tmp_path, names=("mr_abdomen",), broken=False)
    assert main(["segment", str(scans), "--prompts", str(prompts / "mr_abdomen.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "a folder holding <scan name>.json" in capsys.readouterr().err
    assert main(["segment", str(scans), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "for many scans this is a folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["embed", str(scans), "--address", "local"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "napari-medsam embed: error: --address needs Ray, which is not installed: "
        "pip install 'napari-medsam[server]'")


# -- segment ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_segment_cohort_fails_one_scan_resumes_and_redoes_a_changed_prompt(tmp_path, capsys):
    scans, prompts = _cohort(tmp_path)
    out = tmp_path / "out"
    args = ["segment", str(scans), "--prompts", str(prompts), "--out", str(out),
            "--backend", "onnxruntime", "--zoom", "off"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert _summary(captured.out) == {"broken": "failed", "hippo_003": "ok",
                                      "hippo_004": "ok", "mr_abdomen": "ok"}
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("napari-medsam segment: error: 1 of 4 scans failed: broken (")
    assert "[4/4]" in captured.err and "about" in captured.err  # progress with the time left
    assert "truncated" in captured.out  # the reason, on the broken scan's row
    for name in SCANS:
        _check_output(name, out / f"{name}.nii.gz")
        record = json.loads(record_path(out / f"{name}.nii.gz").read_text())
        assert record["model"] == "litemedsam" and record["ran_on"]["pid"] == os.getpid()
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{n}.nii.gz" for n in SCANS]
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    assert main(args) == 1  # again: the done scans are skipped, the broken one fails again
    captured = capsys.readouterr()
    assert _summary(captured.out) == {"broken": "failed", "hippo_003": "skipped",
                                      "hippo_004": "skipped", "mr_abdomen": "skipped"}
    assert "hippo_003: skipped: done" in captured.err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written

    changed = _prompt("hippo_004")
    changed["objects"][0]["label"] = 7  # same box, another label value
    (prompts / "hippo_004.json").write_text(json.dumps(changed))
    (scans / "broken.nii.gz").unlink()
    (out / "mr_abdomen.nii.gz").write_bytes((out / "hippo_003.nii.gz").read_bytes())
    assert main(args) == 0  # the changed prompt and the replaced output are redone
    assert _summary(capsys.readouterr().out) == {"hippo_003": "skipped", "hippo_004": "ok",
                                                 "mr_abdomen": "ok"}
    _check_output("mr_abdomen", out / "mr_abdomen.nii.gz")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "hippo_004.nii.gz")))
    assert set(np.unique(labels)) == {0, 7}


def test_ctrl_c_keeps_the_finished_outputs(tmp_path, capsys, monkeypatch):
    import napari_medsam.cohort.jobs as jobs

    scans, prompts = _cohort(tmp_path, names=("hippo_003", "mr_abdomen"), broken=False)
    real = jobs.segment_job
    calls = []

    def interrupted_second(job, settings, ran_on):
        calls.append(job.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, settings, ran_on)

    monkeypatch.setattr(jobs, "segment_job", interrupted_second)
    out = tmp_path / "out"
    assert main(["segment", str(scans), "--prompts", str(prompts), "--out", str(out),
                 "--backend", "onnxruntime", "--zoom", "off"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("napari-medsam segment: interrupted (Ctrl-C) after "
                                            "1 of 2 scans; the finished outputs are kept")
    assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["hippo_003.nii.gz"]


@pytest.mark.slow
def test_segment_cohort_on_a_local_ray_runs_tasks_equal_to_the_loop(tmp_path, capsys):
    """A CSV of two scans, once here and once as Ray tasks (a local Ray, started and shut
    down by the run): the same label maps; the records and the summary name the Ray node."""
    _cohort(tmp_path, names=("hippo_003", "mr_abdomen"), broken=False)
    outputs = {}
    for run in ("loop", "ray"):
        table = tmp_path / f"{run}.csv"
        table.write_text("image,prompts,out\n" + "".join(
            f"scans/{n}.nii.gz,prompts/{n}.json,{run}/{n}.nrrd\n"
            for n in ("hippo_003", "mr_abdomen")))
        (tmp_path / run).mkdir()
        extra = ["--address", "local"] if run == "ray" else []
        assert main(["segment", str(table), "--backend", "onnxruntime", "--zoom", "off",
                     "--threads", "1", *extra]) == 0
        captured = capsys.readouterr()
        assert _summary(captured.out) == {"hippo_003": "ok", "mr_abdomen": "ok"}
        outputs[run] = {n: _check_output(n, tmp_path / run / f"{n}.nrrd")
                        for n in ("hippo_003", "mr_abdomen")}
    assert "Ray at local, one task per scan" in captured.err
    assert captured.out.count("ray node ") == 2
    for name in ("hippo_003", "mr_abdomen"):
        np.testing.assert_array_equal(outputs["ray"][name], outputs["loop"][name])
        ran_on = json.loads(record_path(tmp_path / "ray" / f"{name}.nrrd").read_text())[
            "ran_on"]
        assert ran_on["pid"] != os.getpid()
        assert len(ran_on["ray"]["node_id"]) == 56 and ran_on["ray"]["task_id"]
    import ray

    assert not ray.is_initialized()  # the run shut its Ray down


# -- embed ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_embed_cohort_of_a_folder_then_everything_is_skipped(model_cache, tmp_path,
                                                             monkeypatch, capsys):
    cache = cache_with_models(model_cache, tmp_path)
    monkeypatch.setenv("NAPARI_MEDSAM_CACHE", str(cache))
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "ct_3slice").symlink_to(DICOM_3, target_is_directory=True)
    hippo = sitk.ReadImage(str(SCANS["hippo_003"]))
    sitk.WriteImage(hippo[:, :, 14:18], str(folder / "hippo_crop.nii.gz"))  # 4 real slices
    (folder / "hippo_crop_mask.nii.gz").symlink_to(REFERENCES["hippo_003"][0])
    data = SCANS["mr_abdomen"].read_bytes()
    (folder / "cut.nii.gz").write_bytes(data[:1000])
    args = ["embed", str(folder), "--backend", "onnxruntime"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert _summary(captured.out) == {"ct_3slice": "ok", "cut": "failed", "hippo_crop": "ok"}
    assert "3 encoded, 0 already cached" in captured.out
    from napari_medsam.engine.disk_cache import cache_entries

    assert sorted(e.slices for e in cache_entries()) == [3, 4]

    (folder / "cut.nii.gz").unlink()
    env = {**os.environ, "NAPARI_MEDSAM_CACHE": str(cache)}
    code = ("import sys; from napari_medsam.cli import main; "
            f"code = main({[*args, '--threads', '1']!r}); "
            "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert _summary(result.stdout.rsplit("\n", 2)[0]) == {"ct_3slice": "skipped",
                                                          "hippo_crop": "skipped"}
    assert result.stdout.strip().endswith("no ray")

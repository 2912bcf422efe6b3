"""Saving never destroys a good file: full disks, short writes, permissions and links."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import case_dir

from napari_medsam.io import VolumeWriteError, read_volume, write_labels
from napari_medsam.io import write as write_mod

CT = case_dir("totalseg_ct_abdomen_pelvis")  # 112 x 101 x 122 uint8 labels, 61 structures


@pytest.fixture(scope="module")
def scan():
    return read_volume(CT / "label.nii.gz")


def _other_labels(scan) -> np.ndarray:
    """Another real label map for the same scan (the liver removed, a box added)."""
    labels = scan.array.copy()
    labels[labels == 5] = 0
    labels[40:60, 30:50, 40:70] = 99
    return labels


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@contextlib.contextmanager
def _mounted_tmpfs(where, size: str, read_only: bool = False):
    """A small tmpfs (needs root: the test is skipped, with the reason, where it is refused)."""
    where.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, encoding="utf-8", errors="replace")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}); "
                    "test_a_short_write_keeps_the_old_file covers the same path")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder, leave: int) -> None:
    """Fill the file system of ``folder`` until ``leave`` bytes are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler.bin", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("keep", [0.0, 0.64])
def test_a_short_write_keeps_the_old_file(scan, tmp_path, monkeypatch, ext, keep):
    """SimpleITK's NIfTI writer ignores short writes: a full disk left a 0-byte (or cut)
    file in place of a good one, and the save reported success."""
    target = tmp_path / f"seg{ext}"
    write_labels(scan.array, target, scan)
    good = target.read_bytes()
    real_write = sitk.WriteImage

    def short_write(image, path, *args):  # what a full disk does to the NIfTI writer
        real_write(image, path, *args)
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.truncate(int(size * keep))

    monkeypatch.setattr(write_mod.sitk, "WriteImage", short_write)
    with pytest.raises(VolumeWriteError) as info:
        write_labels(_other_labels(scan), target, scan)
    message = str(info.value)
    assert f"could not write {target}" in message and f"{target} was left as it was" in message
    assert "\n" not in message
    assert target.read_bytes() == good
    assert _leftovers(tmp_path) == []


def test_a_full_disk_keeps_the_old_nifti(scan, tmp_path):
    """On a real, nearly full file system (a 4 MiB tmpfs)."""
    with _mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        for ext in (".nii.gz", ".nii"):
            target = disk / f"seg{ext}"
            write_labels(scan.array[:20], target, scan_geometry(scan))
            good = target.read_bytes()
            _fill(disk, leave=4096)
            with pytest.raises(VolumeWriteError, match="was left as it was") as info:
                write_labels(_other_labels(scan), target, scan)
            if ext == ".nii":  # its size is known: refused before writing
                assert "not enough free space" in str(info.value)
            else:
                assert "cut short" in str(info.value) or "No space" in str(info.value)
            assert target.read_bytes() == good
            assert _leftovers(disk) == []
            (disk / "filler.bin").unlink()
            target.unlink()


def scan_geometry(scan) -> dict:
    """The geometry of ``scan`` without its shape (for a cropped label map)."""
    meta = scan.metadata()
    meta.pop("shape", None)
    return meta


def test_an_existing_file_keeps_its_permissions(scan, tmp_path):
    target = tmp_path / "seg.nii.gz"
    write_labels(scan.array, target, scan)
    target.chmod(0o600)
    write_labels(_other_labels(scan), target, scan)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert np.array_equal(read_volume(target).array, _other_labels(scan))


def test_a_link_stays_a_link_and_its_target_is_written(scan, tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "seg.nii.gz"
    write_labels(scan.array, real, scan)
    link = tmp_path / "latest.nii.gz"
    link.symlink_to(real)
    written = write_labels(_other_labels(scan), link, scan, label_names={99: "box"})
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert written == real
    assert np.array_equal(read_volume(link).array, _other_labels(scan))
    assert (tmp_path / "store" / "seg.label.txt").is_file()


def test_a_read_only_folder_is_refused_before_writing(scan, tmp_path):
    with _mounted_tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        with pytest.raises(VolumeWriteError, match="is not writable"):
            write_labels(scan.array, folder / "seg.nii.gz", scan)


def test_segment_checks_the_output_before_the_model_work(tmp_path):
    """`segment` learnt that its output folder was unwritable only after all the work."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [
        {"label": 1, "name": "liver", "slice": 60, "box": [20, 30, 60, 70]}]}))
    with _mounted_tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        done = subprocess.run(
            [sys.executable, "-m", "napari_medsam.cli", "segment", str(CT / "image.nii.gz"),
             "--prompts", str(prompts), "--out", str(folder / "seg.nii.gz")],
            capture_output=True, encoding="utf-8", errors="replace",
            env={**os.environ, "NAPARI_MEDSAM_CACHE": str(tmp_path / "no-model-needed")})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"napari-medsam segment: error: --out: cannot write {folder / 'seg.nii.gz'}: folder "
        f"{folder} is not writable (permission denied)"]
    assert not (tmp_path / "no-model-needed").exists()  # no model was loaded or exported


def test_segment_onto_a_full_disk_fails_and_keeps_the_old_file(litemedsam, scan, tmp_path):
    from napari_medsam.cli import main

    prompts = tmp_path / "prompts.json"
    image = read_volume(CT / "image.nii.gz")
    z = int((scan.array == 5).sum(axis=(1, 2)).argmax())
    ys, xs = np.nonzero(scan.array[z] == 5)
    prompts.write_text(json.dumps({"objects": [
        {"label": 5, "name": "liver", "slice": z,
         "box": [int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())]}]}))
    with _mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "seg.nii.gz"
        write_labels(scan.array, out, image)
        good = out.read_bytes()
        _fill(disk, leave=1024)
        code = main(["segment", str(CT / "image.nii.gz"), "--prompts", str(prompts),
                     "--out", str(out), "--backend", "onnxruntime"])
        assert code == 1
        assert out.read_bytes() == good
        assert _leftovers(disk) == []

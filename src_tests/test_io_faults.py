"""Broken DICOM series and files the reader used to open silently or explain badly.

Every broken input is built in tmp_path from the real scans: a missing, duplicated,
shifted, cut-off, garbled or unreadable slice of the 20-slice CT series, a slice of
another size, unreadable NIfTI/NRRD files, a NIfTI-2 file and a constant scan.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import case_dir

from napari_medsam import _reader
from napari_medsam.io import VolumeReadError, read_volume, write_labels
from napari_medsam.io.volume import looks_like_label_map

CT_SERIES = ("totalseg_ct_dicom", "dicom")  # 20 slices, 512x512, 2.0 mm apart, JPEG 2000
SMALL_SERIES = ("dcmqi_ct_3slice", "dicom")  # 3 slices, uncompressed
CT_NII = ("totalseg_ct_abdomen_sm", "image.nii.gz")
MR_NRRD = ("pyradiomics_brain1_mr", "image.nrrd")
FILL_HINTS = ('slice_gaps="fill"', "NAPARI_MEDSAM_SLICE_GAPS=fill")
DEFAULT_AND_FILL: tuple[dict[str, str], ...] = ({}, {"slice_gaps": "fill"})


def _real(case_file: tuple[str, str]) -> Path:
    return case_dir(case_file[0]) / case_file[1]


def _copy(src: Path, dst: Path) -> Path:
    """Copy a real file or series folder (contents only, so the copies are writable)."""
    if src.is_dir():
        dst.mkdir()
        for f in src.iterdir():
            shutil.copyfile(f, dst / f.name)
    else:
        shutil.copyfile(src, dst)
    return dst


def _by_position(folder: Path) -> list[tuple[float, Path]]:
    """(z of ImagePositionPatient, file) sorted by z, read with SimpleITK (axial series)."""
    out = []
    for f in folder.iterdir():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        reader.ReadImageInformation()
        out.append((float(reader.GetMetaData("0020|0032").split("\\")[2]), f))
    return sorted(out)


def _series_copy(tmp_path: Path, case: tuple[str, str] = CT_SERIES) -> Path:
    return _copy(_real(case), tmp_path / "series")


def _read_error(path: Path, **kwargs: str) -> str:
    with pytest.raises(VolumeReadError) as info:
        read_volume(path, **kwargs)
    return str(info.value)


def _mm(z: float) -> str:
    return f"{z:g}"


# -- 1. missing, duplicated and shifted slices -----------------------------------------------
@pytest.mark.parametrize("removed", [[10], [7, 8]])
def test_missing_slices_are_an_error_naming_the_positions(tmp_path, removed):
    folder = _series_copy(tmp_path)
    slices = _by_position(folder)
    for i in removed:
        slices[i][1].unlink()
    message = _read_error(folder)
    assert str(folder) in message
    assert f"{len(removed)} slice" in message and "missing" in message
    for i in removed:
        assert f"{_mm(slices[i][0])} mm" in message, message
    before, after = slices[removed[0] - 1], slices[removed[-1] + 1]
    assert f"between {before[1].name} at {_mm(before[0])} mm and {after[1].name}" in message
    assert "2 mm apart" in message
    for hint in FILL_HINTS:
        assert hint in message
    # One file of the series names the same problem.
    assert "missing" in _read_error(before[1])


def test_fill_inserts_blank_slices_at_the_true_positions(tmp_path, caplog):
    full = read_volume(_real(CT_SERIES))
    folder = _series_copy(tmp_path)
    z, missing = _by_position(folder)[10]
    missing.unlink()
    volume = read_volume(folder, slice_gaps="fill")
    assert volume.shape == full.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx(full.spacing, abs=1e-6)  # 2.0, not 2.111
    assert volume.origin == pytest.approx(full.origin, abs=1e-6)
    assert volume.direction == pytest.approx(full.direction, abs=1e-9)
    kept = [k for k in range(20) if k != 10]
    np.testing.assert_array_equal(volume.array[kept], full.array[kept])
    assert (volume.array[10] == volume.array[kept].min()).all()
    assert len(volume.warnings) == 1
    assert f"{_mm(z)} mm" in volume.warnings[0] and "blank" in volume.warnings[0]
    assert volume.warnings[0] in caplog.text
    assert volume.metadata()["warnings"] == volume.warnings
    # A mask drawn on slice 15 is saved where slice 15 of the complete series is.
    mask = np.zeros(volume.shape, np.uint8)
    mask[15, 200:300, 200:300] = 1
    saved = sitk.ReadImage(str(write_labels(mask, tmp_path / "mask.nii.gz", volume)))
    on_full = sitk.Resample(saved, full.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_full), mask)


def _edit_header(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in the header part of a DICOM file."""
    assert len(old) == len(new)
    data = path.read_bytes()
    pixels = data.index(b"\xe0\x7f\x10\x00")
    assert old in data[:pixels]
    path.write_bytes(data[:pixels].replace(old, new) + data[pixels:])


def test_uneven_spacing_is_an_error_even_with_fill(tmp_path):
    folder = _series_copy(tmp_path)
    z, shifted = _by_position(folder)[10]
    assert _mm(z) == "-784.5"
    _edit_header(shifted, b"\\-784.5", b"\\-785.2")  # 0.7 mm off: not a whole slice
    for options in DEFAULT_AND_FILL:
        message = _read_error(folder, **options)
        assert "unevenly spaced" in message and shifted.name in message
        assert "-785.2 mm" in message and "2 mm apart" in message
        assert "cannot be filled" in message


def test_two_slices_at_one_position_is_an_error(tmp_path):
    folder = _series_copy(tmp_path)
    z, original = _by_position(folder)[10]
    shutil.copyfile(original, folder / "copy_of_slice.dcm")
    for options in DEFAULT_AND_FILL:
        message = _read_error(folder, **options)
        assert "two slices at the same position" in message
        assert original.name in message and "copy_of_slice.dcm" in message
        assert f"{_mm(z)} mm" in message


def test_complete_series_open_without_warnings():
    for case in (CT_SERIES, SMALL_SERIES):
        volume = read_volume(_real(case))
        assert volume.warnings == []


def test_header_checks_cost_little():
    from napari_medsam.io import dicom
    from napari_medsam.io.dicom_header import scan_folder

    folder = _real(CT_SERIES)
    start = time.perf_counter()
    scan = scan_folder(folder)
    headers = [scan.headers[name] for name in sorted(scan.headers)]
    dicom._check_sizes(str(folder), headers)
    stack = dicom._check_spacing(str(folder), headers)
    elapsed = time.perf_counter() - start
    assert len(headers) == 20 and stack is not None and stack.gaps == []
    assert abs(stack.step) == pytest.approx(2.0)
    assert elapsed < 0.5


# -- 2. cut-off, garbled and unreadable slices -----------------------------------------------
@pytest.mark.parametrize("case", [CT_SERIES, SMALL_SERIES])
def test_truncated_slice_is_refused_before_gdcm_scans_it(tmp_path, monkeypatch, case):
    folder = _series_copy(tmp_path, case)
    _, cut = _by_position(folder)[1]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    def no_scan(*args: object) -> None:
        raise AssertionError("GDCM scanned a folder holding a truncated slice")

    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesIDs", staticmethod(no_scan))
    for options in DEFAULT_AND_FILL:
        message = _read_error(folder, **options)
        assert f"{cut} is truncated" in message, message
        assert "pixel data needs" in message and "cut off" in message


def test_garbled_slice_is_reported_with_the_gap_it_leaves(tmp_path):
    folder = _series_copy(tmp_path)
    z, garbled = _by_position(folder)[10]
    data = garbled.read_bytes()
    garbled.write_bytes(data[:132] + np.random.default_rng(0).bytes(len(data) - 132))
    message = _read_error(folder)
    assert f"1 file in {folder} could not be read as DICOM: {garbled.name}" in message
    assert f"{_mm(z)} mm" in message
    for hint in FILL_HINTS:
        assert hint in message
    volume = read_volume(folder, slice_gaps="fill")
    assert volume.shape == (20, 512, 512)
    assert volume.spacing[2] == pytest.approx(2.0)
    assert any(garbled.name in w for w in volume.warnings)
    assert any(f"{_mm(z)} mm" in w for w in volume.warnings)


def test_slice_overwritten_by_garbage_is_named_with_the_gap(tmp_path):
    folder = _series_copy(tmp_path)
    z, garbage = _by_position(folder)[10]
    garbage.write_bytes(np.random.default_rng(1).bytes(garbage.stat().st_size))
    message = _read_error(folder)
    assert f"missing at {_mm(z)} mm" in message
    assert f"also holds 1 file that is not DICOM: {garbage.name}" in message


def test_several_unreadable_files_are_listed(tmp_path, monkeypatch):
    folder = _series_copy(tmp_path, SMALL_SERIES)
    (folder / "notes.dcm").write_text("not an image")
    denied = folder / "02.dcm"
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: Path(p) != denied and real_access(p, mode, **kw)
    )
    message = _read_error(folder)
    assert f"2 files in {folder} could not be read as DICOM" in message
    assert "02.dcm (permission denied)" in message and "notes.dcm (not DICOM" in message
    volume = read_volume(folder, slice_gaps="fill")  # GDCM itself can read 02.dcm as root
    assert volume.shape[0] == 3 and "02.dcm (permission denied)" in volume.warnings[0]


_READ_AS_NOBODY = """
import os, sys
from napari_medsam.io import VolumeReadError, read_volume
target, path = sys.argv[1], sys.argv[2]
assert not os.access(target, os.R_OK), "the permission was not dropped"
try:
    read_volume(path)
except VolumeReadError as exc:
    print(exc)
else:
    print("OPENED")
"""


def _read_without_permission(target: Path, path: Path) -> str:
    """Read ``path`` with ``target`` at mode 000, as a process that cannot bypass it."""
    target.chmod(0)
    command = [sys.executable, "-c", _READ_AS_NOBODY, str(target), str(path)]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that allow it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=120, check=False)
    target.chmod(0o644)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_real_unreadable_files(tmp_path):
    nii = _copy(_real(CT_NII), tmp_path / "scan.nii.gz")
    assert _read_without_permission(nii, nii) == f"cannot read {nii}: permission denied"
    nrrd = _copy(_real(MR_NRRD), tmp_path / "scan.nrrd")
    assert _read_without_permission(nrrd, nrrd) == f"cannot read {nrrd}: permission denied"
    folder = _series_copy(tmp_path)
    _, locked = _by_position(folder)[10]
    message = _read_without_permission(locked, folder)
    assert f"1 file in {folder} could not be read as DICOM: {locked.name} (permission " in message
    assert "missing at -784.5 mm" in message


# -- 3. mixed image sizes --------------------------------------------------------------------
def test_series_mixing_image_sizes_names_the_odd_file(tmp_path):
    folder = _series_copy(tmp_path, SMALL_SERIES)
    odd = folder / "02.dcm"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(odd))
    image = reader.Execute()
    small = sitk.Shrink(image, [2, 2, 1])
    for key in reader.GetMetaDataKeys():
        if reader.GetMetaData(key).strip():
            small.SetMetaData(key, reader.GetMetaData(key))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(odd))
    writer.Execute(small)
    assert list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))) == [
        reader.GetMetaData("0020|000e")
    ]
    message = _read_error(folder)
    assert "mixes image sizes: 2 files are 512x512, 1 file is 256x256: 02.dcm" in message
    assert str(folder) in message


# -- 4. permission denied on single files ----------------------------------------------------
@pytest.mark.parametrize("case", [CT_NII, MR_NRRD])
def test_permission_denied_file(tmp_path, monkeypatch, case):
    path = _copy(_real(case), tmp_path / case[1])
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: Path(p) != path and real_access(p, mode, **kw)
    )
    assert _read_error(path) == f"cannot read {path}: permission denied"


def test_permission_error_while_reading_is_translated(tmp_path, monkeypatch):
    path = _copy(_real(CT_NII), tmp_path / "scan.nii.gz")
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    assert _read_error(path) == f"cannot read {path}: permission denied"


# -- 5. NIfTI-2 ------------------------------------------------------------------------------
def _nifti2_from_nifti1(src: Path, dst: Path) -> Path:
    """Rewrite a NIfTI-1 file with the 540-byte NIfTI-2 header (same fields, same voxels)."""
    raw = gzip.decompress(src.read_bytes())
    h1 = raw[:348]

    def get(fmt: str, offset: int) -> tuple:
        return struct.unpack_from("<" + fmt, h1, offset)

    (datatype, bitpix), dims = get("2h", 70), get("8h", 40)
    header = struct.pack("<i8s2h", 540, b"n+2\x00\r\n\x1a\n", datatype, bitpix)
    header += struct.pack("<8q3d8d", *dims, *get("3f", 56), *get("8f", 76))
    header += struct.pack("<q2d2d2d2q", 544, *get("2f", 112), 0, 0, 0, 0, 0, 0)
    header += h1[148:228] + h1[228:252]  # descrip, aux_file
    header += struct.pack("<2i6d12d", *get("2h", 252), *get("6f", 256), *get("12f", 280))
    header += struct.pack("<3i", h1[122], h1[123], get("h", 68)[0])  # slice_code, units, intent
    header += h1[328:344] + h1[39:40] + b"\x00" * 15  # intent_name, dim_info, unused
    assert len(header) == 540
    data = header + b"\x00" * 4 + raw[int(get("f", 108)[0]) :]
    dst.write_bytes(gzip.compress(data) if dst.name.endswith(".gz") else data)
    return dst


@pytest.mark.parametrize("name", ["scan2.nii", "scan2.nii.gz"])
def test_nifti2_file_is_explained(tmp_path, name):
    path = _nifti2_from_nifti1(_real(CT_NII), tmp_path / name)
    # SimpleITK 2.5 does not read NIfTI-2 at all (if it ever does, open it instead).
    with pytest.raises(RuntimeError, match="Unable to determine ImageIO reader"):
        sitk.ReadImage(str(path))
    message = _read_error(path)
    assert message.startswith(f"{path} is NIfTI-2, which napari-medsam cannot read yet")
    assert "nib.Nifti1Image.from_image" in message


# -- 6. constant scans -----------------------------------------------------------------------
def _constant_like(case: tuple[str, str], value: int, path: Path, dtype=np.int16) -> Path:
    scan = sitk.ReadImage(str(_real(case)))
    image = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(scan).shape, value, dtype))
    image.CopyInformation(scan)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("value", [100, 1])
def test_constant_positive_scan_is_an_error_not_a_label_map(tmp_path, value):
    path = _constant_like(CT_NII, value, tmp_path / f"flat{value}.nii.gz")
    assert not looks_like_label_map(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    message = _read_error(path)
    assert message == (
        f"{path} is constant (every voxel is {value}): there is nothing to show or segment"
    )


def test_constant_zero_or_named_label_map_still_opens(tmp_path):
    empty = read_volume(_constant_like(CT_NII, 0, tmp_path / "drawn.nii.gz"))
    assert empty.is_label_map and not empty.array.any()
    named = read_volume(_constant_like(CT_NII, 3, tmp_path / "liver_mask.nii.gz", np.uint8))
    assert named.is_label_map and (named.array == 3).all()


# -- the napari reader: NAPARI_MEDSAM_SLICE_GAPS and notifications ----------------------------
def test_napari_reader_follows_the_environment_and_shows_warnings(tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    folder = _series_copy(tmp_path)
    _by_position(folder)[10][1].unlink()
    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    monkeypatch.delenv(_reader.SLICE_GAPS_ENV, raising=False)
    with pytest.raises(VolumeReadError, match="missing"):
        _reader.read_layers(str(folder))
    monkeypatch.setenv(_reader.SLICE_GAPS_ENV, "fill")
    ((data, meta, kind),) = _reader.read_layers(str(folder))
    assert kind == "image" and data.shape == (20, 512, 512)
    assert shown == meta["metadata"]["warnings"] and "-784.5 mm" in shown[0]
    monkeypatch.setenv(_reader.SLICE_GAPS_ENV, "sometimes")
    with pytest.raises(VolumeReadError, match="NAPARI_MEDSAM_SLICE_GAPS='sometimes'"):
        _reader.read_layers(str(folder))

"""The wheel carries the manifest and the model registry; npe2 finds and validates them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True)
    (found,) = out.glob("napari_medsam-*.whl")
    return found


def test_wheel_contains_manifest_registry_and_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_medsam/napari.yaml" in names
    assert "napari_medsam/models/registry.json" in names
    assert "napari_medsam/models/export.py" in names
    assert any(n.startswith("napari_medsam/sample_data/totalseg_ct_abdomen_pelvis/") for n in names)
    assert not any("hippocampus" in n for n in names), "CC-BY-SA data must stay out of the wheel"
    assert not any(n.endswith(".onnx") for n in names)
    manifest = zipfile.ZipFile(wheel).read("napari_medsam/napari.yaml").decode()
    assert manifest == (ROOT / "napari.yaml").read_text()


def test_wheel_declares_the_napari_manifest_entry_point(wheel):
    zf = zipfile.ZipFile(wheel)
    (entry,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    text = zf.read(entry).decode()
    assert "[napari.manifest]" in text
    assert "napari-medsam = napari_medsam:napari.yaml" in text
    assert "napari-medsam = napari_medsam.cli:main" in text


def test_npe2_validates_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run([str(npe2), "validate", "napari-medsam", "--imports"],
                            capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_runtime_never_imports_torch(litemedsam):
    """With the model exported (fixture), running it and the napari glue needs no torch."""
    code = ("import sys, numpy as np\n"
            "from napari_medsam.engine import load_model\n"
            "m = load_model('litemedsam', device='cpu', auto_export=False)\n"
            "e = m.embed(np.tile(np.arange(128, dtype=np.uint8), (100, 1)))\n"
            "m.predict(e, box=(10, 10, 60, 60))\n"
            "import napari_medsam._qt.widget, napari_medsam._reader, napari_medsam._writer\n"
            "assert 'torch' not in sys.modules, 'torch imported at run time'\n"
            "assert 'onnx' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8",
                            errors="replace")
    assert result.returncode == 0, result.stderr

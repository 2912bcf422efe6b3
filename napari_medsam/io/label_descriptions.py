"""ITK-SNAP label description files: the label names (and colours) beside a label map.

A label map ``liver_seg.nii.gz`` gets the sidecar ``liver_seg.label.txt``; ITK-SNAP
loads it with "Segmentation > Import Label Descriptions". Each line reads::

    IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
      5   221  130  101     1  1  1    "liver"

No napari or Qt imports here.
"""

from __future__ import annotations

import colorsys
import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "LabelDescription",
    "default_color",
    "label_description_path",
    "read_label_descriptions",
    "read_label_table",
    "write_label_descriptions",
]

SIDECAR_SUFFIX = ".label.txt"
_VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_CLEAR_LABEL = "Clear Label"

_LINE = re.compile(
    r"^\s*(?P<idx>\d+)\s+(?P<r>\d+)\s+(?P<g>\d+)\s+(?P<b>\d+)\s+(?P<a>[0-9.eE+-]+)"
    r"\s+(?P<vis>\d+)\s+(?P<msh>\d+)\s+\"(?P<label>.*)\"\s*$"
)

_HEADER = """\
################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
# Written by napari-medsam
################################################
"""


@dataclass(frozen=True)
class LabelDescription:
    """One row of an ITK-SNAP label description file."""

    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    alpha: float = 1.0
    visible: bool = True
    mesh_visible: bool = True


def _strip_volume_extension(name: str) -> str:
    lower = name.lower()
    for ext in _VOLUME_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def label_description_path(volume_path: str | os.PathLike[str]) -> Path:
    """The sidecar path for a label map: ``seg.nii.gz`` -> ``seg.label.txt``."""
    path = Path(volume_path)
    return path.with_name(_strip_volume_extension(path.name) + SIDECAR_SUFFIX)


def default_color(label: int) -> tuple[int, int, int]:
    """A deterministic, well spread colour for ``label`` (golden-ratio hue steps)."""
    if label == 0:
        return (0, 0, 0)
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


def _to_rgba255(color: Sequence[float]) -> tuple[tuple[int, int, int], float]:
    """Accept 0..255 integers or 0..1 floats (as napari uses), RGB or RGBA."""
    values = list(color)
    if len(values) not in (3, 4):
        raise ValueError(f"a colour needs 3 or 4 components, got {color!r}")
    floats = any(isinstance(v, float) for v in values) and all(0.0 <= v <= 1.0 for v in values)
    rgb_raw = values[:3]
    rgb = tuple(round(v * 255) if floats else int(v) for v in rgb_raw)
    if any(not 0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour components must be in 0..255 (or 0..1), got {color!r}")
    alpha = 1.0
    if len(values) == 4:
        alpha = float(values[3]) if floats or values[3] <= 1 else float(values[3]) / 255.0
    return (rgb[0], rgb[1], rgb[2]), min(max(alpha, 0.0), 1.0)


def _clean_name(name: str) -> str:
    # The format has no escaping: keep each description on one line, without quotes.
    return " ".join(str(name).replace('"', "'").split())


def write_label_descriptions(
    path: str | os.PathLike[str],
    label_names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> Path:
    """Write an ITK-SNAP label description file (atomically).

    Parameters
    ----------
    path : path-like
        The ``.label.txt`` file to write.
    label_names : mapping of int to str, optional
        Label value -> name. Values with a colour but no name get ``"Label N"``.
    colors : mapping of int to colour, optional
        RGB(A) as 0..255 integers or 0..1 floats. Missing ones get :func:`default_color`.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    cols = {int(k): v for k, v in (colors or {}).items()}
    rows = [_HEADER.rstrip("\n")]
    if 0 not in names:
        rows.append(f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8g} {0:2d} {0:2d}    "{_CLEAR_LABEL}"')
    for idx in sorted(set(names) | set(cols)):
        if idx < 0:
            raise ValueError(f"label values must be >= 0, got {idx}")
        rgb, alpha = _to_rgba255(cols[idx]) if idx in cols else (default_color(idx), 1.0)
        if idx == 0 and idx not in cols:
            alpha = 0.0
        name = _clean_name(names.get(idx, f"Label {idx}"))
        vis = 0 if idx == 0 else 1
        rows.append(
            f'{idx:5d} {rgb[0]:5d} {rgb[1]:4d} {rgb[2]:4d} {alpha:8g} {vis:2d} {vis:2d}    "{name}"'
        )
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def read_label_table(path: str | os.PathLike[str]) -> dict[int, LabelDescription]:
    """Parse an ITK-SNAP label description file into ``{value: LabelDescription}``.

    ``path`` may be the ``.label.txt`` file itself or the label map it belongs to.
    The automatic ``0 "Clear Label"`` row is left out. Lines that do not follow the
    format are skipped with a warning.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    """
    src = Path(path)
    if not src.name.lower().endswith(".txt"):
        src = label_description_path(src)
    table: dict[int, LabelDescription] = {}
    text = src.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            logger.warning(
                "%s line %d is not an ITK-SNAP label row, skipped: %r", src, lineno, line
            )
            continue
        idx = int(match["idx"])
        name = match["label"]
        if idx == 0 and name == _CLEAR_LABEL:
            continue
        table[idx] = LabelDescription(
            name=name,
            color=(int(match["r"]), int(match["g"]), int(match["b"])),
            alpha=float(match["a"]),
            visible=match["vis"] != "0",
            mesh_visible=match["msh"] != "0",
        )
    return table


def read_label_descriptions(path: str | os.PathLike[str]) -> dict[int, str]:
    """Label names from an ITK-SNAP label description file: ``{value: name}``.

    ``path`` may be the ``.label.txt`` file or the label map beside it.
    """
    return {idx: row.name for idx, row in read_label_table(path).items()}

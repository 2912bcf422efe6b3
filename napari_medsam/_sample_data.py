"""napari sample data: a CT and an MRI case shipped inside the package.

* ``totalseg_ct_abdomen_pelvis``: abdominal CT from TotalSegmentator (Apache-2.0); its
  label map is a TotalSegmentator model output, not a manual segmentation.
* ``pyradiomics_brain1_mr``: brain MRI with a hand-drawn tumour mask from PyRadiomics
  (BSD-3-Clause).

See ``sample_data/<case>/LICENSE_AND_ATTRIBUTION.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import read_volume
from .io.intensity import auto_mapping

__all__ = ["SAMPLES", "sample_ct", "sample_label_path", "sample_mr", "sample_path"]

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"

#: key -> (folder, image file, label file, display name)
SAMPLES: dict[str, tuple[str, str, str, str]] = {
    "totalseg_ct_abdomen_pelvis": (
        "totalseg_ct_abdomen_pelvis",
        "image.nii.gz",
        "label.nii.gz",
        "CT abdomen-pelvis",
    ),
    "pyradiomics_brain1_mr": ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", "MR brain"),
}
_ALIASES = {
    "ct": "totalseg_ct_abdomen_pelvis",
    "mr": "pyradiomics_brain1_mr",
    "mri": "pyradiomics_brain1_mr",
}

LayerData = tuple[Any, dict[str, Any], str]


def _key(key: str) -> str:
    name = _ALIASES.get(key.lower(), key)
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {key!r}; available: {', '.join([*SAMPLES, *_ALIASES])}")
    return name


def sample_path(key: str) -> Path:
    """Path of a shipped sample scan (``"totalseg_ct_abdomen_pelvis"``/``"ct"`` or
    ``"pyradiomics_brain1_mr"``/``"mr"``)."""
    folder, image, _, _ = SAMPLES[_key(key)]
    return SAMPLE_DIR / folder / image


def sample_label_path(key: str) -> Path:
    """Path of the label map shipped with a sample scan."""
    folder, _, label, _ = SAMPLES[_key(key)]
    return SAMPLE_DIR / folder / label


def _label_names(key: str) -> dict[int, str]:
    folder = SAMPLES[_key(key)][0]
    meta = json.loads((SAMPLE_DIR / folder / "labels.json").read_text(encoding="utf-8"))
    return {int(k): str(v) for k, v in meta.get("labels", {}).items()}


def _load(key: str) -> list[LayerData]:
    key = _key(key)
    title = SAMPLES[key][3]
    image = read_volume(sample_path(key))
    labels = read_volume(sample_label_path(key))
    labels.label_names = _label_names(key)
    mapping = auto_mapping(image.array, image.modality)
    image_meta = image.metadata()
    image_meta["intensity_mapping"] = mapping.key
    image_kwargs = {
        "name": title,
        "scale": image.display_scale,
        "translate": image.display_translate,
        "metadata": image_meta,
        "contrast_limits": list(mapping.contrast_limits),
        "colormap": "gray",
    }
    label_meta = labels.metadata()
    label_meta["reference"] = "model output" if key.startswith("totalseg") else "manual"
    label_kwargs = {
        "name": f"{title} reference labels",
        "scale": labels.display_scale,
        "translate": labels.display_translate,
        "metadata": label_meta,
        "opacity": 0.5,
    }
    return [(image.array, image_kwargs, "image"), (labels.array, label_kwargs, "labels")]


def sample_ct() -> list[LayerData]:
    """The abdominal CT and its TotalSegmentator (model output) label map."""
    return _load("totalseg_ct_abdomen_pelvis")


def sample_mr() -> list[LayerData]:
    """The brain MRI and its hand-drawn tumour mask."""
    return _load("pyradiomics_brain1_mr")

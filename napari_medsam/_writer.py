"""napari writer: save a Labels layer with the geometry of the scan it was drawn on."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from .io import write_labels as _write_label_file
from .io.volume import IDENTITY_DIRECTION

logger = logging.getLogger(__name__)

__all__ = ["geometry_from_attributes", "write_labels"]


def geometry_from_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Scan geometry for a layer: its ``metadata`` if it has one, else scale/translate.

    Without geometry in the metadata (a layer not opened by napari-medsam), spacing
    and origin come from the layer's ``scale``/``translate`` (reversed to x, y, z) with
    an identity direction, and a warning is logged: orientation may then be lost.
    """
    metadata = attributes.get("metadata") or {}
    if metadata.get("spacing") and metadata.get("origin"):
        return dict(metadata)
    scale = attributes.get("scale")
    translate = attributes.get("translate")
    ndim = len(scale) if scale is not None else 3
    scale = list(scale) if scale is not None else [1.0] * ndim
    translate = list(translate) if translate is not None else [0.0] * ndim
    logger.warning(
        "layer %r has no scan geometry in its metadata; saving with spacing/origin from "
        "its scale/translate and an identity direction (orientation may be lost)",
        attributes.get("name"),
    )
    return {
        "spacing": [abs(float(s)) for s in reversed(scale[-3:])],
        "origin": [float(t) for t in reversed(translate[-3:])],
        "direction": list(IDENTITY_DIRECTION),
    }


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels layers (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).

    Parameters
    ----------
    path : str
        Target file.
    data : array-like
        The labels, (z, y, x).
    attributes : dict
        The layer attributes napari passes (``metadata``, ``scale``, ``translate``...).
        Label names come from ``metadata["label_names"]`` when present.

    Returns
    -------
    list of str
        The written file (the label names sidecar is written beside it when there
        are names).
    """
    geometry = geometry_from_attributes(attributes)
    metadata = attributes.get("metadata") or {}
    names = metadata.get("label_names") or None
    if isinstance(data, (list, tuple)):  # multiscale labels: save the full resolution
        data = data[0]
    written = _write_label_file(np.asarray(data), path, geometry, label_names=names)
    return [str(written)]

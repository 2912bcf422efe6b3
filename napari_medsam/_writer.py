"""napari writer: save a Labels layer with the geometry of the scan it was drawn on."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
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


def label_colors(colormap: Any, labels: Iterable[int]) -> dict[int, tuple[float, ...]]:
    """The RGBA colours (0..1) a Labels layer shows, for ``labels`` and every label that
    a direct colormap names explicitly (what the ``.label.txt`` sidecar keeps).

    Parameters
    ----------
    colormap
        The layer's ``colormap`` (napari's ``CyclicLabelColormap`` or
        ``DirectLabelColormap``), or None.
    labels
        Label values whose colour is wanted anyway (e.g. the named ones).
    """
    if colormap is None:
        return {}
    from napari.utils.colormaps import DirectLabelColormap

    wanted = {int(v) for v in labels}
    if isinstance(colormap, DirectLabelColormap):
        wanted |= {int(k) for k in colormap.color_dict if k is not None}
    wanted.discard(0)
    if not wanted:
        return {}
    values = np.array(sorted(wanted), dtype=np.uint32)
    rgba = np.asarray(colormap.map(values), dtype=float)
    return {int(v): tuple(round(float(c), 4) for c in color)
            for v, color in zip(values, rgba, strict=True)}


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels layers (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).

    Parameters
    ----------
    path : str
        Target file.
    data : array-like
        The labels, (z, y, x).
    attributes : dict
        The layer attributes napari passes (``metadata``, ``scale``, ``translate``,
        ``colormap``...). Label names come from ``metadata["label_names"]`` when present;
        the colours (with their alpha) of the named labels and of every label a direct
        colormap sets go to the sidecar too (:func:`label_colors`).

    Returns
    -------
    list of str
        The written file (the ``.label.txt`` sidecar is written beside it when there
        are names or colours).
    """
    geometry = geometry_from_attributes(attributes)
    metadata = attributes.get("metadata") or {}
    names = metadata.get("label_names") or None
    colors = label_colors(attributes.get("colormap"), names or ()) or None
    if isinstance(data, (list, tuple)):  # multiscale labels: save the full resolution
        data = data[0]
    written = _write_label_file(np.asarray(data), path, geometry, label_names=names,
                                colors=colors)
    return [str(written)]

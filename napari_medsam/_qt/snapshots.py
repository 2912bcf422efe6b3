"""What an autosave writes of a Labels layer: voxels, name, metadata, colours and geometry."""

from __future__ import annotations

import copy

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap

from napari_medsam.io.recovery import RecoverySnapshot

__all__ = ["layer_colors", "snapshot_of"]


def layer_colors(labels: Labels) -> dict[int | None, tuple[float, ...]] | None:
    """The colours of a layer with a direct (per label) colour map, else None."""
    colormap = labels.colormap
    if not isinstance(colormap, DirectLabelColormap):
        return None
    return {key: tuple(float(c) for c in np.asarray(value).ravel())
            for key, value in colormap.color_dict.items()}


def snapshot_of(layer: Labels, image: Image | None, digest: str,
                labels: np.ndarray) -> RecoverySnapshot:
    """The recovery snapshot of ``layer`` holding voxels ``labels`` (a consistent copy),
    for the scan with content digest ``digest`` shown as ``image`` (its metadata, merged
    under the layer's own)."""
    metadata = dict(image.metadata) if image is not None else {}
    metadata.update(layer.metadata)
    return RecoverySnapshot(image_digest=digest, labels=labels, layer_name=layer.name,
                            metadata=copy.deepcopy(metadata), colors=layer_colors(layer),
                            scale=tuple(float(s) for s in layer.scale),
                            translate=tuple(float(t) for t in layer.translate))

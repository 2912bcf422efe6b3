"""Writing a Labels layer to disk with its scan's geometry (the widget's *Save labels*)."""

from __future__ import annotations

import logging
from pathlib import Path

from napari.utils.notifications import show_error, show_info

logger = logging.getLogger(__name__)

__all__ = ["ask_save_path", "save_labels"]

FORMATS = "Label maps (*.nii.gz *.nii *.nrrd *.mha)"


def save_labels(labels, image, path: str | Path) -> Path | None:
    """Write ``labels`` (a Labels layer) to ``path`` with the geometry of ``image`` (its
    metadata; None: none) and the layer's names and colours. A failure is one notification
    and None."""
    from napari_medsam._writer import geometry_from_attributes, label_colors
    from napari_medsam.io import write_labels

    attributes = {"metadata": image.metadata if image is not None else {},
                  "scale": labels.scale, "translate": labels.translate}
    try:
        names = labels.metadata.get("label_names")
        written = write_labels(labels.data, path, geometry_from_attributes(attributes),
                               label_names=names,
                               colors=label_colors(labels.colormap, names or ()) or None)
    except (OSError, ValueError) as exc:
        show_error(f"MedSAM: could not save {path}: {exc}")
        return None
    show_info(f"Saved {written}")
    return Path(written)


def ask_save_path(parent, name: str) -> str | None:
    """Ask where to save labels ``name`` (a file dialog over ``parent``); None if cancelled."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, "Save labels", f"{name}.nii.gz", FORMATS)
    return path or None

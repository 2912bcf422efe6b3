"""Where napari-medsam keeps files on the user's machine."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "NAPARI_MEDSAM_CACHE"


def cache_dir() -> Path:
    """Root of the user cache (``$NAPARI_MEDSAM_CACHE`` or the platform's cache folder)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("napari-medsam", appauthor=False))


def model_dir(name: str) -> Path:
    """Folder holding the exported ONNX files of model ``name``.

    Raises
    ------
    ValueError
        For a name that is not a plain folder name (see ``models.registry.check_name``).
    """
    from napari_medsam.models.registry import check_name

    return cache_dir() / "models" / check_name(name)

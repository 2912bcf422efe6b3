"""Model registry and ONNX exporters for napari-medsam.

This package is importable at run time as ``napari_medsam.models`` (the build ships the
top-level ``models/`` folder inside the wheel). Importing it never imports torch: only
:mod:`napari_medsam.models.export` and its helpers do, and only when a model is exported.
"""

from .registry import ModelSpec, get_spec, list_specs, load_registry

__all__ = ["ModelSpec", "get_spec", "list_specs", "load_registry"]

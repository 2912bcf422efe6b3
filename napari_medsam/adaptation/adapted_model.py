"""An adapted decoder becomes a model of the registry (torch and onnx used here only).

The folder ``<cache>/models/<name>/`` holds ``decoder.onnx`` (exported by the exporter's own
path and parity-checked against PyTorch), ``model.json`` (the base model's entry with the new
decoder; the encoder entry points at the base model's file, which is shared, not copied),
``export.json`` (the decoder's sha256, its parity and the PyTorch fingerprint) and
``card.json``: the model card (base model and its encoder's sha256, the training scans by
content hash, labels and names, prompts, epochs, seed, held-out Dice before and after).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsam.models.registry import (
    SPEC_FILENAME,
    FileSpec,
    ModelSpec,
    PointDomain,
    check_name,
    load_registry,
)
from napari_medsam.paths import model_dir

logger = logging.getLogger(__name__)

CARD = "card.json"
PARITY_TOLERANCE = 1e-3


class AdaptError(RuntimeError):
    """Adaptation cannot go on; the message says why and what to do."""


def base_checkpoint(spec: ModelSpec) -> Path:
    """The checkpoint a model's PyTorch modules come from (built-in or user export)."""
    from napari_medsam.models.export_common import EXPORT_INFO, ExportError, model_checkpoint

    if spec.source.get("adapted_from"):
        raise AdaptError(f"{spec.name} is itself adapted; adapt its base model "
                         f"{spec.source['adapted_from']!r} instead")
    try:
        info = json.loads((spec.directory / EXPORT_INFO).read_text()) \
            if (spec.directory / EXPORT_INFO).is_file() else {}
        return model_checkpoint(spec, info)
    except ExportError as exc:
        raise AdaptError(str(exc)) from exc


def load_decoder(spec: ModelSpec):
    """(image encoder, :class:`DecoderForExport`) of ``spec`` in PyTorch, for training."""
    from napari_medsam.models.builders import CheckpointError, build_model
    from napari_medsam.models.onnx_wrappers import DecoderForExport

    try:
        model = build_model(spec.architecture, base_checkpoint(spec))
    except CheckpointError as exc:
        raise AdaptError(str(exc)) from exc
    decoder = DecoderForExport(model.prompt_encoder, model.mask_decoder, spec.input_size)
    return model.image_encoder.eval(), decoder.eval()


def check_new_name(name: str) -> None:
    """Raise :class:`AdaptError` for an unsafe name or one already in the registry."""
    try:
        check_name(name)
    except ValueError as exc:
        raise AdaptError(str(exc)) from None
    if name in load_registry() or model_dir(name).exists():
        raise AdaptError(f"a model called {name!r} exists already: choose another --name "
                         "(napari-medsam models lists them)")


def _smoke_run(image_encoder, decoder, spec: ModelSpec):
    """Torch inputs/outputs of the smoke prompt through the base encoder and ``decoder``."""
    import torch

    from napari_medsam.models.fingerprint import smoke_inputs

    inputs = smoke_inputs(spec.input_size, spec.embedding_shape[-1])
    with torch.no_grad():
        embedding = image_encoder(torch.from_numpy(inputs["image"]))
        args = (embedding, *(torch.from_numpy(inputs[k]) for k in
                             ("point_coords", "point_labels", "mask_input", "has_mask_input")))
        masks, iou = decoder(*args)
    return inputs, args, masks.numpy(), iou.numpy()


def _export_decoder(decoder, args, path: Path) -> None:
    import onnx

    from napari_medsam.models.export_common import torch_export

    torch_export(decoder, args, path,
                 ["image_embeddings", "point_coords", "point_labels", "mask_input",
                  "has_mask_input"],
                 ["low_res_masks", "iou_predictions"],
                 {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    onnx.checker.check_model(str(path))


def _onnx_parity(path: Path, args, torch_masks: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
    masks, _ = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    return float(np.abs(masks[:, 0] - torch_masks[:, 0]).max())


def export_checked(image_encoder, decoder, spec: ModelSpec, path: Path):
    """Export ``decoder`` (in eval mode) to ``path`` as ONNX and check it against PyTorch on
    the smoke prompt through ``spec``'s encoder; (args, masks, iou, largest difference).

    Raises
    ------
    AdaptError
        The export differs by more than :data:`PARITY_TOLERANCE`.
    """
    _, args, masks, iou = _smoke_run(image_encoder, decoder, spec)
    _export_decoder(decoder, args, path)
    diff = _onnx_parity(path, args, masks)
    if not diff <= PARITY_TOLERANCE:
        raise AdaptError(f"the exported decoder differs from PyTorch by {diff:.2e} "
                         f"(> {PARITY_TOLERANCE}); nothing was saved")
    return args, masks, iou, diff


def save_adapted_model(name: str, base: ModelSpec, image_encoder, decoder, *,
                       answers_points: bool, card: dict[str, Any],
                       point_domain: PointDomain | None = None) -> ModelSpec:
    """Export ``decoder`` as model ``name`` (sharing ``base``'s encoder) and register it.

    ``answers_points``: the model takes clicks as point prompts (one decoder call); without
    it clicks keep the click search, as for the base model. ``point_domain``: the slices it
    was trained and checked on (elsewhere the base model's decoder answers, see
    :meth:`~napari_medsam.segmentation.SegmentationSession.decoder_for`).

    Raises
    ------
    AdaptError
        For a taken or unsafe name, or an export that does not match PyTorch.
    """
    from napari_medsam.engine.model_files import file_digest, file_sha256
    from napari_medsam.models.fingerprint import summarize

    check_new_name(name)
    decoder = decoder.eval()
    target = model_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        work = Path(tmp)
        path = work / "decoder.onnx"
        args, masks, iou, diff = export_checked(image_encoder, decoder, base, path)
        digest = file_sha256(path)
        fingerprint = summarize(args[0].numpy(), masks, iou)
        encoder_path = base.path("encoder")
        spec = ModelSpec(
            name=name, display_name=f"{name} (adapted from {base.display_name})",
            architecture=base.architecture, input_size=base.input_size,
            embedding_shape=base.embedding_shape, low_res_size=base.low_res_size,
            preprocessing=dict(base.preprocessing),
            prompts=("box", "point") if answers_points else ("box",),
            files={"encoder": FileSpec(base.files["encoder"].filename,
                                       file_digest(encoder_path),
                                       model=base.encoder_model),
                   "decoder": FileSpec("decoder.onnx", digest)},
            source={"adapted_from": base.name}, opset=base.opset, builtin=False,
            notes=f"Decoder adapted on {len(card.get('scans', []))} scan(s); see card.json.",
            fingerprint=fingerprint,
            point_domain=point_domain)
        (work / SPEC_FILENAME).write_text(json.dumps(spec.to_json(), indent=2))
        (work / "export.json").write_text(json.dumps(
            {"name": name, "sha256": {"decoder": digest}, "max_abs_diff": diff,
             "fingerprint": fingerprint, "exported": time.strftime("%Y-%m-%dT%H:%M:%S")},
            indent=2))
        (work / CARD).write_text(json.dumps(card, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
        target.chmod(0o755)
        work.mkdir()  # TemporaryDirectory removes the (now empty) name
    logger.info("saved the adapted model %s in %s (decoder parity %.1e)", name, target, diff)
    from napari_medsam.models.registry import get_spec

    return get_spec(name)

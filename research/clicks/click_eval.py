"""Click-to-mask evaluation: one positive click per slice vs the tight box, 3D Dice.

For each object and each slice where the reference object is present, one positive click
at the interior point of its largest connected component (argmax of the distance
transform) is turned into a mask by :func:`napari_medsam.segmentation.clicks.segment_clicks`;
the stacked masks are compared (3D Dice) with the reference, next to tight boxes on the
same slices. Embeddings are cached per case in ``/tmp/click_emb_<case>.npz``.

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/mcache3 python research/clicks/click_eval.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))

from helpers import dice, label_names, load_case, tight_box  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.engine.protocol import Embedding  # noqa: E402
from napari_medsam.segmentation.clicks import segment_clicks  # noqa: E402

#: (case, image, label, modality, labels or None for "every label with >= 50 voxels")
CASES = [
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz", "CT", [5, 1, 2, 3, 6, 21, 52]),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz", "MRI", None),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz",
     "MRI", [1, 2]),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", "hippocampus_004_label.nii.gz",
     "MRI", [1, 2]),
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", "MRI", None),
]


def embeddings(model, case: str, image: str, mapped: np.ndarray) -> list[Embedding]:
    """Embed every slice once; reuse ``/tmp/click_emb_<case>_<image>.npz``."""
    path = Path(f"/tmp/click_emb_{case}_{image.split('.')[0]}.npz")
    if path.exists():
        data = np.load(path)
        feats = data["features"]
        resized = tuple(int(v) for v in data["resized"])
        size = tuple(int(v) for v in data["original"])
    else:
        embs = [model.embed(s) for s in mapped]
        feats = np.stack([e.features for e in embs]).astype(np.float16)
        resized, size = embs[0].resized_size, embs[0].original_size
        np.savez(path, features=feats, resized=np.array(resized), original=np.array(size))
    return [Embedding(features=f.astype(np.float32), original_size=size, resized_size=resized,
                      input_size=256, model=model.name) for f in feats]


def interior_click(mask2d: np.ndarray) -> tuple[int, int]:
    """(x, y) of the point farthest from the border of the largest component."""
    lab, n = ndimage.label(mask2d)
    sizes = ndimage.sum(mask2d, lab, range(1, n + 1))
    largest = lab == (1 + int(np.argmax(sizes)))
    dist = ndimage.distance_transform_edt(largest)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def evaluate(model, case, image, label, modality, labels, ranking="rule"):
    _, ref, mapped = load_case(case, image, label)
    ref = np.asarray(ref).astype(np.int64)
    names = label_names(case)
    embs = embeddings(model, case, image, mapped)
    if labels is None:
        labels = [int(v) for v in np.unique(ref) if v and (ref == v).sum() >= 50]
    rows = []
    for lab in labels:
        obj = ref == lab
        zs = [z for z in range(obj.shape[0]) if obj[z].any()]
        box_vol = np.zeros_like(obj)
        click_vol = np.zeros_like(obj)
        calls, seconds = 0, 0.0
        for z in zs:
            x0, y0, x1, y1 = tight_box(obj[z])  # one-pixel-wide boxes have no area: widen
            rows_, cols_ = obj[z].shape
            box = (x0, y0, min(cols_ - 1, max(x1, x0 + 1)), min(rows_ - 1, max(y1, y0 + 1)))
            box_vol[z] = model.predict(embs[z], box=box).mask
            t0 = time.perf_counter()
            res = segment_clicks(model, embs[z], [interior_click(obj[z])], image=mapped[z],
                                 ranking=ranking)
            seconds += time.perf_counter() - t0
            click_vol[z] = res.mask
            calls += res.calls
        row = dict(case=case if "hippo" not in image else image.split("_image")[0], label=lab,
                   name=names.get(lab, str(lab)), modality=modality, slices=len(zs),
                   box_dice=dice(box_vol, obj), click_dice=dice(click_vol, obj),
                   calls_per_slice=calls / len(zs), ms_per_click=1000 * seconds / len(zs))
        row["diff"] = row["click_dice"] - row["box_dice"]
        rows.append(row)
        print(f"{row['case'][:26]:26s} {lab:3d} {row['name'][:18]:18s} {len(zs):4d} "
              f"{row['box_dice']:.3f} {row['click_dice']:.3f} {row['diff']:+.3f} "
              f"{row['calls_per_slice']:5.1f} {row['ms_per_click']:6.0f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows and means here")
    parser.add_argument("--only", help="only cases whose name contains this")
    parser.add_argument("--ranking", choices=["auto", "rule", "learned"], default="auto",
                        help="candidate ranking: auto = learned on CT, rule on MRI (as the "
                             "session does)")
    args = parser.parse_args(argv)
    model = load_model("litemedsam", device="cpu")
    print(f"{'case':26s} {'lab':>3s} {'name':18s} {'sl':>4s} {'box':>5s} {'click':>5s} "
          f"{'diff':>6s} {'calls':>5s} {'ms':>6s}")
    rows = []
    for spec in CASES:
        if args.only and args.only not in spec[0] + spec[1]:
            continue
        ranking = args.ranking
        if ranking == "auto":
            ranking = "learned" if spec[3] == "CT" else "rule"
        rows += evaluate(model, *spec, ranking=ranking)
    means = {}
    for mod in ("CT", "MRI"):
        sel = [r for r in rows if r["modality"] == mod]
        if sel:
            means[mod] = {k: float(np.mean([r[k] for r in sel]))
                          for k in ("box_dice", "click_dice", "diff", "calls_per_slice",
                                    "ms_per_click")}
            m = means[mod]
            print(f"mean {mod} ({len(sel)} objects): box {m['box_dice']:.3f} click "
                  f"{m['click_dice']:.3f} diff {m['diff']:+.3f} calls {m['calls_per_slice']:.1f}"
                  f" ms/click {m['ms_per_click']:.0f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "means": means}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

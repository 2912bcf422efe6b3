"""Checks behind "regions on a grid" (README, 2026-12-06).

``order``: each structure of the MR abdomen and of the 512-pixel CT DICOM is boxed on its
largest slice, in label order in one session and in reverse order in a fresh one; prints how
many masks differ between the two orders (9 of 23 on the MR abdomen with the former reuse by
history, 0 with the grid).

``placement``: one click per slice on the brain tumour through the click search, under
several region placements (8-pixel grid, both grids with 10 % or 25 % room, a 16-pixel coarse
grid, the centred region); per-slice Dice.

    python research/zoom_roi/placement_checks.py order
    python research/zoom_roi/placement_checks.py placement
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))

from helpers import case_dir, tight_box  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.evaluation import dice, interior_click  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession, SliceRef  # noqa: E402
from napari_medsam.segmentation.roi import RoiPolicy  # noqa: E402


def _case(name: str):
    folder = case_dir(name)
    image = folder / "image.nii.gz"
    volume = read_volume(image if image.exists() else folder / "dicom")
    return volume, np.asarray(read_volume(folder / "label.nii.gz").array)


def order(model) -> None:
    for name in ("totalseg_mr_abdomen_sm", "totalseg_ct_dicom"):
        volume, labels = _case(name)
        mapping = auto_mapping(volume.array, volume.modality)
        prompts = []
        for value in (int(v) for v in np.unique(labels) if v):
            obj = labels == value
            z = int(np.argmax(obj.sum(axis=(1, 2))))
            prompts.append((value, z, tight_box(obj[z])))
        first = SegmentationSession(model, volume.array, mapping, zoom="auto")
        reverse = SegmentationSession(model, volume.array, mapping, zoom="auto")
        a = {v: first.predict_prompts(SliceRef(0, z), [b]) for v, z, b in prompts}
        b = {v: reverse.predict_prompts(SliceRef(0, z), [box])
             for v, z, box in reversed(prompts)}
        differ = [(v, round(dice(a[v], b[v]), 3)) for v, _, _ in prompts
                  if not np.array_equal(a[v], b[v])]
        print(f"{name}: {len(prompts)} boxes, {len(differ)} masks differ between the orders "
              f"{differ}; region embeddings {first.roi_encoder_calls} / "
              f"{reverse.roi_encoder_calls}")


def placement(model) -> None:
    folder = case_dir("pyradiomics_brain1_mr")
    volume = read_volume(folder / "image.nrrd")
    tumour = np.asarray(read_volume(folder / "label.nrrd").array) > 0
    mapping = auto_mapping(volume.array, volume.modality)
    policies = {"8-pixel grid": RoiPolicy(grids=(0.125,)),
                "32/8, 10 % room (product)": RoiPolicy(),
                "32/8, 25 % room": RoiPolicy(margin=0.25),
                "16/8, 10 % room": RoiPolicy(grids=(0.25, 0.125)),
                "centred (1-pixel grid)": RoiPolicy(grids=(1 / 64,))}
    for label, policy in policies.items():
        session = SegmentationSession(model, volume.array, mapping, zoom="auto",
                                      roi_policy=policy)
        scores = []
        for z in np.flatnonzero(tumour.any(axis=(1, 2))):
            click = interior_click(tumour[z])
            mask = session.predict_prompts(SliceRef(0, int(z)), positives=[click])
            scores.append(dice(mask, tumour[z]))
        print(f"{label:28s} mean {np.mean(scores):.3f}  per slice "
              + " ".join(f"{s:.3f}" for s in scores)
              + f"  region embeddings {session.roi_encoder_calls}")


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "order"
    model = load_model("litemedsam", device="cpu", threads=2)
    {"order": order, "placement": placement}[which](model)


if __name__ == "__main__":
    main()

"""Propagation after adapting the decoder to the object's accepted slices (issue 16).

The five MRI objects of the propagation study (the brain tumour, both hippocampus labels of
cases 003 and 004), zoom auto, 3D Dice against the reference. A user accepts the object on
some slices (here: the reference mask, as a user would correct and accept it), then
propagates:

* ``base``: :func:`~napari_medsam.segmentation.propagation.propagate_volume` from those
  slices with LiteMedSAM;
* ``adapted``: the decoder first trained on those slices
  (:func:`within_scan.adapt_to_anchors` beside this script), then the same
  propagation with it (the embeddings are shared).

With one accepted slice (the largest) and with three (the largest and the slices at 1/4 and
3/4 of the object's extent). The adaptation's time is stated per object.

    NAPARI_MEDSAM_CACHE=/tmp/adapt-cache python \\
        research/adaptation_within_scan/propagation_adapted.py --anchors 3 \\
        --json research/adaptation_within_scan/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from helpers import case_dir, dice  # noqa: E402
from within_scan import adapt_to_anchors  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession  # noqa: E402
from napari_medsam.segmentation.propagation import propagate_volume  # noqa: E402

OBJECTS = [
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", 1),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz", 1),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz", 2),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", "hippocampus_004_label.nii.gz", 1),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", "hippocampus_004_label.nii.gz", 2),
]


def anchor_slices(obj: np.ndarray, count: int) -> list[int]:
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    largest = int(obj.sum(axis=(1, 2)).argmax())
    if count == 1:
        return [largest]
    quarter = (int(zs[-1]) - int(zs[0])) // 4
    return sorted({int(zs[0]) + quarter, largest, int(zs[-1]) - quarter})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", default="1,3")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--json")
    args = parser.parse_args()
    model = load_model("litemedsam", "cpu")
    rows = []
    for case, image, label, value in OBJECTS:
        volume = read_volume(case_dir(case) / image)
        obj = read_volume(case_dir(case) / label).array == value
        session = SegmentationSession(model, volume.array,
                                      auto_mapping(volume.array, volume.modality),
                                      zoom="auto", disk_cache=True)
        for count in (int(c) for c in args.anchors.split(",")):
            anchors = {z: obj[z] for z in anchor_slices(obj, count)}
            base = dice(propagate_volume(session, 0, anchors), obj)
            started = time.perf_counter()
            kwargs = {"epochs": args.epochs} if args.epochs else {}
            result = adapt_to_anchors(session, 0, anchors, **kwargs)
            seconds = time.perf_counter() - started
            if result.model is None:  # not adapted (one anchor, or no gain on the held-out)
                adapted = base
            else:
                adapted_session = SegmentationSession(result.model, volume.array,
                                                      session.mapping, zoom="auto",
                                                      cache=session.cache,
                                                      data_id=session.data_id)
                adapted = dice(propagate_volume(adapted_session, 0, anchors), obj)
            result.close()
            row = {"object": f"{case}/{label}:{value}", "anchors": count,
                   "base": round(base, 4), "adapted": round(adapted, 4),
                   "used": result.model is not None, "heldout": result.heldout,
                   "reason": result.reason,
                   "adapt_seconds": round(seconds, 1), "examples": result.examples}
            rows.append(row)
            print(row, flush=True)
    for count in (int(c) for c in args.anchors.split(",")):
        picked = [r for r in rows if r["anchors"] == count]
        print(f"{count} anchor(s): base {np.mean([r['base'] for r in picked]):.3f}, adapted "
              f"{np.mean([r['adapted'] for r in picked]):.3f}, adaptation "
              f"{np.median([r['adapt_seconds'] for r in picked]):.0f} s (median)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

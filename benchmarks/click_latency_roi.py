"""One click on an embedded MRI slice: the whole-slice click search (``zoom="off"``) against
the search through regions of interest (``zoom="auto"``, the default).

For each object the click is at the interior point of the reference's largest axial slice;
``session.predict_prompts`` is timed on a fresh session (slice embedded beforehand, so the
first click includes the ROI's encoder run) and once more for the same click (ROI cached).
Medians of ``--repeats`` sessions. No Qt: the widget adds its layer update on top
(``preview_latency.py``).

    python benchmarks/click_latency_roi.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))

from helpers import case_dir  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.evaluation import interior_click  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession, SliceRef  # noqa: E402

#: (case, image, label file, label, name)
OBJECTS = [
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz", 1,
     "hippocampus head"),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz", 2, "right kidney"),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz", 5, "liver"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = load_model()
    print("engine:", ", ".join(model.providers))
    for case, image, label_file, label, name in OBJECTS:
        volume = read_volume(case_dir(case) / image)
        obj = np.asarray(read_volume(case_dir(case) / label_file).array) == label
        ref = SliceRef(0, int(np.argmax(obj.sum(axis=(1, 2)))))
        click = interior_click(obj[ref.index])
        mapping = auto_mapping(volume.array, volume.modality)
        for mode in ("off", "auto"):
            first, again = [], []
            for _ in range(args.repeats):
                session = SegmentationSession(model, volume.array, mapping, zoom=mode)
                session.embedding(ref)
                for times in (first, again):
                    start = time.perf_counter()
                    session.predict_prompts(ref, positives=[click])
                    times.append(time.perf_counter() - start)
            print(f"{name:18s} zoom {mode:4s} first click {1000 * np.median(first):5.0f} ms"
                  f"  same click again {1000 * np.median(again):5.0f} ms"
                  f"  (ROI encoder runs per session: {session.roi_encoder_calls})", flush=True)


if __name__ == "__main__":
    main()

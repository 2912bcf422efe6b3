"""Propagation on the MRI objects along other slicing axes, fused views, and the no-drift ceiling.

Three studies of ``README.md`` beside this file ("Other slicing axes, fused views and the
no-drift ceiling"), all with the session's defaults (``zoom="auto"``, the chosen step and
stop rules) and the anchor of ``propagation_eval.py`` (the tight box of the reference on its
largest slice, segmented with the widget's call):

* ``axes``: one anchor on the largest slice along each array axis (0 axial, 1 coronal,
  2 sagittal for these scans), propagated along that axis; also a tight box from the
  reference on every slice along that axis (an upper reference, it needs the answer);
* ``fusion``: the axial run, then a run along each other axis anchored on the axial result's
  largest slice there, and the voxel-wise majority of the three (no reference used after
  the axial anchor); beside it the same with reference anchors on every axis;
* ``ceiling``: every axial slice of the object predicted by one propagation step from the
  *reference* mask of its neighbour towards the anchor (no drift), over the reference's own
  slice range (a perfect stop): what the step could reach if it never lost the object.

Usage::

    python research/propagation/propagation_axes.py [--studies axes,fusion,ceiling] \\
        [--only hippocampus]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))

from helpers import case_dir, dice, tight_box  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession, SliceRef  # noqa: E402
from napari_medsam.segmentation.propagation import (  # noqa: E402
    grow_box,
    propagate_volume,
    segment_from,
)

#: (case, image, label, labels): the MRI objects of issue 5
CASES = [
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", [1]),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz",
     [1, 2]),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", "hippocampus_004_label.nii.gz",
     [1, 2]),
]


def box_prediction(session, axis: int, index: int, mask2d: np.ndarray) -> np.ndarray:
    """The widget's call for a tight box around ``mask2d`` on one slice."""
    box = grow_box(tight_box(mask2d), 0.0, mask2d.shape)
    return np.asarray(session.predict_prompts(SliceRef(axis, index), [box]), dtype=bool)


def largest(view: np.ndarray) -> int:
    return int(np.argmax(view.sum(axis=(1, 2))))


def run_from_largest(session, axis: int, obj: np.ndarray) -> np.ndarray:
    """Anchor on the largest slice of ``obj`` along ``axis`` (tight box), then propagate."""
    view = np.moveaxis(obj, axis, 0)
    index = largest(view)
    return propagate_volume(session, axis, {index: box_prediction(session, axis, index,
                                                                  view[index])})


def tight_every_slice(session, axis: int, obj: np.ndarray) -> np.ndarray:
    out = np.zeros_like(obj)
    view, out_view = np.moveaxis(obj, axis, 0), np.moveaxis(out, axis, 0)
    for index in np.flatnonzero(view.any(axis=(1, 2))):
        out_view[index] = box_prediction(session, axis, int(index), view[index])
    return out


def no_drift(session, obj: np.ndarray) -> np.ndarray:
    """Axial steps from the reference's neighbouring mask, within the reference's extent."""
    z = largest(obj)
    out = np.zeros_like(obj)
    out[z] = box_prediction(session, 0, z, obj[z])
    for index in np.flatnonzero(obj.any(axis=(1, 2))):
        if index != z:
            prev = obj[index - 1] if index > z else obj[index + 1]
            out[index] = segment_from(session, SliceRef(0, int(index)), prev)[0]
    return out


def majority(*volumes: np.ndarray) -> np.ndarray:
    return np.sum([v.astype(np.int8) for v in volumes], axis=0) * 2 > len(volumes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default="axes,fusion,ceiling")
    parser.add_argument("--only", default="", help="substring of the case folder or image")
    args = parser.parse_args()
    studies = set(args.studies.split(","))
    model = load_model()
    sums: dict[str, list[float]] = {}
    for case, image, label, labels in CASES:
        if args.only and args.only not in case and args.only not in image:
            continue
        volume = read_volume(case_dir(case) / image)
        ref = np.asarray(read_volume(case_dir(case) / label).array)
        session = SegmentationSession(model, volume.array,
                                      auto_mapping(volume.array, volume.modality), zoom="auto")
        for lab in labels:
            obj = ref == lab
            name = f"{Path(image).name.split('.')[0][:15]}:{lab}"
            begin = time.perf_counter()
            row: dict[str, float] = {}
            runs = {}
            if studies & {"axes", "fusion"}:
                for axis in (0, 1, 2):
                    runs[axis] = run_from_largest(session, axis, obj)
                    row[f"run axis {axis}"] = dice(runs[axis], obj)
            if "axes" in studies:
                for axis in (0, 1, 2):
                    row[f"tight axis {axis}"] = dice(tight_every_slice(session, axis, obj), obj)
            if "fusion" in studies:
                others = []
                for axis in (1, 2):  # anchored on the axial run, no reference
                    view = np.moveaxis(runs[0], axis, 0)
                    if not view.any():
                        others.append(np.zeros_like(obj))
                        continue
                    index = largest(view)
                    others.append(propagate_volume(session, axis, {
                        index: box_prediction(session, axis, index, view[index])}))
                    row[f"from axial, axis {axis}"] = dice(others[-1], obj)
                row["majority (axial anchor only)"] = dice(majority(runs[0], *others), obj)
                row["majority (reference anchors)"] = dice(majority(runs[0], runs[1], runs[2]),
                                                           obj)
            if "ceiling" in studies:
                row["no-drift ceiling"] = dice(no_drift(session, obj), obj)
            print(f"{case[:22]:22s} {name:20s} " + "  ".join(
                f"{key} {value:.3f}" for key, value in row.items())
                + f"  ({time.perf_counter() - begin:.0f} s)", flush=True)
            for key, value in row.items():
                sums.setdefault(key, []).append(value)
    print("mean over objects: " + "  ".join(f"{key} {np.mean(v):.3f}" for key, v in sums.items()))


if __name__ == "__main__":
    main()

"""Extra time per box prompt with ``zoom="auto"``: new ROI, cached ROI, whole slice.

For every slice of a case where a label is present, with the slice's embedding already
cached (as after "Embed volume" or a first prompt), times
``session.predict_prompts(ref, [box])`` (the widget's call):

- ``off``: whole slice only (one decoder call);
- ``auto, new ROI``: the ROI is embedded first (one encoder run) then two decoder calls;
- ``auto, cached ROI``: the same prompt again (no encoder run).

Prints medians and the load average (the machine may be shared), e.g.::

    python benchmarks/roi_cost.py --case totalseg_mr_abdomen_sm --labels 3,7,8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medsam import evaluation as ev  # noqa: E402
from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession, SliceRef  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CASES = {
    "totalseg_mr_abdomen_sm": ("image.nii.gz", "label.nii.gz"),
    "msd_hippocampus_mr": ("hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz"),
    "pyradiomics_brain1_mr": ("image.nrrd", "label.nrrd"),
}


def _ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values) if values else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="totalseg_mr_abdomen_sm", choices=list(CASES))
    p.add_argument("--labels", help="comma-separated labels (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--json", help="write the timings here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    image_name, label_name = CASES[args.case]
    volume = read_volume(DATA / args.case / image_name)
    reference = np.asarray(read_volume(DATA / args.case / label_name).array)
    mapping = auto_mapping(volume.array, volume.modality)
    model = load_model("litemedsam", args.device, backend=args.backend)
    off = SegmentationSession(model, volume.array, mapping, zoom="off")
    auto = SegmentationSession(model, volume.array, mapping, zoom="auto", cache=off.cache)
    labels = [int(v) for v in args.labels.split(",")] if args.labels else \
        [int(v) for v in np.unique(reference) if v]
    times: dict[str, list[float]] = {"off": [], "new": [], "cached": [], "encoder": []}
    prompts = 0
    for label in labels:
        obj = reference == label
        for index in np.flatnonzero(obj.any(axis=(1, 2))):
            ref = SliceRef(0, int(index))
            box = ev.box_from_mask(obj[index])
            off.embedding(ref)  # the slice is embedded before timing
            t0 = time.perf_counter()
            off.predict_prompts(ref, [box])
            times["off"].append(time.perf_counter() - t0)
            crop = auto.crop_for(ref, box)
            if crop is None:
                continue
            new = auto.crop_key(ref, crop) not in auto.cache
            t0 = time.perf_counter()
            auto.predict_prompts(ref, [box])
            elapsed = time.perf_counter() - t0
            times["new" if new else "cached"].append(elapsed)
            t0 = time.perf_counter()
            auto.predict_prompts(ref, [box])
            times["cached"].append(time.perf_counter() - t0)
            prompts += 1
    t0 = time.perf_counter()
    for _ in range(5):
        model.embed(off.slice_image(SliceRef(0, 0)))
    times["encoder"] = [(time.perf_counter() - t0) / 5]
    load = os.getloadavg()
    result = {"case": args.case, "prompts_with_roi": prompts,
              "roi_encoder_calls": auto.roi_encoder_calls,
              "median_ms": {k: _ms(v) for k, v in times.items()},
              "load_average": load, "cpus": os.cpu_count()}
    print(f"{args.case}: {prompts} box prompts with a ROI, {auto.roi_encoder_calls} ROIs "
          f"embedded; median per prompt: whole slice {result['median_ms']['off']:.1f} ms, "
          f"auto with a new ROI {result['median_ms']['new']:.1f} ms, auto with the ROI cached "
          f"{result['median_ms']['cached']:.1f} ms; one encoder run "
          f"{result['median_ms']['encoder']:.1f} ms (load average {load[0]:.1f}, "
          f"{os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""3D propagation, 3D boxes and bulk correction, measured on real scans (3D Dice).

Propagation: one tight box on the reference's largest axial slice of each object gives the
anchor mask (``session.predict_prompts``, the widget's call: with ``--zoom auto``, the default
as in the widget, a small box is also segmented in a zoomed region of interest and gets the
hysteresis threshold; with ``--zoom off`` it is the plain box prediction); the volume is then
filled by

* ``naive``: box = bounding box of the previous slice's mask, until the mask vanishes;
* ``ours``: :func:`napari_medsam.segmentation.propagation.propagate` (default rules);
* ``old``: the propagation before issue 18 (git ce422b7, kept verbatim in
  ``research/propagation_stop_rules/propagation_head.py``: one miss ends a run; area, overlap
  and grey-value rules; no parts) for comparison;
* ``3 anchors``: ours from three box-predicted anchors (largest slice and the slices at 1/4
  and 3/4 of the object's extent), to show gap filling;
* ``box_range``: :func:`~napari_medsam.segmentation.propagation.box_range` with the tight box
  on the largest slice and the object's slice range (``fixed_box``: that same 2D box on every
  slice of the range, for comparison); ``bbox3d``: ``box_range(..., clip=True)`` with the
  object's true 3D bounding box (drawn on the largest slice);
* ``tight/slice``: a tight box from the reference on every slice, segmented like the anchor (an
  upper reference, not a method: it needs the answer).

Bulk: ``refine_label`` on the reference dilated by 2 pixels in-plane, ``fill_gaps`` on the
reference with every third slice erased; recovered = (refined - damaged) / (1 - damaged).

Embeddings of every axial slice are cached in ``/tmp/click_emb_<case>_<image>.npz`` (shared
with ``click_eval.py``) or ``/tmp/prop_emb_<case>_<image>.npz``.

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/mcache3 python benchmarks/propagation_eval.py [--json out.json]
    python benchmarks/propagation_eval.py --zoom off --skip-bulk        # the zoom-off tables
    python benchmarks/propagation_eval.py --skip-bulk --methods ours,tight --only hippocampus
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "research" / "propagation_stop_rules"))

import propagation_head  # noqa: E402
from helpers import case_dir, dice, label_names, largest_slice, tight_box  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.engine.protocol import Embedding  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession, SliceRef  # noqa: E402
from napari_medsam.segmentation.bulk import fill_gaps, refine_label  # noqa: E402
from napari_medsam.segmentation.propagation import (  # noqa: E402
    box_range,
    grow_box,
    mask_box,
    propagate_volume,
)
from napari_medsam.segmentation.propagation_steps import (  # noqa: E402
    DEFAULT_PARAMS,
    PropagationParams,
)

#: (case, image, label, modality, labels)
CASES = [
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz", "CT", [5, 1, 2, 3, 6]),
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", "MRI", [1]),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz",
     "MRI", [1, 2]),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", "hippocampus_004_label.nii.gz",
     "MRI", [1, 2]),
]
BULK_CASE = CASES[0]
BULK_LABELS = [5, 1, 2, 3]
METHODS = ("naive", "ours", "old", "anchors3", "box_range", "fixed_box", "bbox3d", "tight")


def cached_session(model, case: str, image: str, label: str, zoom: str = "auto"):
    """(session with every axial slice embedded, reference label array)."""
    folder = case_dir(case)
    volume = read_volume(folder / image)
    reference = np.asarray(read_volume(folder / label).array).astype(np.int64)
    mapping = auto_mapping(volume.array, volume.modality)
    session = SegmentationSession(model, volume.array, mapping, cache_bytes=4 * 1024**3,
                                  zoom=zoom)
    stem = image.split(".")[0]
    paths = [Path(f"/tmp/click_emb_{case}_{stem}.npz"), Path(f"/tmp/prop_emb_{case}_{stem}.npz")]
    found = next((p for p in paths if p.exists()), None)
    if found is None:
        embs = [session.embedding(SliceRef(0, z)) for z in range(volume.array.shape[0])]
        np.savez(paths[1], features=np.stack([e.features for e in embs]).astype(np.float16),
                 resized=np.array(embs[0].resized_size),
                 original=np.array(embs[0].original_size))
        return session, reference
    data = np.load(found)
    resized = tuple(int(v) for v in data["resized"])
    original = tuple(int(v) for v in data["original"])
    for z, features in enumerate(data["features"]):
        session.cache.put(session.cache_key(SliceRef(0, z)),
                          Embedding(features=features, original_size=original,
                                    resized_size=resized, input_size=256,
                                    model=model.spec.encoder_model))
    return session, reference


def box_of(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box of a reference mask, widened to an area (one-pixel-wide objects)."""
    return grow_box(tight_box(mask2d), 0.0, mask2d.shape)


def naive(session, z: int, anchor: np.ndarray) -> np.ndarray:
    """Box from the previous mask (no margin) until the mask vanishes."""
    out = np.zeros(session.volume.shape, bool)
    out[z] = anchor
    for direction in (1, -1):
        prev, index = anchor, z + direction
        while 0 <= index < out.shape[0] and prev.any():
            prev = session.predict(SliceRef(0, index),
                                   box=grow_box(mask_box(prev), 0.0, prev.shape)).mask
            out[index] = prev
            index += direction
    return out


def evaluate_object(session, obj: np.ndarray, methods=METHODS,
                    params: PropagationParams = DEFAULT_PARAMS) -> dict[str, float]:
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    first, last = int(zs[0]), int(zs[-1])
    z = largest_slice(obj, True)

    def box_mask(index, box):  # the widget's call for a drawn box
        return np.asarray(session.predict_prompts(SliceRef(0, index), [box]), dtype=bool)

    def anchor_at(index):
        return box_mask(index, box_of(obj[index]))

    anchor = anchor_at(z)
    row = {m: float("nan") for m in METHODS}
    if "naive" in methods:
        row["naive"] = dice(naive(session, z, anchor), obj)
    if "ours" in methods:
        t0 = time.perf_counter()
        row["ours"] = dice(propagate_volume(session, 0, {z: anchor}, params=params), obj)
        row["seconds"] = time.perf_counter() - t0
    if "old" in methods:
        row["old"] = dice(propagation_head.propagate_volume(session, 0, {z: anchor}), obj)
    if "anchors3" in methods:
        quarter = (last - first) // 4
        picks = sorted({first + quarter, z, last - quarter})
        row["anchors3"] = dice(propagate_volume(session, 0, {i: anchor_at(i) for i in picks},
                                                params=params), obj)
    box = box_of(obj[z])  # a box drawn on the largest slice, with the object's slice range
    if "box_range" in methods:
        vol = np.zeros_like(obj)
        for result in box_range(session, 0, z, box, first, last):
            vol[result.index] = result.mask
        row["box_range"] = dice(vol, obj)
    if "fixed_box" in methods:
        fixed = np.zeros_like(obj)
        for index in range(first, last + 1):
            fixed[index] = box_mask(index, box)
        row["fixed_box"] = dice(fixed, obj)
    if "bbox3d" in methods:
        ys, xs = np.nonzero(obj.any(axis=0))  # the object's true 3D bounding box
        bbox = grow_box((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), 0.0,
                        obj.shape[1:])
        vol = np.zeros_like(obj)
        for result in box_range(session, 0, z, bbox, first, last, clip=True):
            vol[result.index] = result.mask
        row["bbox3d"] = dice(vol, obj)
    if "tight" in methods:
        tight = np.zeros_like(obj)
        for index in range(first, last + 1):
            tight[index] = anchor_at(index)
        row["tight"] = dice(tight, obj)
    row["slices"] = int(len(zs))
    return row


def dilate_in_plane(obj: np.ndarray, radius: float) -> np.ndarray:
    out = np.zeros_like(obj)
    for z in np.flatnonzero(obj.any(axis=(1, 2))):
        out[z] = ndimage.distance_transform_edt(~obj[z]) <= radius
    return out


def erase_every_third(obj: np.ndarray) -> np.ndarray:
    out = obj.copy()
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    for z in range(int(zs[0]) + 1, int(zs[-1]), 3):
        out[z] = False
    return out


def evaluate_bulk(model, zoom: str = "auto") -> list[dict]:
    case, image, label, _, _ = BULK_CASE
    session, ref = cached_session(model, case, image, label, zoom)
    names = label_names(case)
    rows = []
    for lab in BULK_LABELS:
        obj = ref == lab
        for damage, fn, method in (("dilated 2 px", dilate_in_plane, refine_label),
                                   ("every 3rd slice erased", erase_every_third, fill_gaps)):
            damaged = fn(obj, 2) if fn is dilate_in_plane else fn(obj)
            labels = np.where(damaged, lab, np.where(obj, 0, ref))  # other labels untouched
            t0 = time.perf_counter()
            result = method(session, labels, lab)
            seconds = time.perf_counter() - t0
            d0, d1 = dice(damaged, obj), dice(result.mask, obj)
            row = dict(label=lab, name=names.get(lab, str(lab)), damage=damage,
                       method=method.__name__, damaged=d0, refined=d1,
                       recovered=(d1 - d0) / (1 - d0), seconds=seconds)
            rows.append(row)
            print(f"{row['name'][:14]:14s} {damage:24s} {method.__name__:12s} {d0:.3f} -> "
                  f"{d1:.3f}  recovered {row['recovered']:.2f}  ({seconds:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows and means here")
    parser.add_argument("--only", help="only cases whose name contains this")
    parser.add_argument("--skip-bulk", action="store_true", help="propagation only")
    parser.add_argument("--skip-propagation", action="store_true", help="bulk only")
    parser.add_argument("--zoom", choices=["auto", "off"], default="auto",
                        help="the session's zoom (default auto, as in the widget)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods to run (default: all)")
    parser.add_argument("--model", default="litemedsam",
                        help="registry model, e.g. one adapted with napari-medsam adapt "
                             "(default litemedsam)")
    parser.add_argument("--retries", type=int, default=DEFAULT_PARAMS.retries,
                        help="slices in a row that ours and anchors3 may keep from the tight "
                             f"retry (PropagationParams.retries; default "
                             f"{DEFAULT_PARAMS.retries}, 0: no retry)")
    args = parser.parse_args(argv)
    methods = tuple(m for m in METHODS if m in args.methods.split(","))
    params = replace(DEFAULT_PARAMS, retries=args.retries)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    model = load_model(args.model, device="cpu")
    rows: list[dict] = []
    if not args.skip_propagation:
        print(f"zoom {args.zoom}")
        print(f"{'object':34s} {'sl':>3s} " + " ".join(f"{m:>11s}" for m in methods))
        for case, image, label, modality, labs in CASES:
            if args.only and args.only not in case + image:
                continue
            session, ref = cached_session(model, case, image, label, args.zoom)
            names = label_names(case)
            tag = image.split("_image")[0] if "hippocampus" in image else case
            for lab in labs:
                row = evaluate_object(session, ref == lab, methods, params)
                row.update(case=tag, label=lab, name=names.get(lab, str(lab)),
                           modality=modality, zoom=args.zoom)
                rows.append(row)
                print(f"{(tag[:20] + ' ' + row['name'])[:34]:34s} {row['slices']:3d} "
                      + " ".join(f"{row[m]:11.3f}" for m in methods), flush=True)
    means = {}
    for modality in ("CT", "MRI"):
        sel = [r for r in rows if r["modality"] == modality]
        if sel:
            means[modality] = {m: float(np.mean([r[m] for r in sel])) for m in methods}
            print(f"{'mean ' + modality + f' ({len(sel)} objects)':38s} "
                  + " ".join(f"{means[modality][m]:11.3f}" for m in methods))
    bulk = [] if args.skip_bulk else evaluate_bulk(model, args.zoom)
    if bulk:
        for method in ("refine_label", "fill_gaps"):
            sel = [r["recovered"] for r in bulk if r["method"] == method]
            means[method] = {"recovered": float(np.mean(sel))}
            print(f"mean recovered by {method}: {np.mean(sel):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "zoom": args.zoom,
                                         "retries": args.retries, "rows": rows,
                                         "bulk": bulk, "means": means}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

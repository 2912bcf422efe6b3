"""Propagation stop rules on every structure of the shared scans (issue 18).

For every label of every shared scan that spans at least ``--min-slices`` axial slices: one
tight box on the reference's largest axial slice (``session.predict_prompts``, the widget's
call, zoom auto as the product default) gives the anchor, then the volume is filled by

* ``naive``: box = bounding box of the previous slice's mask (no margin), until the mask
  vanishes (never any other stop);
* ``old``: the propagation of git HEAD ce422b7 (``propagation_head.py``, old stop rules);
* ``new``: :func:`napari_medsam.segmentation.propagation.propagate_volume` (defaults).

Each structure gets a shape group from its reference mask (:func:`shape_features`):
``multi-part`` (>= 30 % of its slices hold several pieces), ``thin`` (mean in-plane
thickness < 4 px), ``tubular`` (axial length >= 4 x its mean equivalent diameter), else
``compact``; the first that applies wins.

Embeddings: the product's volume embedding into the disk cache (``$NAPARI_MEDSAM_CACHE``), so
each scan is embedded once. Results go to ``--json`` after every structure; a rerun skips the
methods a structure already has (``--redo new`` recomputes one method).

Usage::

    mkdir -p /tmp/prop-cache && ln -sfn /tmp/mcache/models /tmp/prop-cache/models
    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=1 python \\
        research/propagation_stop_rules/study.py --json research/propagation_stop_rules/results.json
    python research/propagation_stop_rules/study.py --json ... --table   # the README table
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import propagation_head  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.engine.volume_embedding import embed_volume  # noqa: E402
from napari_medsam.evaluation import align_reference, dice  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession, SliceRef  # noqa: E402
from napari_medsam.segmentation import propagation as new_propagation  # noqa: E402

logger = logging.getLogger("study")
DATA = ROOT.parent / "shared" / "data"
#: (tag, case folder, image, label map)
CASES = [
    ("ct_abdomen_pelvis", "totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz"),
    ("ct_abdomen_sm", "totalseg_ct_abdomen_sm", "image.nii.gz", "label.nii.gz"),
    ("mr_abdomen_sm", "totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz"),
    ("ct_dicom", "totalseg_ct_dicom", "dicom", "label.nii.gz"),
    ("brain1_mr", "pyradiomics_brain1_mr", "image.nrrd", "label.nrrd"),
    ("hippocampus_003", "msd_hippocampus_mr", "hippocampus_003_image.nii.gz",
     "hippocampus_003_label.nii.gz"),
    ("hippocampus_004", "msd_hippocampus_mr", "hippocampus_004_image.nii.gz",
     "hippocampus_004_label.nii.gz"),
]
METHODS = ("naive", "old", "new")
GROUPS = ("compact", "tubular", "multi-part", "thin")


def shape_features(obj: np.ndarray, spacing_zyx: tuple[float, float, float]) -> dict:
    """Shape of a reference mask across axial slices, and its group (see the module doc)."""
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    pieces, thick, areas = [], [], []
    for z in zs:
        labels, count = ndimage.label(obj[z])
        sizes = np.bincount(labels.ravel())[1:]
        # a piece counts when it holds >= 10 % of the slice's largest piece and >= 4 px
        pieces.append(int(((sizes >= 0.1 * sizes.max()) & (sizes >= 4)).sum()))
        thick.append(2.0 * float(ndimage.distance_transform_edt(obj[z]).max()))
        areas.append(float(obj[z].sum()))
    dz, dy, dx = spacing_zyx
    diameter = 2.0 * np.sqrt(np.mean(areas) * dy * dx / np.pi)
    length = (int(zs[-1]) - int(zs[0]) + 1) * dz
    feats = dict(slices=int(zs.size), multi_fraction=float(np.mean(np.array(pieces) >= 2)),
                 max_pieces=int(max(pieces)), thickness_px=float(np.mean(thick)),
                 elongation=float(length / max(diameter, 1e-6)),
                 mean_area_px=float(np.mean(areas)))
    if feats["multi_fraction"] >= 0.3:
        group = "multi-part"
    elif feats["thickness_px"] < 4.0:
        group = "thin"
    elif feats["elongation"] >= 4.0:
        group = "tubular"
    else:
        group = "compact"
    feats["group"] = group
    return feats


def naive(session, z: int, anchor: np.ndarray) -> np.ndarray:
    """Box of the previous slice's mask (no margin) until the mask vanishes."""
    out = np.zeros(session.volume.shape, bool)
    out[z] = anchor
    grow = new_propagation.grow_box
    for direction in (1, -1):
        prev, index = anchor, z + direction
        while 0 <= index < out.shape[0] and prev.any():
            box = grow(new_propagation.mask_box(prev), 0.0, prev.shape)
            prev = session.predict(SliceRef(0, index), box=box).mask
            out[index] = prev
            index += direction
    return out


def run_new(session, z: int, anchor: np.ndarray) -> tuple[np.ndarray, list]:
    """The new propagation and where each direction stopped (slice, reason)."""
    results = list(new_propagation.propagate(session, 0, {z: anchor}))
    out = np.zeros(session.volume.shape, bool)
    out[z] = anchor
    for r in results:
        out[r.index] = r.mask
    stops = [[int(r.index), str(r.stopped)] for r in results if r.stopped]
    return out, stops


def load_scan(case: str, image: str, label: str):
    folder = DATA / case
    volume = read_volume(folder / image)
    reference = read_volume(folder / label)
    labels, _ = align_reference(volume, reference)
    names = {int(k): v for k, v in
             json.loads((folder / "labels.json").read_text()).get("labels", {}).items()}
    return volume, np.asarray(labels).astype(np.int64), names


def scan_session(model, volume) -> SegmentationSession:
    """A session whose axial slices are all in the disk cache (embedded once per scan)."""
    mapping = auto_mapping(volume.array, volume.modality)
    t0 = time.perf_counter()
    summary = embed_volume(model, volume.array, mapping, 0, parallel=False)
    logger.info("embedding: %d slices encoded in %.0f s", summary.encoded,
                time.perf_counter() - t0)
    return SegmentationSession(model, volume.array, mapping, cache_bytes=3 * 1024**3,
                               zoom="auto", disk_cache=True)


def anchor_of(session, obj: np.ndarray) -> tuple[int, np.ndarray]:
    """The anchor slice (the reference's largest) and the mask of one tight box there."""
    z = int(np.argmax(obj.sum(axis=(1, 2))))
    ys, xs = np.nonzero(obj[z])
    box = new_propagation.grow_box((int(xs.min()), int(ys.min()), int(xs.max()),
                                    int(ys.max())), 0.0, obj.shape[1:])
    return z, np.asarray(session.predict_prompts(SliceRef(0, z), [box]), dtype=bool)


def each_anchor(model, keys: list[str], done=lambda key: False, session_of=None):
    """(key, session, reference mask, anchor slice, anchor mask) for each structure key
    ("scan:label") not ``done``, one session per scan (``scan_session`` by default)."""
    session_of = session_of or scan_session
    for tag, case, image, label in CASES:
        todo = [k for k in keys if k.split(":")[0] == tag and not done(k)]
        if not todo:
            continue
        volume, labels, _ = load_scan(case, image, label)
        session = session_of(model, volume)
        for key in todo:
            obj = labels == int(key.split(":")[1])
            z, anchor = anchor_of(session, obj)
            yield key, session, obj, z, anchor


def evaluate(session, obj: np.ndarray, row: dict, methods: list[str]) -> None:
    z, anchor = anchor_of(session, obj)
    row["anchor_dice"] = dice(anchor, obj[z])
    for method in methods:
        t0 = time.perf_counter()
        stops = None
        if not anchor.any():
            vol = np.zeros_like(obj)
        elif method == "naive":
            vol = naive(session, z, anchor)
        elif method == "old":
            vol = propagation_head.propagate_volume(session, 0, {z: anchor})
        else:
            vol, stops = run_new(session, z, anchor)
        row[method] = dice(vol, obj)
        row[f"{method}_seconds"] = round(time.perf_counter() - t0, 2)
        if stops is not None:
            row["new_stops"] = stops


def run(args) -> None:
    out = json.loads(args.json.read_text()) if args.json.exists() else {}
    model = load_model("litemedsam", device="cpu", threads=1)
    redo = set(args.redo.split(",")) if args.redo else set()
    methods = [m for m in METHODS if m in args.methods.split(",")]
    for tag, case, image, label in CASES:
        if args.only and args.only not in tag:
            continue
        volume, labels, names = load_scan(case, image, label)
        session = None
        spacing = tuple(float(s) for s in volume.spacing[::-1])  # (z, y, x)
        values = [int(v) for v in np.unique(labels) if v]
        for lab in values:
            obj = labels == lab
            if int(obj.any(axis=(1, 2)).sum()) < args.min_slices:
                continue
            key = f"{tag}:{lab}"
            row = out.get(key) or dict(case=tag, label=lab, name=names.get(lab, str(lab)),
                                       **shape_features(obj, spacing))
            todo = [m for m in methods if m in redo or m not in row]
            if not todo:
                continue
            if session is None:
                session = scan_session(model, volume)
            evaluate(session, obj, row, todo)
            out[key] = row
            args.json.write_text(json.dumps(out, indent=1))
            logger.info("%s %-28s %-10s sl %3d  %s", key, row["name"][:28], row["group"],
                        row["slices"], "  ".join(f"{m} {row[m]:.3f}" for m in METHODS
                                                 if m in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--redo", default="", help="methods to recompute (comma-separated)")
    parser.add_argument("--only", help="only scans whose tag contains this")
    parser.add_argument("--min-slices", type=int, default=10)
    parser.add_argument("--table", action="store_true", help="print the summary table only")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="with --table: more result files (e.g. one per method)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    if args.table:
        from table import merge, print_table

        files = [args.json, *args.merge]
        print_table(merge(*(json.loads(f.read_text()) for f in files if f.exists())))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does an orthogonal plane see where an object ends along the propagation axis?

For each structure the study's anchor (one tight box on the reference's largest axial
slice) is taken to the coronal and the sagittal plane through the anchor mask's centre.
There a box that spans the anchor's cross-section and 3 slices is grown: the model's mask
(the piece on the anchor's line), then that mask's box plus ``--margin`` of its extent (+1
px), until the box stops changing. The mask's first and last slice are that plane's
estimate of the object's extent, compared with the reference's (and, in the README, with
where the product's run went). Rows go to ``--out`` (JSON).

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=2 python \\
        research/propagation_stop_rules/orthogonal.py ct_abdomen_pelvis:27,ct_abdomen_pelvis:1 \\
        --margin 0.1 --out research/propagation_stop_rules/results_orthogonal_m10.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.segmentation.propagation_steps import grow_box, mask_box  # noqa: E402
from napari_medsam.segmentation.session import SliceRef  # noqa: E402


def plane_extent(session, axis: int, index: int, z: int, lo: int, hi: int, margin: float,
                 iters: int = 30) -> list[int] | None:
    """First and last axial slice of the mask grown on plane (``axis``, ``index``) from the
    anchor's line (row ``z``, columns ``lo..hi`` of that plane); None when the model's mask
    misses the line."""
    shape = np.take(session.volume, index, axis=axis).shape  # (z, in-plane)
    box = (lo, max(z - 1, 0), hi, min(z + 1, shape[0] - 1))
    seed = np.zeros(shape, bool)
    seed[z, lo:hi + 1] = True
    extent = None
    for _ in range(iters):
        mask = session.predict(SliceRef(axis, index), box=box).mask
        labels, _ = ndimage.label(mask)
        keep = np.unique(labels[seed & mask])
        keep = keep[keep > 0]
        if keep.size == 0:
            return None
        mask = np.isin(labels, keep)
        rows = np.flatnonzero(mask.any(axis=1))
        extent = [int(rows[0]), int(rows[-1])]
        grown = grow_box(mask_box(mask), margin, shape)
        if grown == box:
            break
        box = grown
    return extent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", help="comma-separated structure keys (scan:label)")
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out = {}
    model = load_model("litemedsam", device="cpu", threads=1)
    for key, session, obj, z, anchor in study.each_anchor(model, args.keys.split(",")):
        zs = np.flatnonzero(obj.any(axis=(1, 2)))
        ys, xs = np.nonzero(anchor)
        yc, xc = int(round(ys.mean())), int(round(xs.mean()))
        row = {"reference": [int(zs[0]), int(zs[-1])], "anchor": z}
        for name, axis, index, line, other in (("coronal", 1, yc, anchor[yc, :], xs),
                                               ("sagittal", 2, xc, anchor[:, xc], ys)):
            idx = np.flatnonzero(line)
            lo, hi = (idx.min(), idx.max()) if idx.size else (other.min(), other.max())
            row[name] = plane_extent(session, axis, index, z, int(lo), int(hi), args.margin)
        out[key] = row
        print(key, row, flush=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

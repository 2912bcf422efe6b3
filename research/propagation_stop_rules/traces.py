"""Per-slice traces of the product's propagation step with no stop rule (for choosing rules).

For every structure of the study (``study.py``), from the same anchor, each direction is
followed with :func:`~napari_medsam.segmentation.propagation_steps.segment_from` from the
previous slice's mask until the mask is empty, the volume ends or 5 slices past the
reference's end. Each slice records what stop rules can look at (area, the model's IoU,
grey values against the anchor's, overlap and centre shift against the previous mask) and
what the reference says (its area, the intersection), so that a rule's 3D Dice can be
computed offline (``simulate.py``). Resumable like the study (``--json``).

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=1 python \\
        research/propagation_stop_rules/traces.py --json /tmp/traces.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.segmentation import SliceRef  # noqa: E402
from napari_medsam.segmentation.propagation_steps import segment_from  # noqa: E402

logger = logging.getLogger("traces")


def _stats(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(mean inside, std inside, mean of a 3-pixel ring around) of a mask."""
    inside = image[mask]
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    outside = image[ring] if ring.any() else inside
    return float(inside.mean()), float(inside.std()), float(outside.mean())


def _centre(mask: np.ndarray) -> np.ndarray:
    return np.array(np.nonzero(mask)).mean(axis=1)


def trace(session, obj: np.ndarray, anchor: np.ndarray, z: int, hook=None) -> dict:
    """One structure's trace; ``hook(row, index, mask, previous_index, previous_mask)``,
    when given, may add to each slice's row (``identity.py``)."""
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    img0 = session.slice_image(SliceRef(0, z)).astype(np.float64)
    mean0, std0, ring0 = _stats(img0, anchor)
    out = {"anchor": dict(z=z, area=int(anchor.sum()), inter=int((anchor & obj[z]).sum()),
                          mean=mean0, std=std0, ring=ring0),
           "ref_total": int(obj.sum()), "ref_first": int(zs[0]), "ref_last": int(zs[-1])}
    for direction in (1, -1):
        end = zs[-1] + 5 if direction > 0 else zs[0] - 5
        prev, index, rows = anchor, z + direction, []
        while 0 <= index < obj.shape[0] and (index - end) * direction <= 0 and prev.any():
            mask, _, iou = segment_from(session, SliceRef(0, index), prev)
            img = session.slice_image(SliceRef(0, index)).astype(np.float64)
            row = dict(z=int(index), area=int(mask.sum()), ref=int(obj[index].sum()),
                       inter=int((mask & obj[index]).sum()), iou=float(iou))
            if mask.any():
                mean, std, ring = _stats(img, mask)
                near = ndimage.binary_dilation(prev)
                radii = np.sqrt(mask.sum() / np.pi) + np.sqrt(prev.sum() / np.pi)
                row.update(mean=mean, std=std, ring=ring,
                           overlap=float((mask & near).sum() / mask.sum()),
                           shift=float(np.linalg.norm(_centre(mask) - _centre(prev)) / radii),
                           prev_area=int(prev.sum()))
            if hook is not None:
                hook(row, int(index), mask, int(index - direction), prev)
            rows.append(row)
            prev, index = mask, index + direction
        out["up" if direction > 0 else "down"] = rows
    return out


def trace_scans(path: Path, only: str | None = None, min_slices: int = 10,
                hook: Callable | None = None) -> None:
    """Trace every structure of >= ``min_slices`` slices of the study's scans (those whose
    tag contains ``only``) into ``path``, skipping those already there; ``hook(session, z,
    anchor)``, when given, makes the per-slice hook of :func:`trace` for one structure."""
    out = json.loads(path.read_text()) if path.exists() else {}
    model = load_model("litemedsam", device="cpu", threads=1)
    for tag, case, image, label in study.CASES:
        if only and only not in tag:
            continue
        volume, labels, names = study.load_scan(case, image, label)
        spacing = tuple(float(s) for s in volume.spacing[::-1])
        session = None
        for lab in (int(v) for v in np.unique(labels) if v):
            obj = labels == lab
            key = f"{tag}:{lab}"
            if key in out or int(obj.any(axis=(1, 2)).sum()) < min_slices:
                continue
            session = session or study.scan_session(model, volume)
            z, anchor = study.anchor_of(session, obj)
            row = dict(case=tag, label=lab, name=names.get(lab, str(lab)),
                       **study.shape_features(obj, spacing))
            if anchor.any():
                row.update(trace(session, obj, anchor, z,
                                 hook=None if hook is None else hook(session, z, anchor)))
            out[key] = row
            path.write_text(json.dumps(out))
            logger.info("%s %s: %d + %d slices", key, row["name"], len(row.get("up", [])),
                        len(row.get("down", [])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--only")
    parser.add_argument("--min-slices", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    trace_scans(args.json, args.only, args.min_slices)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

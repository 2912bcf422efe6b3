"""What propagating an organ costs beside embedding its slices.

    python benchmarks/propagation_cost.py [--case totalseg_ct_abdomen_pelvis]
        [--labels 5,1] [--backend auto] [--json F]

In one run, on the same model and volume:

1. **Embedding reference**: a fresh session embeds every slice of the volume once (the
   encoder with its preprocessing; no prompts); the per-slice times are kept.
2. **First object, cold cache**: a new session, a tight box on the reference's largest slice
   of the first label, then :func:`~napari_medsam.segmentation.propagation.propagate` through
   the volume. Wall time, encoder calls and slices visited are counted; the ratio compares the
   wall time with what embedding *the same slices* cost in step 1 (and with all slices).
3. **Second object, same session**: the next label the same way; its encoder calls show how
   many cached embeddings it reused.
4. **Second object after "Embed volume"**: a session whose cache holds every slice; the
   propagation must need zero encoder calls and costs decoding and bookkeeping only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load_case(case: str):
    from napari_medsam.bench import require_data_dir
    from napari_medsam.io import auto_mapping, read_volume

    folder = require_data_dir() / case
    volume = read_volume(folder / "image.nii.gz")
    reference = np.asarray(read_volume(folder / "label.nii.gz").array)
    array = np.ascontiguousarray(volume.array)
    return array, reference, auto_mapping(array, volume.modality)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0


def run_object(session, reference: np.ndarray, label: int) -> dict:
    """Box on the largest slice of ``label``, then propagation; timed and counted."""
    from napari_medsam.segmentation.propagation import propagate
    from napari_medsam.segmentation.session import SliceRef

    target = reference == label
    z = int(target.sum(axis=(1, 2)).argmax())
    ys, xs = np.nonzero(target[z])
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    calls0 = session.encoder_calls
    begin = time.perf_counter()
    anchor = session.predict(SliceRef(0, z), box=box).mask
    result = np.zeros(reference.shape, dtype=bool)
    result[z] = anchor
    visited = [z]
    for step in propagate(session, 0, {z: anchor}):
        visited.append(int(step.index))
        result[step.index] = step.mask
    wall = time.perf_counter() - begin
    return {"label": label, "anchor_slice": z, "visited": sorted(visited),
            "slices": len(visited), "wall_s": wall,
            "encoder_calls": session.encoder_calls - calls0,
            "dice_3d": round(_dice(result, target), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="totalseg_ct_abdomen_pelvis")
    parser.add_argument("--labels", default="5,1", help="first and second object (label ids)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json")
    args = parser.parse_args()

    from napari_medsam.engine import load_model
    from napari_medsam.segmentation.session import SegmentationSession, SliceRef

    array, reference, mapping = _load_case(args.case)
    first, second = (int(v) for v in args.labels.split(","))
    model = load_model("litemedsam", "cpu", backend=args.backend)
    budget = 4 << 30
    print(f"{args.case} {array.shape}, {model.device_name}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)

    # warm-up: the first calls of a fresh engine are slower
    warm = SegmentationSession(model, array, mapping, cache_bytes=budget)
    for index in (0, 1):
        warm.embedding(SliceRef(0, index))

    # 1. embedding every slice once
    embed_ref = SegmentationSession(model, array, mapping, cache_bytes=budget)
    per_slice: dict[int, float] = {}
    begin = time.perf_counter()
    for index in range(array.shape[0]):
        t = time.perf_counter()
        embed_ref.embedding(SliceRef(0, index))
        per_slice[index] = time.perf_counter() - t
    embed_all_s = time.perf_counter() - begin
    print(f"embed all {array.shape[0]} slices: {embed_all_s:.1f} s "
          f"({1000 * embed_all_s / array.shape[0]:.0f} ms/slice)", flush=True)

    # 2. + 3. cold session: first object, then second object
    cold = SegmentationSession(model, array, mapping, cache_bytes=budget)
    rows = []
    for label, name in ((first, "first object, cold cache"),
                        (second, "second object, same session")):
        row = run_object(cold, reference, label)
        row["case"] = name
        rows.append(row)
    # 4. second object after the whole volume was embedded
    row = run_object(embed_ref, reference, second)
    row["case"] = "second object after Embed volume"
    rows.append(row)

    for row in rows:
        embed_same = sum(per_slice[i] for i in row["visited"])
        row["embed_same_slices_s"] = embed_same
        row["ratio_vs_embedding_same_slices"] = row["wall_s"] / embed_same
        row["ratio_vs_embedding_all_slices"] = row["wall_s"] / embed_all_s
        row["per_slice_ms"] = 1000 * row["wall_s"] / row["slices"]
        print(f"{row['case']:34s} label {row['label']:3d}: {row['slices']:3d} slices, "
              f"{row['encoder_calls']:3d} encoder calls, {row['wall_s']:6.1f} s "
              f"({row['per_slice_ms']:.0f} ms/slice); embedding those slices "
              f"{embed_same:.1f} s -> x{row['ratio_vs_embedding_same_slices']:.2f} "
              f"(x{row['ratio_vs_embedding_all_slices']:.2f} of all {array.shape[0]}); "
              f"3D Dice {row['dice_3d']}", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        out = {"case": args.case, "device": model.device_name, "cores": os.cpu_count(),
               "embed_all_s": embed_all_s, "slices": int(array.shape[0]), "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Does the anchor slice tell which box margin a structure's propagation needs? (issue 18)

With no margin the step is naive's: the mask shrinks a little on each slice, so a run stops
inside a vertebra (good) but also inside the spleen (bad). With the product's margin the
mask keeps its size and walks on into the next vertebra. This script asks whether the
anchor slice itself shows the difference: the step is applied again and again to the anchor
slice (prompted from its own mask, ``segment_from``, as propagation prompts the next
slice), for each margin, and the Dice of the result to the anchor mask is recorded after
each round. A margin under which the anchor is a fixed point of the step keeps the object
on neighbouring slices too; one under which it shrinks loses it.

Only the anchor slices are encoded (no volume embedding). Rows go to ``calibration.json``:
per structure, per margin, Dice and area ratio to the anchor after each of ``--rounds``.

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=1 python \\
        research/propagation_stop_rules/calibrate.py --subset all
    python research/propagation_stop_rules/calibrate.py --analyse
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402
import variants  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.evaluation import dice  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation.propagation_steps import (  # noqa: E402
    PropagationParams,
    segment_from,
)
from napari_medsam.segmentation.session import SegmentationSession, SliceRef  # noqa: E402

logger = logging.getLogger("calibrate")
MARGINS = (0.0, 0.03, 0.05, 0.1)
OUT = HERE / "calibration.json"


def fixed_point(session, z: int, anchor: np.ndarray, margin: float, rounds: int
                ) -> list[tuple[float, float]]:
    """(Dice to the anchor, area / anchor area) after each round of the step on slice z."""
    params = PropagationParams(margin=margin, refit=margin > 0)
    prev, out = anchor, []
    for _ in range(rounds):
        if not prev.any():
            out.append((0.0, 0.0))
            continue
        prev, _, _ = segment_from(session, SliceRef(0, z), prev, params)
        out.append((round(dice(prev, anchor), 4), round(float(prev.sum() / anchor.sum()), 4)))
    return out


def measure(keys: list[str], rounds: int) -> None:
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    model = load_model("litemedsam", device="cpu", threads=1)

    def session_of(model, volume):  # only the anchor slices are encoded
        mapping = auto_mapping(volume.array, volume.modality)
        return SegmentationSession(model, volume.array, mapping, zoom="auto", disk_cache=True)

    for key, session, _, z, anchor in study.each_anchor(model, keys, lambda k: k in out,
                                                        session_of):
        row = {"z": z, "area": int(anchor.sum())}
        if anchor.any():
            row.update({str(m): fixed_point(session, z, anchor, m, rounds)
                        for m in MARGINS})
        out[key] = row
        OUT.write_text(json.dumps(out, indent=1))
        logger.info("%s %s", key, {m: row.get(str(m), [None])[-1] for m in MARGINS})


def margin_results(base: dict) -> dict[float, dict[str, float]]:
    """3D Dice per structure of the runs with each margin (the stored variant rows; margin
    0.1 is the product: ``new``, with the regions-on-the-grid rows where they exist)."""
    def rows(*names: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in names:
            path = HERE / name
            if path.exists():
                out.update({k: r["dice"] for k, r in json.loads(path.read_text()).items()})
        return out

    product = {k: r["new"] for k, r in base.items() if "new" in r}
    product.update(rows("results_variant_product_grid.json"))
    return {0.0: rows("results_variant_m0.json"),
            0.03: rows("results_variant_m03.json", "results_variant_m03_b.json"),
            0.05: rows("results_variant_m05.json"), 0.1: product}


def choose(row: dict, threshold: float, rounds: int, margins: tuple[float, ...]) -> float:
    """The smallest margin under which the anchor stays a fixed point of the step (Dice to
    the anchor >= ``threshold`` after ``rounds`` rounds); the largest margin otherwise."""
    for m in margins:
        if row[str(m)][rounds - 1][0] >= threshold:
            return m
    return margins[-1]


def analyse(base: dict, thresholds: list[float], rounds: int,
            margins: tuple[float, ...]) -> None:
    calib = json.loads(OUT.read_text())
    results = margin_results(base)
    keys = [k for k, r in calib.items() if "0.0" in r
            and all(k in results[m] for m in margins) and "naive" in base.get(k, {})]
    print(f"{len(keys)} structures with every margin's run ({margins})")
    naive = np.array([base[k]["naive"] for k in keys])
    ct5 = [i for i, k in enumerate(keys) if k in variants.CT5]
    mri5 = [i for i, k in enumerate(keys) if k in variants.MRI5]

    def line(label: str, got: np.ndarray) -> None:
        print(f"| {label} | {got.mean():.3f} | {int((got < naive - 0.05).sum())} | "
              f"{got[ct5].mean() if ct5 else float('nan'):.3f} | "
              f"{got[mri5].mean() if mri5 else float('nan'):.3f} |")

    print("| rule | mean | < naive - 0.05 | CT5 | MRI5 |\n|---|---|---|---|---|")
    line("naive", naive)
    for m in margins:
        line(f"margin {m} always", np.array([results[m][k] for k in keys]))
    line("best margin (oracle)", np.array([max(results[m][k] for m in margins) for k in keys]))
    for t in thresholds:
        picks = [choose(calib[k], t, rounds, margins) for k in keys]
        line(f"fixed point >= {t} after {rounds}",
             np.array([results[m][k] for m, k in zip(picks, keys, strict=True)]))
        if t == thresholds[0]:
            for m, k in zip(picks, keys, strict=True):
                print(f"    {k:24s} {base[k].get('name', '')[:20]:20s} pick {m:<5} "
                      f"naive {base[k]['naive']:.3f} "
                      + " ".join(f"{mm}:{results[mm][k]:.3f}" for mm in margins)
                      + "  fp " + " ".join(f"{calib[k][str(mm)][rounds - 1][0]:.2f}"
                                          for mm in margins))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", default="losers,ct5,mri5")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--analyse", action="store_true", help="replay the choice of margin "
                        "on the stored runs of each margin")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.85, 0.95])
    parser.add_argument("--margins", type=float, nargs="+", default=list(MARGINS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    base = variants.baseline()
    if args.analyse:
        analyse(base, args.thresholds, args.rounds, tuple(args.margins))
    else:
        measure(variants.subset_keys(args.subset, base), args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

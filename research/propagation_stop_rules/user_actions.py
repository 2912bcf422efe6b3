"""The product's propagation with an annotator's corrections: *Cut here* and *Continue past*.

No stop rule separates a vertebra from the next one (the sections above); the product answers
with *Cut here* (the run walked on past the object's end) and *Continue past N* (a rule ended
it too early). How many such corrections does each structure need, and what is the 3D Dice
after them, against naive (which gets none)?

The simulated annotator looks at each direction of one propagation (the study's anchor, the
product's defaults through its public ``propagate`` / ``continue_propagation``):

* ``as_is``: no correction (the product's row; equals ``results_variant_retry2g*.json``);
* ``cut``: where the run holds the object on a slice past the reference's end in that
  direction, *Cut here* on the first such slice (one action);
* ``continue_cut``: first, where a stop rule ended the direction inside the reference's
  extent, *Continue past* it, at most ``--continues`` times; then the cut as above;
* ``annotator`` (in the table): the better of ``cut`` and ``continue_cut``. An annotator
  sees the continued slices in the preview and keeps them only where they follow the
  object (else *Cut here* next to the stop gives ``cut`` back).

Rows (``results_user_actions.json``): 3D Dice of each, and the actions used.

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=1 python \\
        research/propagation_stop_rules/user_actions.py --subset all
    python research/propagation_stop_rules/user_actions.py --subset all --table
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402
import variants  # noqa: E402
from table import GROUPS  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.segmentation.annotation_edits import CONTINUABLE  # noqa: E402
from napari_medsam.segmentation.mask_metrics import dice  # noqa: E402
from napari_medsam.segmentation.propagation import (  # noqa: E402
    continue_propagation,
    propagate,
)

logger = logging.getLogger("user_actions")
DEFAULT_OUT = HERE / "results_user_actions.json"


def run_into(volume: np.ndarray, run) -> list:
    """Write a propagation run's slices into ``volume``; its stops."""
    for result in run:
        if result.stopped is None:
            volume[result.index] = result.mask
    return list(run.stops)


def cut_beyond(volume: np.ndarray, first: int, last: int, z: int) -> int:
    """*Cut here* on the first slice past the reference's extent ``first..last`` in each
    direction from the anchor ``z`` where the run holds the object; the cuts made."""
    cuts = 0
    held = np.flatnonzero(volume.any(axis=(1, 2)))
    if held.size and held.max() > last >= z:
        volume[last + 1:] = False
        cuts += 1
    if held.size and held.min() < first <= z:
        volume[:first] = False
        cuts += 1
    return cuts


def corrections(session, obj: np.ndarray, z: int, anchor: np.ndarray,
                continues: int) -> dict:
    """The three annotators' 3D Dice and actions for one structure."""
    ref = np.flatnonzero(obj.any(axis=(1, 2)))
    first, last = int(ref.min()), int(ref.max())
    volume = np.zeros(obj.shape, bool)
    volume[z] = anchor
    stops = run_into(volume, propagate(session, 0, {z: anchor}))
    row = {"as_is": dice(volume, obj), "stops": [[s.index, str(s.reason)] for s in stops]}
    cut = volume.copy()
    row["cuts"] = cut_beyond(cut, first, last, z)
    row["cut"] = dice(cut, obj)
    done = 0
    todo = list(stops)
    while todo:
        stop = todo.pop()
        inside = first <= stop.index <= last
        if stop.reason in CONTINUABLE and inside and done < continues \
                and volume[stop.last].any():
            done += 1
            todo += run_into(volume, continue_propagation(session, 0, stop.last,
                                                          volume[stop.last], stop.direction))
    row["continues"] = done
    row["cuts_after_continue"] = cut_beyond(volume, first, last, z)
    row["continue_cut"] = dice(volume, obj)
    return row


def run(keys: list[str], base: dict, path: Path, continues: int) -> None:
    out = json.loads(path.read_text()) if path.exists() else {}
    model = load_model("litemedsam", device="cpu", threads=1)
    for key, session, obj, z, anchor in study.each_anchor(model, keys, lambda k: k in out):
        t0 = time.perf_counter()
        row = {k: base.get(key, {}).get(k) for k in ("case", "name", "group", "slices")}
        if anchor.any():
            row.update(corrections(session, obj, z, anchor, continues))
        else:  # as study.py: an empty anchor scores 0 (the product refuses it)
            row.update(as_is=0.0, cut=0.0, continue_cut=0.0, cuts=0, continues=0,
                       cuts_after_continue=0, stops=[])
        row["seconds"] = round(time.perf_counter() - t0, 2)
        out[key] = row
        path.write_text(json.dumps(out, indent=1))
        logger.info("%-24s %-22s as is %.3f cut %.3f (%d) continue+cut %.3f (%d+%d) "
                    "naive %.3f", key, row["name"], row["as_is"], row["cut"], row["cuts"],
                    row["continue_cut"], row["continues"], row["cuts_after_continue"],
                    base.get(key, {}).get("naive", np.nan))


def table(keys: list[str], base: dict, path: Path) -> None:
    rows = json.loads(path.read_text())
    keys = [k for k in keys if k in rows and "naive" in base.get(k, {})]
    study_keys = [k for k in keys if base[k]["slices"] >= 10]
    for r in rows.values():
        kept = r["continue_cut"] > r["cut"]
        r["annotator"] = max(r["cut"], r["continue_cut"])
        r["annotator_actions"] = (r["continues"] + r["cuts_after_continue"] if kept
                                  else r["cuts"])
    print("| group | n | naive | as is | below | + Cut here | below | actions | "
          "+ Continue, Cut | below | actions | annotator | below | actions |")
    print("|---" * 14 + "|")
    for group in (*GROUPS, "all"):
        sel = [k for k in study_keys if group in ("all", base[k]["group"])]
        if not sel:
            continue
        nv = np.array([base[k]["naive"] for k in sel])
        cells = [f"{nv.mean():.3f}"]
        for name, actions in (("as_is", ()), ("cut", ("cuts",)),
                              ("continue_cut", ("continues", "cuts_after_continue")),
                              ("annotator", ("annotator_actions",))):
            v = np.array([rows[k][name] for k in sel])
            cells += [f"{v.mean():.3f}", str(int((v < nv - 0.05).sum()))]
            if actions:
                n = sum(rows[k][a] for k in sel for a in actions)
                cells.append(f"{n / len(sel):.2f}")
        print(f"| {group} | {len(sel)} | " + " | ".join(cells) + " |")
    for name, sel in (("CT5", variants.CT5), ("MRI5", variants.MRI5)):
        done = [k for k in sel if k in rows]
        if done:
            print(f"{name} ({len(done)}): " + ", ".join(
                f"{c} {np.mean([rows[k][c] for k in done]):.3f}"
                for c in ("as_is", "cut", "continue_cut", "annotator")))
    left = [k for k in study_keys if rows[k]["annotator"] < base[k]["naive"] - 0.05]
    print(f"below naive - 0.05 for the annotator ({len(left)}):")
    for k in sorted(left, key=lambda k: rows[k]["annotator"] - base[k]["naive"]):
        r = rows[k]
        print(f"  {k:24s} {r['name'][:22]:22s} naive {base[k]['naive']:.3f} as is "
              f"{r['as_is']:.3f} cut {r['cut']:.3f} continue+cut {r['continue_cut']:.3f} "
              f"{r['stops']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", default="losers,ct5,mri5",
                        help="as variants.py: losers, ct5, mri5, all, or keys")
    parser.add_argument("--only", help="only structures whose key starts with this (a scan)")
    parser.add_argument("--continues", type=int, default=2,
                        help="at most this many Continue past per structure")
    parser.add_argument("--table", action="store_true", help="print the summary only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    base = variants.baseline()
    keys = variants.subset_keys(args.subset, base)
    if not args.table:
        run([k for k in keys if not args.only or k.startswith(args.only)], base, args.out,
            args.continues)
    table(keys, base, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stop rules replayed offline on the traces of ``traces.py`` (3D Dice per structure).

A rule marks slices as misses; a direction ends at the first of ``patience`` consecutive
misses (the replay keeps prompting from the previous slice's mask, which is what the product
does for patience 1 and a close approximation beyond). A trace cut 5 slices past the
reference's end is assumed to go on with its last area to the end of the volume.

Usage::

    python research/propagation_stop_rules/simulate.py /tmp/traces.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import numpy as np

DEPTH = {"ct_abdomen_pelvis": 112, "ct_abdomen_sm": 30, "mr_abdomen_sm": 20, "ct_dicom": 20,
         "brain1_mr": 25, "hippocampus_003": 35, "hippocampus_004": 36}

Rule = Callable[[dict, dict, int], bool]


def replay(item: dict, miss: Rule, patience: int = 1) -> float:
    """3D Dice of one structure under a rule."""
    if "anchor" not in item:
        return 0.0
    anchor = item["anchor"]
    inter, area = anchor["inter"], anchor["area"]
    for key, direction in (("up", 1), ("down", -1)):
        rows = item[key]
        largest, streak, stop = anchor["area"], 0, None
        for i, row in enumerate(rows):
            if miss(row, anchor, largest):
                streak += 1
                if streak >= patience:
                    stop = i - patience + 1
                    break
            else:
                streak = 0
                largest = max(largest, row["area"])
        kept = rows if stop is None else rows[:stop]
        inter += sum(r["inter"] for r in kept)
        area += sum(r["area"] for r in kept)
        if stop is None and rows and rows[-1]["area"] > 0:
            last = rows[-1]["z"]
            remaining = (DEPTH[item["case"]] - 1 - last) if direction > 0 else last
            area += max(remaining, 0) * rows[-1]["area"]
    return 2.0 * inter / (area + item["ref_total"])


def print_per_structure(items: dict, keys: list[str], naive, columns: dict) -> None:
    """A markdown table: one row per structure, naive and each column's 3D Dice."""
    names = list(columns)
    print("| structure | naive | " + " | ".join(names) + " |")
    for i, k in enumerate(keys):
        print(f"| {k} {items[k]['name']} | {naive[i]:.3f} | "
              + " | ".join(f"{columns[n][i]:.3f}" for n in names) + " |")


def naive_like(row, anchor, largest):
    return row["area"] == 0


def old_rules(row, anchor, largest):
    if row["area"] == 0 or row["area"] < 0.05 * largest:
        return True
    if row["area"] > 1.5 * max(row["prev_area"], 1):
        return True
    if abs(row["mean"] - anchor["mean"]) / max(anchor["std"], 5.0) > 2.0:
        return True
    return row["overlap"] < 0.3


def make_rule(vanish=0.05, jump=(0.1, 1.0), drift=None, drift_frac=None, contrast=None):
    """vanish/jump always; optional drift: |mean - anchor mean| / max(anchor std, 5) > drift
    (only while area < drift_frac x largest when given); contrast: the same shift over the
    anchor's inside-ring contrast."""

    def rule(row, anchor, largest):
        if row["area"] == 0 or row["area"] < vanish * largest:
            return True
        if row["overlap"] < jump[0] and row["shift"] > jump[1]:
            return True
        small = drift_frac is None or row["area"] < drift_frac * largest
        if drift is not None and small:
            if abs(row["mean"] - anchor["mean"]) / max(anchor["std"], 5.0) > drift:
                return True
        if contrast is not None and small:
            c = max(abs(anchor["mean"] - anchor["ring"]), 5.0)
            if abs(row["mean"] - anchor["mean"]) / c > contrast:
                return True
        return False

    return rule


def summary(items: dict, name: str, rule: Rule, patience: int, base: dict) -> dict:
    scores = {k: replay(v, rule, patience) for k, v in items.items()}
    worst = min(scores[k] - base[k] for k in scores)
    below = sum(scores[k] < base[k] - 0.05 for k in scores)
    groups = {}
    for k, v in items.items():
        groups.setdefault(v["group"], []).append(scores[k])
    print(f"{name:42s} k={patience} mean {np.mean(list(scores.values())):.3f}  "
          f"worst-vs-naive {worst:+.3f}  n<naive-0.05 {below:2d}  "
          + " ".join(f"{g} {np.mean(s):.3f}" for g, s in sorted(groups.items())))
    return scores


def main(path: str) -> None:
    items = json.loads(open(path).read())
    base = {k: replay(v, naive_like) for k, v in items.items()}
    print(f"{len(items)} structures")
    summary(items, "naive (empty only)", naive_like, 1, base)
    summary(items, "old rules", old_rules, 1, base)
    for patience in (1, 2, 3):
        for vanish in (0.02, 0.05, 0.1):
            summary(items, f"vanish {vanish} + jump", make_rule(vanish), patience, base)
        for drift in (2.0, 3.0, 4.0):
            for frac in (None, 0.5):
                summary(items, f"v0.05 jump drift {drift} frac {frac}",
                        make_rule(0.05, drift=drift, drift_frac=frac), patience, base)
        for c in (0.5, 1.0, 1.5):
            summary(items, f"v0.05 jump contrast {c}", make_rule(0.05, contrast=c), patience,
                    base)


if __name__ == "__main__":
    main(sys.argv[1])

"""How far could stop rules go with the product's step? An oracle replay on the CT traces.

On ``traces_ct_first23.json`` (the product's step, no stop, each direction traced to 5 slices
past the reference's end) the oracle cuts each direction where the 3D Dice is highest, i.e.
the best any stop rule could do with this step. Beside it: the product's rules (patience 2)
and the product's rules plus a texture rule (the grey-value spread inside the mask falls
below ``TEXTURE`` x the anchor's: the intervertebral disc between two vertebral bodies),
replayed with ``simulate.replay``. Naive and ``new`` are the stored study results.

    python research/propagation_stop_rules/oracle.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from simulate import replay  # noqa: E402

TEXTURE = 0.5


def stored() -> dict:
    out: dict = {}
    for name in ("results.json", "results_new.json", "results_new_b.json"):
        for key, row in json.loads((HERE / name).read_text()).items():
            out.setdefault(key, {}).update(row)
    return out


def oracle(item: dict) -> float:
    """Best 3D Dice over every pair of cut points (one per direction)."""
    anchor = item["anchor"]

    def cumulative(rows):
        inter, area = [0], [0]
        for row in rows:
            inter.append(inter[-1] + row["inter"])
            area.append(area[-1] + row["area"])
        return np.array(inter), np.array(area)

    iu, au = cumulative(item["up"])
    idn, adn = cumulative(item["down"])
    inter = anchor["inter"] + iu[:, None] + idn[None, :]
    area = anchor["area"] + au[:, None] + adn[None, :] + item["ref_total"]
    return float((2.0 * inter / area).max())


def product_rules(texture: float | None = None):
    def miss(row, anchor, largest):
        if row["area"] == 0 or row["area"] < 0.05 * largest:
            return True
        if abs(row["mean"] - anchor["mean"]) / max(anchor["std"], 5.0) > 2.0:
            return True
        if row["area"] > 1.5 * max(row["prev_area"], 1):
            return True
        if row["overlap"] < 0.1 and row["shift"] > 1.0:
            return True
        return texture is not None and anchor["std"] >= 20 and \
            row["std"] < texture * anchor["std"]

    return miss


def main() -> None:
    traces = json.loads((HERE / "traces_ct_first23.json").read_text())
    base = stored()
    rows = []
    for key, item in traces.items():
        if "anchor" not in item:
            continue
        rows.append((item["name"], base[key]["naive"], base[key]["new"], oracle(item),
                     replay(item, product_rules(), 2), replay(item, product_rules(TEXTURE), 1)))
    print("| structure | naive | new (stored) | oracle cut | rules, replay | rules + texture "
          f"{TEXTURE}, patience 1 |")
    print("|---|---|---|---|---|---|")
    for name, *values in rows:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    values = np.array([r[1:] for r in rows])
    print("| **mean** | " + " | ".join(f"{v:.3f}" for v in values.mean(axis=0)) + " |")
    print("| > 0.05 below naive | - | " + " | ".join(
        str(int((values[:, i] < values[:, 0] - 0.05).sum())) for i in range(1, 5)) + " |")


if __name__ == "__main__":
    main()

"""A stop rule learned from traces of many structures, checked scan by scan.

The traces of ``identity.py`` hold, per slice of the product's step run without stops, what
a rule can see and what the reference says. Here a logistic model learns "this slice's mask
is mostly not the object" (under half of it on the reference) from the product's signals
(``stop_model.SliceSignals``: area against the last mask and
the run's largest, grey shift and spread against the anchor's, overlap, centre shift, the
model's IoU), leaving one scan out at a time; its probability above a threshold is a miss
beside the product's own rules, and the run replays with ``simulate.replay`` (patience 1 or
2). Scores are 3D Dice against the stored naive baseline of the study; MRI5 from traces of
the five MRI objects (``identity.py trace --min-slices 1``).

    python research/propagation_stop_rules/learned_stop.py \\
        --json research/propagation_stop_rules/traces_identity.json \\
        --mri5 research/propagation_stop_rules/traces_mri5.json

``--write research/propagation_stop_rules/stop_model.json --threshold 0.9`` fits the model
on every scan and writes its weights (``--leave-out SCAN``: on the other scans); ``variants.py
learned`` then runs the product's propagation with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from oracle import oracle, product_rules, stored  # noqa: E402
from simulate import print_per_structure, replay  # noqa: E402
from stop_model import FEATURES, SliceSignals  # noqa: E402

#: The five CT organs of benchmarks/propagation_eval.py (CT abdomen-pelvis labels).
CT5 = ("ct_abdomen_pelvis:1", "ct_abdomen_pelvis:2", "ct_abdomen_pelvis:3",
       "ct_abdomen_pelvis:5", "ct_abdomen_pelvis:6")


def features(row: dict, anchor: dict, largest: float) -> np.ndarray | None:
    """The stop model's inputs for one traced slice (None for an empty mask: a miss)."""
    if row["area"] == 0:
        return None
    signals = SliceSignals(row["area"], row["prev_area"], int(largest), row["mean"],
                           row["std"], row["overlap"], row["shift"], row["iou"])
    return signals.vector(anchor["mean"], anchor["std"])


def bad(row: dict) -> bool:
    """The slice's mask is mostly not the object."""
    return row["area"] == 0 or row["inter"] < 0.5 * row["area"]


def dataset(items: dict, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every traced slice of ``keys`` up to the first bad one after a bad one (what a run
    could reach with patience 2), with its label."""
    xs, ys = [], []
    for key in keys:
        item = items[key]
        for direction in ("up", "down"):
            largest, misses = item["anchor"]["area"], 0
            for row in item[direction]:
                x = features(row, item["anchor"], largest)
                if x is None:
                    break
                label = bad(row)
                xs.append(x)
                ys.append(label)
                misses = misses + 1 if label else 0
                if misses >= 2:
                    break
                if not label:
                    largest = max(largest, row["area"])
    return np.array(xs), np.array(ys, dtype=float)


class Logistic:
    """L2-regularised logistic regression on standardised features (Newton steps)."""

    def __init__(self, l2: float = 1.0) -> None:
        self.l2 = l2

    def fit(self, x: np.ndarray, y: np.ndarray) -> Logistic:
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = np.hstack([np.ones((len(x), 1)), (x - self.mean) / self.scale])
        # balanced classes: each class weighs half
        w_pos, w_neg = 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9)
        weights = np.where(y > 0, w_pos, w_neg)
        beta = np.zeros(z.shape[1])
        penalty = np.full(z.shape[1], self.l2)
        penalty[0] = 0.0
        for _ in range(50):
            p = 1 / (1 + np.exp(-z @ beta))
            grad = z.T @ (weights * (p - y)) + penalty * beta
            hess = (z * (weights * p * (1 - p))[:, None]).T @ z + np.diag(penalty)
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.abs(step).max() < 1e-8:
                break
        self.beta = beta
        return self

    def probability(self, x: np.ndarray) -> float:
        z = np.concatenate([[1.0], (x - self.mean) / self.scale])
        return float(1 / (1 + np.exp(-z @ self.beta)))


def learned_rule(model: Logistic, threshold: float, with_product: bool):
    product = product_rules()

    def miss(row, anchor, largest):
        if row["area"] == 0 or row["area"] < 0.05 * largest:
            return True
        if with_product and product(row, anchor, largest):
            return True
        return model.probability(features(row, anchor, largest)) > threshold

    return miss


def held_out(weights: dict, case: str, items: dict, keys: list[str]) -> Logistic:
    """The model that did not see ``case`` (trained on every other scan when ``case`` has
    no structure of >= 10 slices)."""
    if case not in weights:
        train = [k for k in keys if items[k]["case"] != case]
        weights[case] = Logistic().fit(*dataset(items, train))
    return weights[case]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--mri5", type=Path,
                        help="traces of the five MRI objects (identity.py --min-slices 1)")
    parser.add_argument("--per-structure", action="store_true")
    parser.add_argument("--write", type=Path, help="fit on every scan and write the weights")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="the miss threshold written with --write")
    parser.add_argument("--leave-out", help="with --write: fit without this scan")
    args = parser.parse_args(argv)
    items = json.loads(args.json.read_text())
    base = stored()
    mri5 = json.loads(args.mri5.read_text()) if args.mri5 else {}
    keys = [k for k, item in items.items() if "anchor" in item and "naive" in base.get(k, {})]
    scans = sorted({items[k]["case"] for k in keys})
    naive = np.array([base[k]["naive"] for k in keys])
    columns = {"oracle": [oracle(items[k]) for k in keys],
               "rules": [replay(items[k], product_rules(), 2) for k in keys]}
    weights = {}
    for scan in scans:  # leave this scan out
        train = [k for k in keys if items[k]["case"] != scan]
        x, y = dataset(items, train)
        weights[scan] = Logistic().fit(x, y)
    print(f"{len(keys)} structures on {len(scans)} scans; naive {naive.mean():.3f}")
    for threshold in args.thresholds:
        for with_product in (False, True):
            for patience in (1, 2):
                name = f"learned>{threshold}{' +rules' if with_product else ''} p{patience}"
                columns[name] = [replay(items[k], learned_rule(
                    weights[items[k]["case"]], threshold, with_product), patience)
                    for k in keys]
    ct5 = [keys.index(k) for k in CT5 if k in keys]
    mri5_scores = {"oracle": [oracle(item) for item in mri5.values()],
                   "rules": [replay(item, product_rules(), 2) for item in mri5.values()]}
    for name in columns:
        if name.startswith("learned"):
            threshold = float(name.split(">")[1].split()[0])
            with_product, patience = "+rules" in name, int(name[-1])
            mri5_scores[name] = [replay(item, learned_rule(
                held_out(weights, item["case"], items, keys), threshold, with_product),
                patience) for item in mri5.values()]
    print("| rule | mean | - naive | < naive - 0.05 | CT5 | MRI5 |")
    print("|---|---|---|---|---|---|")
    for name, values in columns.items():
        values = np.array(values)
        other = f"{np.mean(mri5_scores[name]):.3f}" if mri5 else "-"
        print(f"| {name} | {values.mean():.3f} | {values.mean() - naive.mean():+.3f} | "
              f"{int((values < naive - 0.05).sum())} | {values[ct5].mean():.3f} | {other} |")
    fitted = [k for k in keys if items[k]["case"] != args.leave_out]
    x_all, y_all = dataset(items, fitted)
    every = Logistic().fit(x_all, y_all)
    if args.write:
        args.write.write_text(json.dumps({
            "features": list(FEATURES), "mean": every.mean.tolist(),
            "scale": every.scale.tolist(), "beta": every.beta.tolist(),
            "threshold": args.threshold,
            "fitted_on": f"{len(x_all)} traced slices of {len(fitted)} structures on "
                         f"{len(scans) - (args.leave_out in scans)} scans "
                         f"({', '.join(s for s in scans if s != args.leave_out)}); "
                         "research/propagation_stop_rules/learned_stop.py"}, indent=1) + "\n")
    print("weights (all scans, standardised):",
          dict(zip(("bias", *FEATURES), np.round(every.beta, 2).tolist(), strict=True)))
    if args.per_structure:
        print_per_structure(items, keys, naive, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does the image embedding see where an object ends? Traces with an identity signal.

The oracle (``oracle.py``) showed that the product's step, stopped at the right slice, beats
the naive baseline on every traced CT structure; the traced quantities (area, grey values,
overlap, the model's IoU) do not show where, e.g., one vertebra ends and the next begins.
This script traces the product's step again (``traces.trace``) and adds, per slice, what the
encoder says about the masked tissue: the mask-pooled embedding (the mean of the 256
channels over the embedding cells under the mask, weighted by the mask's share of each cell)
and its cosine similarity to the anchor's (``sim_anchor``) and to the previous slice's
(``sim_prev``). Then it replays stop rules on those signals beside the oracle cut.

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=1 python \\
        research/propagation_stop_rules/identity.py trace \\
        --json research/propagation_stop_rules/traces_identity.json
    python research/propagation_stop_rules/identity.py replay \\
        --json research/propagation_stop_rules/traces_identity.json
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

import traces  # noqa: E402
from oracle import oracle, product_rules, stored  # noqa: E402
from simulate import print_per_structure, replay  # noqa: E402

from napari_medsam.segmentation import SliceRef  # noqa: E402


def pooled(session, index: int, mask: np.ndarray) -> np.ndarray | None:
    """The mask-pooled full-slice embedding (256 values), or None for an empty mask."""
    if not mask.any():
        return None
    embedding = session.embedding(SliceRef(0, index))
    features = np.asarray(embedding.features, dtype=np.float32)[0]  # C, G, G
    grid = features.shape[-1]
    cell = embedding.input_size / grid  # model-input pixels per embedding cell
    rows, cols = embedding.resized_size
    ys, xs = np.nonzero(mask)
    cy = np.minimum((ys * rows / mask.shape[0] / cell).astype(int), grid - 1)
    cx = np.minimum((xs * cols / mask.shape[1] / cell).astype(int), grid - 1)
    weights = np.zeros((grid, grid), np.float64)
    np.add.at(weights, (cy, cx), 1.0)
    weights /= weights.sum()
    return np.tensordot(features, weights, axes=([1, 2], [0, 1]))


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


class Hook:
    """Adds the two similarities to each traced slice's row (``traces.trace``'s hook)."""

    def __init__(self, session, z: int, anchor: np.ndarray) -> None:
        self.session = session
        self.anchor = pooled(session, z, anchor)

    def __call__(self, row: dict, index: int, mask: np.ndarray, previous_index: int,
                 previous: np.ndarray) -> None:
        here = pooled(self.session, index, mask)
        row["sim_anchor"] = cosine(here, self.anchor)
        row["sim_prev"] = cosine(here, pooled(self.session, previous_index, previous))


def trace_all(args) -> None:
    traces.trace_scans(args.json, args.only, args.min_slices, hook=Hook)


def identity_rule(threshold: float, against: str = "sim_anchor"):
    """The product's rules, plus a miss where the pooled embedding's similarity falls below
    ``threshold``."""
    base = product_rules()

    def miss(row, anchor, largest):
        if base(row, anchor, largest):
            return True
        value = row.get(against)
        return value is not None and value < threshold

    return miss


def replay_all(args) -> None:
    items = json.loads(args.json.read_text())
    base = stored()
    keys = [k for k, item in items.items() if "anchor" in item and k in base
            and "naive" in base[k]]
    naive = np.array([base[k]["naive"] for k in keys])
    columns = {"oracle": [oracle(items[k]) for k in keys],
               "rules": [replay(items[k], product_rules(), 2) for k in keys]}
    for against in ("sim_anchor", "sim_prev"):
        for threshold in args.thresholds:
            for patience in (1, 2):
                columns[f"{against}<{threshold} p{patience}"] = [
                    replay(items[k], identity_rule(threshold, against), patience) for k in keys]
    print(f"{len(keys)} structures; naive {naive.mean():.3f}")
    print("| rule | mean | - naive | < naive - 0.05 |")
    print("|---|---|---|---|")
    for name, values in columns.items():
        values = np.array(values)
        print(f"| {name} | {values.mean():.3f} | {values.mean() - naive.mean():+.3f} | "
              f"{int((values < naive - 0.05).sum())} |")
    if args.per_structure:
        print_per_structure(items, keys, naive, columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("trace", "replay"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--only")
    parser.add_argument("--min-slices", type=int, default=10)
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.6, 0.7, 0.8, 0.85, 0.9])
    parser.add_argument("--per-structure", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    trace_all(args) if args.what == "trace" else replay_all(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

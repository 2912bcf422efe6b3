"""Does the decoder's own ambiguity see where an object ends?

SAM-style decoders return, with every mask, three more ("multimask") answers and a
predicted IoU for each. Inside an object the answers agree and the logits are far from 0;
where a box straddles the end of a vertebra, the disc and the next vertebra, they might not.
``trace`` re-traces the product's step (``traces.trace``, no stops, to 5 slices past the
reference's end) and adds per slice, from one more decoder call on the full slice with the
step's last box (the mask's box plus the product's margin):

- ``stab``: SAM's stability score of the single-mask answer (pixels with logit > 1 over
  pixels with logit > -1, in the low-resolution logits);
- ``agree``: the highest Dice between the single-mask answer and a multimask answer;
- ``iou_multi``: the highest predicted IoU of the multimask answers.

The anchor's own values (its tight box) are stored beside it. ``replay`` gives the AUC of
each signal for "this slice's mask is mostly not the object" and replays each as an extra
miss beside the product's rules (``simulate.replay``, patience 2).

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=2 python \\
        research/propagation_stop_rules/ambiguity.py trace --keys ct5,losers \\
        --json research/propagation_stop_rules/traces_ambiguity.json
    python research/propagation_stop_rules/ambiguity.py replay \\
        --json research/propagation_stop_rules/traces_ambiguity.json
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
import traces  # noqa: E402
import variants  # noqa: E402
from learned_stop import bad  # noqa: E402
from oracle import oracle, product_rules  # noqa: E402
from simulate import replay  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.engine.preprocess import prompt_arrays  # noqa: E402
from napari_medsam.engine.protocol import Box  # noqa: E402
from napari_medsam.segmentation import SliceRef  # noqa: E402
from napari_medsam.segmentation.propagation_steps import grow_box, mask_box  # noqa: E402

logger = logging.getLogger("ambiguity")
SIGNALS = ("stab", "agree", "iou_multi")


def decoder_signals(session, index: int, box) -> dict:
    """The three signals of one decoder call on the full slice ``index`` with ``box``."""
    embedding = session.embedding(SliceRef(0, index))
    coords, labels = prompt_arrays(Box.of(box), None, embedding.original_size,
                                   embedding.input_size)
    low_res, iou = session.model.decode(embedding, coords, labels, None)
    grid = low_res.shape[-1]
    rows, cols = (int(np.ceil(s * grid / embedding.input_size))
                  for s in embedding.resized_size)
    logits = low_res[0, :, :rows, :cols]
    masks = logits > 0
    stab = float((logits[0] > 1).sum() / max(int((logits[0] > -1).sum()), 1))
    agree = max(2.0 * (masks[0] & m).sum() / max(int(masks[0].sum() + m.sum()), 1)
                for m in masks[1:])
    return dict(stab=stab, agree=float(agree), iou_multi=float(iou[0, 1:].max()))


class Hook:
    """Adds the decoder's signals to each traced slice (``traces.trace``'s hook)."""

    def __init__(self, session, z: int, anchor: np.ndarray) -> None:
        self.session = session
        self.anchor = decoder_signals(session, z, grow_box(mask_box(anchor), 0.0,
                                                           anchor.shape))

    def __call__(self, row: dict, index: int, mask: np.ndarray, previous_index: int,
                 previous: np.ndarray) -> None:
        source = mask if mask.any() else previous
        row.update(decoder_signals(self.session, index, grow_box(mask_box(source), 0.1,
                                                                  source.shape)))
        row["anchor_signals"] = self.anchor


def trace_keys(path: Path, keys: list[str], base: dict) -> None:
    out = json.loads(path.read_text()) if path.exists() else {}
    model = load_model("litemedsam", device="cpu", threads=2)
    for key, session, obj, z, anchor in study.each_anchor(model, keys, lambda k: k in out):
        row = dict(case=key.split(":")[0], name=base.get(key, {}).get("name", key))
        if anchor.any():
            row.update(traces.trace(session, obj, anchor, z, hook=Hook(session, z, anchor)))
        out[key] = row
        path.write_text(json.dumps(out))
        logger.info("%s %s: %d + %d slices", key, row["name"], len(row.get("up", [])),
                    len(row.get("down", [])))


#: The product's rules on a traced row (``oracle.product_rules``).
product_miss = product_rules()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a bad slice < score of a good one): low signal = bad."""
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n_bad, n_good = int(labels.sum()), int((~labels).sum())
    return float(1.0 - (ranks[labels].sum() - n_bad * (n_bad + 1) / 2) / (n_bad * n_good))


def replay_all(args) -> None:
    items = json.loads(args.json.read_text())
    base = variants.baseline()
    keys = [k for k, item in items.items() if "anchor" in item and "naive" in base.get(k, {})]
    rows = [(r, items[k]) for k in keys for d in ("up", "down") for r in items[k][d]
            if r["area"] > 0 and "stab" in r]
    labels = np.array([bad(r) for r, _ in rows])
    print(f"{len(keys)} structures, {len(rows)} traced slices with a mask, "
          f"{int(labels.sum())} mostly off the object")
    for name in SIGNALS:
        raw = np.array([r[name] for r, _ in rows])
        rel = np.array([r[name] / max(r["anchor_signals"][name], 1e-6) for r, _ in rows])
        print(f"  AUC {name}: {auc(raw, labels):.3f} (relative to the anchor's: "
              f"{auc(rel, labels):.3f})")
    naive = np.array([base[k]["naive"] for k in keys])
    columns = {"oracle cut": [oracle(items[k]) for k in keys],
               "rules": [replay(items[k], product_miss, 2) for k in keys]}
    for name in SIGNALS:
        for t in args.thresholds:
            def miss(row, anchor, largest, name=name, t=t):
                if product_miss(row, anchor, largest):
                    return True
                return "stab" in row and row["area"] > 0 and \
                    row[name] < t * row["anchor_signals"][name]
            columns[f"{name} < {t} x anchor"] = [replay(items[k], miss, 2) for k in keys]
    ct5 = [i for i, k in enumerate(keys) if k in variants.CT5]
    print(f"| rule | mean | - naive | < naive - 0.05 | CT5 ({len(ct5)}) |")
    print("|---|---|---|---|---|")
    for name, values in columns.items():
        values = np.array(values)
        print(f"| {name} | {values.mean():.3f} | {values.mean() - naive.mean():+.3f} | "
              f"{int((values < naive - 0.05).sum())} | {values[ct5].mean():.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("trace", "replay"))
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--keys", default="ct5,losers")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    if args.what == "trace":
        base = variants.baseline()
        trace_keys(args.json, variants.subset_keys(args.keys, base), base)
    else:
        replay_all(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Named propagation variants on the study's structures (issue 18, per-structure target).

Each variant is the product's propagation (:class:`~napari_medsam.segmentation.
propagation_runs.Run`, :class:`PropagationParams`, :class:`StopRules`) with other values,
or with another step (``consensus``: the product step, and the no-margin box of the
previous mask when the two masks disagree), or with a tight retry of the slices its rules
reject (``retry``, ``retry2``: ``tight_runs.py``; ``retry2g``, gated: the product's
:class:`~napari_medsam.segmentation.propagation_runs.Retry`, shipped since 2026-12-07).
Same anchors and scoring as ``study.py``; the rows go to ``results_variant_<name>.json``
(3D Dice, where each direction stopped).

Subsets (``--subset``, comma-separated): ``losers`` (the structures where the product's
``new`` is > 0.05 below ``naive`` in the merged study results), ``ct5`` (liver, spleen,
kidneys, stomach of the CT abdomen-pelvis: ``benchmarks/propagation_eval.py``), ``mri5``
(``results_mri5.json``), ``all`` (every structure of >= 10 slices, and mri5).

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=1 python \\
        research/propagation_stop_rules/variants.py m0 --subset losers,ct5,mri5
    python research/propagation_stop_rules/variants.py m0 --subset losers,ct5,mri5 --table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402
from table import GROUPS, merge  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.evaluation import dice  # noqa: E402
from napari_medsam.segmentation import propagation_runs  # noqa: E402
from napari_medsam.segmentation.propagation_runs import Retry, Run, anchor_parts  # noqa: E402
from napari_medsam.segmentation.propagation_steps import (  # noqa: E402
    TIGHT_STEP,
    PropagationParams,
    grow_box,
    mask_box,
    segment_from,
    touching,
)
from napari_medsam.segmentation.propagation_stops import StopRules  # noqa: E402

logger = logging.getLogger("variants")
INF = float("inf")
BASELINE = ["results.json", "results_new.json", "results_new_b.json", "results_new_mri.json",
            "results_mri5.json"]
CT5 = [f"ct_abdomen_pelvis:{lab}" for lab in (1, 2, 3, 5, 6)]
MRI5 = ["brain1_mr:1", "hippocampus_003:1", "hippocampus_003:2", "hippocampus_004:1",
        "hippocampus_004:2"]


def baseline() -> dict:
    """The stored study rows (``BASELINE``: naive, old, new, shape group) by structure key."""
    return merge(*(json.loads((HERE / f).read_text()) for f in BASELINE))


@dataclass(frozen=True)
class Variant:
    """Propagation parameters, and optionally the consensus step (``agree`` > 0)."""

    params: PropagationParams
    agree: float = 0.0  # consensus: take the no-margin mask when Dice(both) < agree
    #: (fraction, plus, floor): box margin max(floor, round(fraction x extent) + plus) px per
    #: side instead of the product's round(margin x extent) + 1 (None: the product's)
    pixels: tuple[float, int, int] | None = None
    #: the tight retry: the Dice a retried mask needs (0: none), and at most this many
    #: retried slices in a row; gated: the product's ``Retry`` (grey-value and area misses
    #: only), else ``tight_runs.py`` (every miss)
    retry: float = 0.0
    retry_limit: float = 2
    retry_gated: bool = False
    #: gated, and the retried mask must also pass every stop rule (:class:`RuleRetry`)
    retry_rules: bool = False
    #: gated, and ``retry_limit`` counts every retried slice of a part, not those in a row
    #: (:func:`total_budget`)
    retry_total: bool = False
    note: str = ""


VARIANTS = {
    "product": Variant(PropagationParams(), note="the product's step and rules without "
                       "its retry (the product until 2026-12-06)"),
    "retry": Variant(PropagationParams(), retry=0.5, retry_limit=INF,
                     note="a rejected slice retried with the tight box of the last mask, kept "
                     "when Dice >= 0.5 with it, any number of slices in a row"),
    "retry2": Variant(PropagationParams(), retry=0.5, retry_limit=2,
                      note="as retry, at most 2 retried slices in a row"),
    "retry2g": Variant(PropagationParams(), retry=0.5, retry_limit=2, retry_gated=True,
                       note="as retry2, only grey-value and area misses, and the retried "
                       "mask keeps the anchor's grey values"),
    "retry2g7": Variant(PropagationParams(), retry=0.7, retry_limit=2, retry_gated=True,
                        note="as retry2g, the retried mask needs Dice >= 0.7 with the last"),
    "retry2gr": Variant(PropagationParams(), retry=0.5, retry_limit=2, retry_gated=True,
                        retry_rules=True, note="as retry2g, the retried mask must also pass "
                        "the stop rules (no sudden growth, no jump)"),
    "retry2gt": Variant(PropagationParams(), retry=0.5, retry_limit=2, retry_gated=True,
                        retry_total=True, note="as retry2g, at most 2 retried slices per "
                        "part in the whole run (a plain slice does not reset the count)"),
    "learned": Variant(PropagationParams(), note="the product defaults plus the learned stop "
                       "model (learned_runs.py; --stop-model, default stop_model.json)"),
    "m0": Variant(PropagationParams(margin=0.0, refit=False),
                  note="naive's step (no margin, no refit), the product's rules"),
    "m0_vj": Variant(PropagationParams(margin=0.0, refit=False, stop=StopRules(
        max_intensity_shift=INF, max_area_ratio=INF)), note="naive's step, vanish + jump only"),
    "loose": Variant(PropagationParams(stop=StopRules(max_area_ratio=2.0,
                                                      max_intensity_shift=3.0)),
                     note="product step, area jump 2.0x, intensity 3 std"),
    "m03": Variant(PropagationParams(margin=0.03), note="margin 0.03, refit, product rules"),
    "m05": Variant(PropagationParams(margin=0.05), note="margin 0.05, refit, product rules"),
    "f10p2": Variant(PropagationParams(), pixels=(0.1, 0, 2),
                     note="margin max(2, round(0.1 x extent)) px, refit, product rules"),
    "consensus": Variant(PropagationParams(), agree=0.5,
                         note="product step; no-margin mask when Dice(both) < 0.5"),
}


class RuleRetry(Retry):
    """The product's retry, keeping a retried mask only when the stop rules accept it too."""

    def keeps(self, mask, prev, largest, rules, shift) -> bool:
        return rules.reason(mask, prev, largest, shift) is None and \
            super().keeps(mask, prev, largest, rules, shift)


@contextlib.contextmanager
def total_budget():
    """While active, a plain accepted slice does not reset a part's count of retried slices
    (the product resets it: ``limit`` is then slices in a row)."""
    original = propagation_runs._Part.step

    def step(self, *args):
        before = self.retried
        out = original(self, *args)
        if out[0] is not None and self.retried == 0:
            self.retried = before
        return out

    propagation_runs._Part.step = step
    try:
        yield
    finally:
        propagation_runs._Part.step = original


def consensus_step(session, params: PropagationParams, agree: float):
    """segment(ref, prev): the product step, overruled by the no-margin box's mask when the
    two masks have Dice < ``agree`` (one more decoder call per slice)."""

    def segment(ref, prev):
        mask, box, iou = segment_from(session, ref, prev, params)
        tight = grow_box(mask_box(prev), 0.0, prev.shape)
        if tight == box:
            return mask, box, iou
        pred = session.predict(ref, box=tight)
        alt = touching(pred.mask, prev)
        if dice(mask, alt) < agree:
            return alt, tight, float(pred.iou)
        return mask, box, iou

    return segment


def pixel_grow(box, fraction: float, plus: int, floor: int, shape) -> tuple:
    """A box grown by max(floor, round(fraction x extent) + plus) pixels per side."""
    x0, y0, x1, y1 = box
    mx = max(floor, int(round(fraction * (x1 - x0 + 1))) + plus)
    my = max(floor, int(round(fraction * (y1 - y0 + 1))) + plus)
    grown = (x0 - mx, y0 - my, x1 + mx, y1 + my)
    return grow_box(tuple(int(v) for v in grown), 0.0, shape)  # clipped to the slice


def pixel_step(session, params: PropagationParams, pixels: tuple[float, int, int]):
    """segment(ref, prev): the product step (predict, keep what touches, refit) with
    :func:`pixel_grow` margins."""

    def segment(ref, prev):
        box = pixel_grow(mask_box(prev), *pixels, prev.shape)
        pred = session.predict(ref, box=box)
        mask, iou = touching(pred.mask, prev), pred.iou
        if params.refit and mask.any():
            refit = pixel_grow(mask_box(mask), *pixels, prev.shape)
            if refit != box:
                pred = session.predict(ref, box=refit)
                box, mask, iou = refit, touching(pred.mask, prev), pred.iou
        return mask, box, float(iou)

    return segment


def propagate(session, z: int, anchor: np.ndarray, variant: Variant
              ) -> tuple[np.ndarray, list]:
    """One anchor's propagation (both directions, as the product's outer runs do)."""
    params = variant.params
    if variant.agree > 0:
        segment = consensus_step(session, params, variant.agree)
    elif variant.pixels is not None:
        segment = pixel_step(session, params, variant.pixels)
    else:
        def segment(ref, prev):
            return segment_from(session, ref, prev, params)
    out = np.zeros(session.volume.shape, bool)
    if not anchor.any():  # as study.py: an empty anchor scores 0 (the product refuses it)
        return out, []
    out[z] = anchor
    parts = anchor_parts(anchor) if params.split_parts else [anchor]
    stops = []
    wrapper, retry = contextlib.nullcontext(), None
    if variant.retry > 0 and variant.retry_gated:
        def tight(ref, prev):
            return segment_from(session, ref, prev, TIGHT_STEP)

        kind = RuleRetry if variant.retry_rules else Retry
        retry = kind(tight, variant.retry, int(variant.retry_limit))
        if variant.retry_total:
            wrapper = total_budget()
    elif variant.retry > 0:
        from tight_runs import use_tight_retry

        wrapper = use_tight_retry(session, variant.retry, variant.retry_limit)
    with wrapper:
        for direction, limit in ((+1, out.shape[0] - 1), (-1, 0)):
            run = Run(segment, session.slice_image, 0, z, parts, direction, limit, params.stop,
                      retry=retry)
            if not run.active:
                run.end_at_once()
            while run.active:
                for r in run.step():
                    out[r.index] = r.mask
                    if r.stopped:
                        stops.append([int(r.index), str(r.stopped)])
    return out, stops


def subset_keys(names: str, base: dict) -> list[str]:
    keys: list[str] = []
    for name in names.split(","):
        if name == "losers":
            keys += [k for k, r in base.items() if r["slices"] >= 10 and "new" in r
                     and r["new"] < r["naive"] - 0.05]
        elif name == "ct5":
            keys += CT5
        elif name == "mri5":
            keys += MRI5
        elif name == "all":
            keys += [k for k, r in base.items() if r["slices"] >= 10] + MRI5
        else:
            keys.append(name)
    return list(dict.fromkeys(keys))


def run(name: str, keys: list[str], base: dict, path: Path) -> None:
    variant = VARIANTS[name]
    out = json.loads(path.read_text()) if path.exists() else {}
    model = load_model("litemedsam", device="cpu", threads=1)
    for key, session, obj, z, anchor in study.each_anchor(model, keys, lambda k: k in out):
        t0 = time.perf_counter()
        vol, stops = propagate(session, z, anchor, variant)
        row = {k: base.get(key, {}).get(k) for k in ("case", "name", "group", "slices")}
        row.update(dice=dice(vol, obj), stops=stops, anchor_dice=dice(anchor, obj[z]),
                   seconds=round(time.perf_counter() - t0, 2))
        out[key] = row
        path.write_text(json.dumps(out, indent=1))
        b = base.get(key, {})
        logger.info("%s %-24s %s %.3f  naive %.3f new %.3f  %s", name, key,
                    row["name"], row["dice"], b.get("naive", np.nan),
                    b.get("new", np.nan), stops)


def summary(name: str, keys: list[str], base: dict, paths: list[Path]) -> None:
    """Subset numbers and, over the study's structures, the README-style table."""
    res = merge(*(json.loads(p.read_text()) for p in paths if p.exists()))
    done = [k for k in keys if k in res and "new" in base.get(k, {})]  # the 136 (+ mri5)
    losers = [k for k in done if res[k]["dice"] < base[k]["naive"] - 0.05]
    print(f"variant {name}: {VARIANTS[name].note}; {len(done)} of {len(keys)} done")
    for label, sel in (("all done", done), ("ct5", [k for k in CT5 if k in done]),
                       ("mri5", [k for k in MRI5 if k in done]),
                       ("study (>=10 sl)", [k for k in done if base[k]["slices"] >= 10])):
        if sel:
            v = np.mean([res[k]["dice"] for k in sel])
            nv = np.mean([base[k]["naive"] for k in sel])
            nw = np.mean([base[k]["new"] for k in sel])
            print(f"  {label:16s} n {len(sel):3d}  variant {v:.3f}  naive {nv:.3f}  "
                  f"new {nw:.3f}  variant-naive {v - nv:+.3f}")
    print(f"  > 0.05 below naive: {len(losers)}")
    for k in sorted(losers, key=lambda k: res[k]["dice"] - base[k]["naive"]):
        print(f"    {k:24s} {res[k]['name'][:22]:22s} {res[k]['dice']:.3f} "
              f"naive {base[k]['naive']:.3f} new {base[k]['new']:.3f} {res[k]['stops']}")
    study_rows = [k for k in done if base[k]["slices"] >= 10]
    print("\n| group | n | naive | new | variant | variant - naive | variant < naive - 0.05 |")
    print("|---|---|---|---|---|---|---|")
    for group in (*GROUPS, "all"):
        sel = [k for k in study_rows if group in ("all", base[k]["group"])]
        if not sel:
            continue
        nv, nw, v = (np.array([src[k] for k in sel]) for src in
                     ({k: base[k]["naive"] for k in sel}, {k: base[k]["new"] for k in sel},
                      {k: res[k]["dice"] for k in sel}))
        print(f"| {group} | {len(sel)} | {nv.mean():.3f} | {nw.mean():.3f} | {v.mean():.3f} | "
              f"{v.mean() - nv.mean():+.3f} | {int((v < nv - 0.05).sum())} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--subset", default="losers,ct5,mri5")
    parser.add_argument("--table", action="store_true", help="print the summary only")
    parser.add_argument("--only", help="only structures whose key starts with this (a scan)")
    parser.add_argument("--stop-model", type=Path,
                        help="variant learned: the weights (default stop_model.json; "
                        "learned_stop.py --write ... --leave-out SCAN fits others)")
    parser.add_argument("--out", type=Path, nargs="*",
                        help="result files (default results_variant_<name>.json); with several, "
                        "rows are written to the first and all are read for the summary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    base = baseline()
    keys = subset_keys(args.subset, base)
    paths = args.out or [HERE / f"results_variant_{args.variant}.json"]
    if not args.table:
        done = merge(*(json.loads(p.read_text()) for p in paths[1:] if p.exists()))
        todo = [k for k in keys if (not args.only or k.startswith(args.only)) and k not in done]
        if args.variant == "learned":
            from learned_runs import use_stop_model
            from stop_model import DEFAULT_PATH, StopModel

            path = args.stop_model or DEFAULT_PATH
            with use_stop_model(StopModel.from_json(json.loads(path.read_text()))):
                run(args.variant, todo, base, paths[0])
        else:
            run(args.variant, todo, base, paths[0])
    summary(args.variant, keys, base, paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Adaptation measured on the shared scans: base model against the adapted one, same run.

Each experiment adapts LiteMedSAM's decoder with :func:`napari_medsam.adaptation.adapt` (the
``napari-medsam adapt`` path, product defaults: zoom auto, boxes and clicks) on some scans,
labels or slices, then evaluates base and adapted model with the product's own simulated
users (:func:`napari_medsam.evaluation.evaluate`: a tight box, or one click at the innermost
pixel, on every slice of each label; 3D Dice) on what was not trained on:

* ``hippocampus``: adapt on case 003, evaluate on 004, and the reverse;
* ``brain``: the tumour of ``pyradiomics_brain1_mr``, adapt on its slices in the lower half,
  evaluate on the upper half (and the reverse);
* ``mr_abdomen``: ``totalseg_mr_abdomen_sm``, adapt on the slices 0-9 of every label with
  >= 10 slices' worth of voxels, evaluate on slices 10-19 (and the reverse);
* ``ct``: adapt on the organs of ``totalseg_ct_abdomen_pelvis`` (liver, spleen, kidneys,
  stomach, pancreas...), evaluate the same organs on ``totalseg_ct_abdomen_sm`` and
  ``totalseg_ct_dicom`` (must not lose more than 0.01).

Also per experiment: embedding and training seconds, and the decoder time of a click with
the adapted model (median over clicks on embedded slices, and decoder calls per click).

    NAPARI_MEDSAM_CACHE=/tmp/adapt-cache python benchmarks/adaptation_eval.py \\
        --experiments hippocampus --json out/adaptation_hippocampus.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))

from helpers import case_dir  # noqa: E402

from napari_medsam import evaluation as ev  # noqa: E402
from napari_medsam.adaptation import AdaptError, TrainingConfig, adapt, read_pair  # noqa: E402
from napari_medsam.adaptation.cohort import TrainingPair  # noqa: E402
from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.paths import model_dir  # noqa: E402
from napari_medsam.segmentation import SegmentationSession, SliceRef  # noqa: E402

HIPPO = case_dir("msd_hippocampus_mr")
CT_ORGANS = [1, 2, 3, 5, 6, 7]  # spleen, kidneys, liver, stomach, pancreas (TotalSegmentator)


def _pair(image: Path, labels: Path, values) -> TrainingPair:
    return read_pair(image, labels, values)


def _masked(pair: TrainingPair, keep) -> TrainingPair:
    """The pair with the label map zeroed outside the slices ``keep`` (axis 0)."""
    labels = np.zeros_like(pair.labels)
    labels[keep] = pair.labels[keep]
    return TrainingPair(pair.image, labels, pair.source + f"[{keep.start}:{keep.stop}]")


def _evaluate(model, pair: TrainingPair, values, mode: str, zoom: str = "auto",
              slices=None) -> dict[int, float]:
    reference = pair.labels if slices is None else _masked(pair, slices).labels
    session = SegmentationSession(model, pair.image.array,
                                  auto_mapping(pair.image.array, pair.image.modality),
                                  zoom=zoom, disk_cache=True)
    present = [v for v in values if (reference == v).sum() >= ev.MIN_VOXELS]
    result = ev.evaluate(session, reference, mode, labels=present)
    return {row.label: round(row.dice, 4) for row in result.labels}


def _click_cost(model, pair: TrainingPair, value: int) -> dict:
    """Median ms and decoder calls of one click on embedded slices (zoom off and auto)."""
    out = {}
    for zoom in ("off", "auto"):
        session = SegmentationSession(model, pair.image.array,
                                      auto_mapping(pair.image.array, pair.image.modality),
                                      zoom=zoom)
        calls = []
        real = model.predict

        def counting(*args, _real=real, _calls=calls, **kwargs):
            _calls.append(1)
            return _real(*args, **kwargs)

        model.predict = counting
        times = []
        try:
            for index in np.flatnonzero((pair.labels == value).any(axis=(1, 2)))[:8]:
                mask = pair.labels[index] == value
                click = ev.interior_click(mask)
                ref = SliceRef(0, int(index))
                session.predict_prompts(ref, positives=[click])  # embeds (ROI too)
                calls.clear()
                began = time.perf_counter()
                session.predict_prompts(ref, positives=[click])
                times.append(1000 * (time.perf_counter() - began))
        finally:
            del model.predict
        out[zoom] = {"median_ms": round(statistics.median(times), 1),
                     "decoder_calls": len(calls)}
    return out


def _run(name: str, train: list[TrainingPair], values,
         tests: list[tuple[str, TrainingPair, object]], config: TrainingConfig,
         results: dict) -> None:
    """Adapt on ``train``, then evaluate base and adapted on each (label, pair, slices)."""
    if model_dir(name).exists():
        shutil.rmtree(model_dir(name))
    try:
        report = adapt(train, values, name, config=config,
                       progress=lambda text: print("   ", text, end="\r", flush=True))
    except AdaptError as exc:  # refused (too few slices to check): nothing to evaluate
        print(f"\n  refused: {exc}")
        results[name] = {"refused": str(exc)}
        return
    print()
    row = {"report": report.to_json(), "tests": {}}
    base = load_model("litemedsam", "cpu")
    adapted = load_model(name, "cpu") if report.saved else None
    for title, pair, slices in tests:
        entry = {}
        for mode in ("box", "click"):
            entry[f"base_{mode}"] = _evaluate(base, pair, values, mode, slices=slices)
            if adapted is not None:
                entry[f"adapted_{mode}"] = _evaluate(adapted, pair, values, mode,
                                                     slices=slices)
        for key in list(entry):
            scores = list(entry[key].values())
            entry[f"{key}_mean"] = round(float(np.mean(scores)), 4) if scores else None
        row["tests"][title] = entry
        print(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in entry.items()
                                           if k.endswith("_mean")))
    if adapted is not None:
        row["click_cost"] = _click_cost(adapted, tests[0][1], values[0])
        print("  click cost:", row["click_cost"])
    results[name] = row


def hippocampus(config: TrainingConfig, results: dict) -> None:
    cases = {c: _pair(HIPPO / f"hippocampus_{c}_image.nii.gz",
                      HIPPO / f"hippocampus_{c}_label.nii.gz", [1, 2]) for c in ("003", "004")}
    for train, test in (("003", "004"), ("004", "003")):
        _run(f"bench-hippo-{train}", [cases[train]], [1, 2],
             [(f"hippocampus_{test}", cases[test], None)], config, results)


def brain(config: TrainingConfig, results: dict) -> None:
    folder = case_dir("pyradiomics_brain1_mr")
    pair = _pair(folder / "image.nrrd", folder / "label.nrrd", [1])
    zs = np.flatnonzero(pair.labels.any(axis=(1, 2)))  # the tumour is on 7 slices
    cut = int(zs[len(zs) // 2]) + 1
    for name, train, test in (("lower", slice(0, cut), slice(cut, None)),
                              ("upper", slice(cut - 1, None), slice(0, cut - 1))):
        _run(f"bench-brain-{name}", [_masked(pair, train)], [1],
             [("brain tumour, other half", pair, test)], config, results)


def mr_abdomen(config: TrainingConfig, results: dict) -> None:
    folder = case_dir("totalseg_mr_abdomen_sm")
    pair = _pair(folder / "image.nii.gz", folder / "label.nii.gz", None)
    values = [int(v) for v in np.unique(pair.labels) if v and (pair.labels == v).sum() >= 200]
    for name, train, test in (("first", slice(0, 10), slice(10, None)),
                              ("last", slice(10, None), slice(0, 10))):
        kept = [v for v in values if (pair.labels[train] == v).sum() >= 50]
        _run(f"bench-mrabd-{name}", [_masked(pair, train)], kept,
             [("MR abdomen, other slices", pair, test)], config, results)


def ct(config: TrainingConfig, results: dict) -> None:
    train = _pair(case_dir("totalseg_ct_abdomen_pelvis") / "image.nii.gz",
                  case_dir("totalseg_ct_abdomen_pelvis") / "label.nii.gz", CT_ORGANS)
    small = _pair(case_dir("totalseg_ct_abdomen_sm") / "image.nii.gz",
                  case_dir("totalseg_ct_abdomen_sm") / "label.nii.gz", None)
    dicom_image = read_volume(case_dir("totalseg_ct_dicom") / "dicom")
    dicom_labels, _ = ev.align_reference(dicom_image,
                                         read_volume(case_dir("totalseg_ct_dicom") /
                                                     "label.nii.gz"))
    dicom = TrainingPair(dicom_image, dicom_labels, "totalseg_ct_dicom")
    _run("bench-ct-organs", [train], CT_ORGANS,
         [("totalseg_ct_abdomen_sm", small, None), ("totalseg_ct_dicom", dicom, None)],
         config, results)


EXPERIMENTS = {"hippocampus": hippocampus, "brain": brain, "mr_abdomen": mr_abdomen,
               "ct": ct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--epochs", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    config = TrainingConfig(epochs=None if args.epochs == "auto" else int(args.epochs),
                            seed=args.seed)
    results: dict = {"config": {"epochs": args.epochs, "seed": args.seed}}
    for name in args.experiments.split(","):
        print(f"== {name}")
        started = time.perf_counter()
        EXPERIMENTS[name](config, results)
        print(f"   {time.perf_counter() - started:.0f} s")
        if args.json:  # after every experiment: a failure later keeps what was measured
            Path(args.json).write_text(json.dumps(results, indent=1))
    if args.json:
        print("wrote", args.json)


if __name__ == "__main__":
    main()

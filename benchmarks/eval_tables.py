"""Markdown tables from the ``napari-medsam eval --json`` files of every case.

    python benchmarks/eval_tables.py DIR > tables.md

``DIR`` holds ``MODE_CASE.json`` files (``MODE`` = box, click, propagate; ``CASE`` as in
:data:`CASES`), written by the commands of ``docs/speed_accuracy.md``. Prints the
per-case summary (mean Dice and seconds per mode), the mean over all labels and over labels
of at least 5000 voxels, then one collapsible per-label table per mode.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODES = ("box", "click", "propagate")
#: file stem -> the case's name in the tables
CASES = {
    "dcmqi_liver_spine": "dcmqi_ct_3slice",
    "dcmqi_heart": "dcmqi_ct_3slice (heart)",
    "hippocampus_003": "msd_hippocampus_mr 003",
    "hippocampus_004": "msd_hippocampus_mr 004",
    "pyradiomics_brain1_mr": "pyradiomics_brain1_mr",
    "totalseg_mr_abdomen_sm": "totalseg_mr_abdomen_sm",
    "totalseg_ct_dicom": "totalseg_ct_dicom",
    "totalseg_ct_abdomen_sm": "totalseg_ct_abdomen_sm",
    "totalseg_ct_abdomen_pelvis": "totalseg_ct_abdomen_pelvis",
}
LARGE = 5000


def load(folder: Path) -> dict[str, dict[str, dict]]:
    """mode -> case stem -> the eval JSON document (missing files are left out)."""
    out: dict[str, dict[str, dict]] = {m: {} for m in MODES}
    for mode in MODES:
        for stem in CASES:
            path = folder / f"{mode}_{stem}.json"
            if path.exists():
                out[mode][stem] = json.loads(path.read_text())
    return out


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def summary(results: dict[str, dict[str, dict]]) -> list[str]:
    head = "| case | labels | " + " | ".join(f"{m} mean Dice | {m} s" for m in MODES) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(MODES)]
    every: dict[str, list[float]] = {m: [] for m in MODES}
    large: dict[str, list[float]] = {m: [] for m in MODES}
    for stem, title in CASES.items():
        cells, count = [], 0
        for mode in MODES:
            doc = results[mode].get(stem)
            if doc is None:
                cells += ["-", "-"]
                continue
            labels = doc["labels"].values()
            count = max(count, len(doc["labels"]))
            every[mode] += [v["dice"] for v in labels]
            large[mode] += [v["dice"] for v in labels if v["voxels"] >= LARGE]
            cells += [f"{doc['mean_dice']:.3f}", f"{doc['seconds']:.0f}"]
        lines.append(f"| {title} | {count} | " + " | ".join(cells) + " |")
    total = max(len(v) for v in every.values())
    cells = " | ".join(f"**{_mean(every[m])}** | " for m in MODES)
    lines.append(f"| **all labels (mean over labels)** | {total} | {cells}|")
    lines.append("")
    lines.append(f"Labels of at least {LARGE} voxels (large organs and muscles): " + ", ".join(
        f"{m} {_mean(large[m])} ({len(large[m])} labels)" for m in MODES) + ".")
    return lines


def details(results: dict[str, dict[str, dict]], mode: str) -> list[str]:
    lines = [f"<details><summary>{mode} mode: every label</summary>", "",
             "| case | label | name | voxels | slices | Dice | seconds |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for stem, title in CASES.items():
        doc = results[mode].get(stem)
        if doc is None:
            continue
        for label, v in sorted(doc["labels"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {title} | {label} | {v.get('name') or ''} | {v['voxels']} | "
                         f"{v['slices']} | {v['dice']:.3f} | {v['seconds']:.1f} |")
        for item in doc.get("skipped", []):
            lines.append(f"| {title} | skipped | {item['label']} ({item['voxels']} voxels) "
                         "| | | | |")
    lines += ["", "</details>", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    results = load(args.folder)
    lines = summary(results) + [""]
    for mode in MODES:
        if results[mode]:
            lines += details(results, mode)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

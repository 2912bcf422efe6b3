"""A variant's rows against the product today ("before") and naive, per shape group.

"before" is the stored ``new`` with the regions-on-the-grid rows
(``results_variant_product_grid.json``) where they exist, as in the README's learned-stop
and tight-retry tables. Also CT5, MRI5 and the structures that move by more than 0.05.

Usage::

    python research/propagation_stop_rules/compare.py \\
        research/propagation_stop_rules/results_variant_retry2.json \\
        research/propagation_stop_rules/results_variant_retry2_b.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import variants  # noqa: E402
from table import GROUPS  # noqa: E402


def main(paths: list[str]) -> int:
    base = variants.baseline()
    before = {k: r["new"] for k, r in base.items() if "new" in r}
    grid = json.loads((HERE / "results_variant_product_grid.json").read_text())
    before.update({k: r["dice"] for k, r in grid.items()})
    new: dict[str, float] = {}
    for path in paths:
        new.update({k: r["dice"] for k, r in json.loads(Path(path).read_text()).items()})
    keys = [k for k in new if k in before and "naive" in base[k] and base[k]["slices"] >= 10]
    nv, b, n = (np.array([src[k] for k in keys]) for src in
                ({k: base[k]["naive"] for k in keys}, before, new))
    print("| group | n | naive | before | variant | variant - naive | before < naive - 0.05 | "
          "variant < naive - 0.05 |\n|---|---|---|---|---|---|---|---|")
    for group in (*GROUPS, "all"):
        sel = [i for i, k in enumerate(keys) if group in ("all", base[k]["group"])]
        if sel:
            print(f"| {group} | {len(sel)} | {nv[sel].mean():.3f} | {b[sel].mean():.3f} | "
                  f"{n[sel].mean():.3f} | {n[sel].mean() - nv[sel].mean():+.3f} | "
                  f"{int((b[sel] < nv[sel] - 0.05).sum())} | "
                  f"{int((n[sel] < nv[sel] - 0.05).sum())} |")
    for name, sel in (("CT5", variants.CT5), ("MRI5", variants.MRI5)):
        done = [k for k in sel if k in new]
        if done:
            print(f"{name} ({len(done)}): before {np.mean([before[k] for k in done]):.3f}, "
                  f"variant {np.mean([new[k] for k in done]):.3f}")
    moved = [k for k in keys if abs(new[k] - before[k]) > 0.05]
    print(f"{sum(new[k] > before[k] for k in moved)} up, "
          f"{sum(new[k] < before[k] for k in moved)} down by more than 0.05:")
    for k in sorted(moved, key=lambda k: new[k] - before[k]):
        print(f"  {k:24s} {base[k]['name'][:24]:24s} naive {base[k]['naive']:.3f} "
              f"before {before[k]:.3f} variant {new[k]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

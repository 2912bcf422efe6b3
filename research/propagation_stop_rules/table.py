"""The README table of the study: mean 3D Dice per shape group, old / new / naive."""

from __future__ import annotations

import numpy as np

GROUPS = ("compact", "tubular", "multi-part", "thin")


def merge(*results: dict) -> dict:
    """Rows of several result files (same keys) merged, later files adding methods."""
    out: dict = {}
    for result in results:
        for key, row in result.items():
            out.setdefault(key, {}).update(row)
    return out


def print_table(rows: dict, min_slices: int = 10) -> None:
    rows = {k: r for k, r in rows.items() if r["slices"] >= min_slices}
    done = [r for r in rows.values() if all(m in r for m in ("naive", "old", "new"))]
    print(f"{len(done)} of {len(rows)} structures have all three methods\n")
    print("| group | n | naive | old | new | new - naive | new < naive - 0.05 | "
          "old < naive - 0.05 |")
    print("|---|---|---|---|---|---|---|---|")
    for group in (*GROUPS, "all"):
        sel = [r for r in done if group in ("all", r["group"])]
        if not sel:
            continue
        naive, old, new = (np.array([r[m] for r in sel]) for m in ("naive", "old", "new"))
        print(f"| {group} | {len(sel)} | {naive.mean():.3f} | {old.mean():.3f} | "
              f"{new.mean():.3f} | {new.mean() - naive.mean():+.3f} | "
              f"{int((new < naive - 0.05).sum())} | {int((old < naive - 0.05).sum())} |")
    worst = sorted(done, key=lambda r: r["new"] - r["naive"])[:10]
    print("\nLargest losses of new against naive:\n")
    print("| structure | group | slices | naive | old | new | where new stopped |")
    print("|---|---|---|---|---|---|---|")
    for r in worst:
        stops = ", ".join(f"{i}: {why}" for i, why in r.get("new_stops", []))
        print(f"| {r['case']} {r['name']} | {r['group']} | {r['slices']} | {r['naive']:.3f} | "
              f"{r['old']:.3f} | {r['new']:.3f} | {stops or '-'} |")

"""``napari-medsam bench`` results as a text table and as a JSON file."""

from __future__ import annotations

import json
from pathlib import Path


def format_report(result: dict) -> str:
    lines = [f"model {result['model']} on {result['provider']} "
             f"({result['machine']['cores']} cores, {len(result['slices'])} real slices)",
             f"  encoder  median {result['encoder_ms']:8.1f} ms   "
             f"(with preprocessing {result['embed_with_preprocessing_ms']:.1f} ms)",
             f"  decoder  median {result['decoder_ms']:8.1f} ms"]
    if "torch_encoder_ms" in result:
        lines += [f"  PyTorch  encoder {result['torch_encoder_ms']:8.1f} ms   "
                  f"decoder {result['torch_decoder_ms']:.1f} ms",
                  f"  speed-up encoder x{result['encoder_speedup']:.2f}   "
                  f"decoder x{result['decoder_speedup']:.2f}"]
    rows = result.get("rows", [])
    if len(rows) > 1:
        lines.append(f"  {'engine':16s} {'encoder':>9s} {'x torch':>8s} {'decoder':>9s} "
                     f"{'x torch':>8s}  mask Dice vs {rows[0]['row']}")
        for row in rows:
            dice = f"min {row['mask_dice_min_bench_slices']:.4f} (bench slices)"
            if "agreement" in row:
                a = row["agreement"]
                dice += (f"; min {a['dice_min']:.4f}, {a['below_0_99']}/{a['prompts']} "
                         f"below 0.99, {a['emptied']} emptied ({a['prompts']} slices)")
            lines.append(f"  {row['row']:16s} {row['encoder_ms']:7.1f}ms "
                         f"{_ratio(row, 'encoder_speedup'):>8s} {row['decoder_ms']:7.1f}ms "
                         f"{_ratio(row, 'decoder_speedup'):>8s}  {dice}")
    for row in result.get("failed_rows", []):
        lines.append(f"  {row['row']:16s} FAILED: {row['error']}")
    return "\n".join(lines)


def _ratio(row: dict, key: str) -> str:
    return f"x{row[key]:.2f}" if key in row else "-"


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2))
